# trace-run's injection point. This folder holds this file only, so that
# nothing of trace-run can shadow a module of the program. It starts the agent
# (never raising), then runs the program's own sitecustomize, if any.
import os
import sys


def _trace_run_boot():
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
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
    """Run the next sitecustomize on sys.path, as `site` would have without us."""
    rest = [p for p in sys.path if os.path.realpath(p or os.curdir) not in seen]
    if not any(_trace_run_may_hold_sitecustomize(p) for p in rest):
        return  # the common case: skip importing importlib's helpers (~2 ms)
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = module_from_spec(spec)
    ours = sys.modules.get("sitecustomize")
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules["sitecustomize"] = ours
        raise


def _trace_run_may_hold_sitecustomize(folder):
    if not os.path.isdir(folder or os.curdir):
        return os.path.exists(folder)  # a zip file: let the import system look
    try:
        names = os.listdir(folder or os.curdir)
    except OSError:
        return False
    return any(n == "sitecustomize" or n.startswith("sitecustomize.") for n in names)


_trace_run_boot()
