# trace-run's injection point. This folder holds this file only, so that
# nothing of trace-run can shadow a module of the program. It starts the agent
# (never raising), then runs the program's own sitecustomize, if any.
import os
import sys


def _trace_run_boot():
    # The injection folders whose sitecustomize ran, as sys.path names them (realpath, an lstat per path
    # component, only where another name may be the same folder: see _trace_run_chain).
    here = os.path.dirname(os.path.abspath(__file__))
    seen = sys.__dict__.setdefault("_trace_run_dirs", [])
    first = not seen
    seen.append(here)
    if first:
        _trace_run_start(here)
    _trace_run_chain(seen)


def _trace_run_start(here):
    # Set by the launcher for the command it runs. A descendant (say another interpreter the
    # program starts, with no trace-run in it) is not what the user asked to trace: it is quiet.
    launched = os.environ.pop("OTEL_TRACE_RUN_LAUNCHED", None) is not None
    try:
        from trace_run.agent import boot
    except Exception as exc:  # e.g. trace-run not installed in this interpreter
        if not launched and os.environ.get("OTEL_LOG_LEVEL", "").strip().lower() != "debug":
            return
        try:
            sys.stderr.write(
                "trace-run: agent not started (cannot import trace_run in %s: %s); "
                "the program runs untraced\n" % (sys.executable, exc)
            )
        except Exception:
            pass
    else:
        boot.start(here)


def _trace_run_chain(seen):
    """Run the next sitecustomize on sys.path, as `site` would have without us.

    Asked of each folder's path entry finder, which the import system has mostly made and filled
    already (a folder's names are listed once per process and shared with every import): no folder
    listed again, no realpath but for a folder that has a sitecustomize, no importlib helpers
    imported (~2 ms) unless there is one to run."""
    real = None
    for entry in sys.path:
        finder = _trace_run_finder(entry)
        if finder is None:
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:  # a legacy finder (Python 3.9's zipimporter): the import system's own search
            return _trace_run_chain_by_pathfinder(seen)
        spec = find_spec("sitecustomize")
        if spec is None or spec.loader is None:  # none, or a namespace portion (which runs nothing)
            continue
        if spec.origin == __file__:
            continue  # this very file, found as site found it
        if real is None:
            real = {os.path.realpath(d) for d in seen}
        if os.path.realpath(entry or os.curdir) in real:
            continue  # an injection folder (ours, or another trace-run's), by any name
        return _trace_run_exec(spec)


def _trace_run_finder(entry):
    """sys.path_importer_cache's finder for a sys.path entry, made by sys.path_hooks as PathFinder makes it."""
    if entry == "":
        try:
            entry = os.getcwd()
        except OSError:
            return None
    try:
        return sys.path_importer_cache[entry]
    except KeyError:
        pass
    finder = None
    for hook in sys.path_hooks:
        try:
            finder = hook(entry)
            break
        except ImportError:
            continue
    sys.path_importer_cache[entry] = finder
    return finder


def _trace_run_chain_by_pathfinder(seen):
    from importlib.machinery import PathFinder

    real = {os.path.realpath(d) for d in seen}
    rest = [p for p in sys.path if os.path.realpath(p or os.curdir) not in real]
    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        _trace_run_exec(spec)


def _trace_run_exec(spec):
    ours = sys.modules.get("sitecustomize")
    if not hasattr(spec.loader, "exec_module"):  # Python 3.9's zipimporter: the legacy protocol
        del sys.modules["sitecustomize"]  # or load_module would run it in this module's namespace
        try:
            spec.loader.load_module("sitecustomize")
        except BaseException:
            sys.modules["sitecustomize"] = ours
            raise
        return
    from importlib.util import module_from_spec

    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules["sitecustomize"] = ours
        raise


_trace_run_boot()
