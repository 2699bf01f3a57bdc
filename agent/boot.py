"""What runs at interpreter start (from sitecustomize): read the environment,
arm lazy hooks, return. Imports nothing heavy: the SDK, the exporters and the
instrumentors load only when the program imports a library we trace.
"""

import os
import sys

from trace_run.core import config, hooks

# Modules the OTLP exporters import: while one of them is executing its import (say `import requests`
# fired our urllib3 hook), building the exporter would meet it half-initialised, so the build waits.
EXPORTER_DEPS = ("requests", "urllib3", "http.client", "grpc", "google.protobuf")
_started = False
_active: dict = {}  # library name -> instrumentor instance, or the error text

# The registry's modules to hook, derived from it (`python -m trace_run.instrumentors.registry --write-hooks
# agent/boot.py`; tests/test_core_units.py checks it is): the start imports neither the registry nor the
# instrumentors package (~0.4 ms of every process start); the registry loads with the first traced library.
# hooks:start
HOOKS = (  # (module, library, method): importing module activates the library's instrumentor, then calls method
    ("flask", "flask", ""),
    ("starlette.applications", "starlette", ""),
    ("fastapi.applications", "starlette", "patch_fastapi"),
    ("django", "django", ""),
    ("django.core.handlers.base", "django", "patch_base"),
    ("django.core.handlers.wsgi", "django", "patch_wsgi"),
    ("django.core.handlers.asgi", "django", "patch_asgi"),
    ("django.core.management.base", "django", "patch_management"),
    ("requests", "requests", ""),
    ("urllib3", "urllib3", ""),
    ("http.client", "urllib", ""),
    ("httpx", "httpx", ""),
    ("psycopg", "psycopg", ""),
    ("psycopg_pool", "psycopg", "patch_pool"),
    ("psycopg2", "psycopg2", ""),
    ("asyncpg", "asyncpg", ""),
    ("sqlite3", "sqlite3", ""),
    ("redis", "redis", ""),
    ("pika", "pika", ""),
    ("celery", "celery", ""),
    ("celery.worker.worker", "celery", "patch_worker"),
    ("celery.backends.base", "celery", "patch_backend"),
    ("opentelemetry.trace", "threading", ""),
)
ALIASES = {  # library -> its other names (OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)
    "urllib": ("http.client", "http_client"),
    "psycopg2": ("psycopg2-binary",),
    "threading": ("concurrent.futures",),
}
# hooks:end


def start(inject_dir: str = "") -> None:
    """Start the agent once per process; never raises."""
    global _started
    if _started:
        return
    _started = True
    try:
        _start(inject_dir)
    except Exception as exc:
        _log().error("agent not started (%s: %s); the program runs untraced" % (type(exc).__name__, exc))


def _start(inject_dir: str) -> None:
    level = config.get("OTEL_LOG_LEVEL")
    if level != "info" or "trace_run.core.log" in sys.modules:  # log's threshold starts at info's
        _log().set_level(level)
    if inject_dir and not config.get("OTEL_TRACE_RUN_INHERIT"):
        _drop_from_pythonpath(inject_dir)
    if config.get("OTEL_SDK_DISABLED"):
        return
    # Bad values the registry can tell on its own are reported now (string work, no imports);
    # plugin names (sampler, exporter, propagator) wait for the SDK's set-up.
    config.validate_all()
    disabled = {n.lower() for n in config.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")}
    everything_off = "*" in disabled
    armed = []  # (module, callback), armed together: one lock and one finder check for all
    for module, name, method in () if everything_off else HOOKS:
        if disabled and (name in disabled or not disabled.isdisjoint(ALIASES.get(name, ()))):
            continue
        armed.append((module, _extra(name, method) if method else _activator(name)))
    hooks.track(EXPORTER_DEPS)
    # A program that uses the API by hand gets a working SDK behind it.
    armed.append(("opentelemetry.trace", _sdk_on_import))
    if config.get("OTEL_PYTHON_LOG_CORRELATION") and not ("logging" in disabled or everything_off):
        armed.append(("logging", _log_correlation))
    armed.append(("gunicorn.arbiter", _warm_in_gunicorn_master))
    # Children forked by multiprocessing exit through os._exit: flush them first.
    armed.append(("multiprocessing.util", _mp_flush_on_exit))
    hooks.when_imported_each(armed)
    if config.get("OTEL_TRACE_RUN_THIRD_PARTY") and not everything_off:
        from . import thirdparty_cache

        if thirdparty_cache.load():  # none installed (the usual case): thirdparty is not imported
            from . import thirdparty

            thirdparty.arm(disabled)
    if config.get("OTEL_TRACE_RUN_INFO"):
        from . import info

        info.print_info(sys.stderr, active())


def _log():
    """trace_run.core.log, imported once there is something to say (one module less at every start)."""
    from trace_run.core import log

    return log


def _drop_from_pythonpath(inject_dir: str) -> None:
    parts = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    real = os.path.realpath(inject_dir) if [p for p in parts if p and p != inject_dir] else inject_dir
    # realpath (an lstat per path component) only for the parts the launcher did not write as it is
    kept = [p for p in parts if p and p != inject_dir and os.path.realpath(p) != real]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)


def _entry(name: str):
    """The registry's entry for a library (the registry is imported once a traced library is)."""
    from trace_run.instrumentors import registry

    return registry.BUILTIN[name]


def _activator(name: str):
    def activate(_module) -> None:
        activate_entry(_entry(name))

    return activate


def _extra(name: str, method: str):
    def apply(module) -> None:
        activate_entry(_entry(name))
        instrumentor = _active.get(name)
        if instrumentor is not None and not isinstance(instrumentor, str):
            instrumentor.patch_submodule(method, module)

    return apply


def _runtime():
    """agent.runtime, imported with the hooks held: it imports opentelemetry.context, which imports
    logging, and the log-correlation hook must not run on the half-imported context module."""
    with hooks.held():
        from . import runtime
    return runtime


def activate_entry(entry) -> None:
    """Load and apply one built-in instrumentor; a failure leaves that library untraced."""
    if entry.name in _active:
        return
    _active[entry.name] = None
    try:
        runtime = _runtime()
        runtime.ensure_sdk()
        runtime.install_textmap()
        from trace_run.instrumentors import registry

        cls = registry.load(entry)
        instrumentor = cls()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.applied_by_agent = True  # before: its submodule hooks are armed here, at start
            instrumentor.instrument(skip_dep_check=True)
        _active[entry.name] = instrumentor
    except Exception as exc:
        _active[entry.name] = "%s: %s" % (type(exc).__name__, exc)
        _log().warning("%s instrumentation not applied (%s: %s); %s runs untraced"
                    % (entry.name, type(exc).__name__, exc, entry.name))
        from trace_run.core import guard

        if guard.RAISE:
            raise


def _sdk_on_import(_module) -> None:
    try:
        _runtime().ensure_sdk()
    except Exception as exc:
        _log().error("tracing SDK not set up (%s: %s); the program runs untraced" % (type(exc).__name__, exc))


def _warm_in_gunicorn_master(arbiter_module) -> None:
    """gunicorn's master forks every worker, and (without --preload) imports nothing traced itself: the
    SDK and the exporter's modules are set up in it once it has started (its worker class loaded, its
    daemon fork done) and before it forks a worker, as --preload would, so the workers share those pages
    (grpcio's: ~13 MiB less RSS per worker after start, ~3 MiB under sustained load) and none imports
    them on its first request. Not in an at-fork hook: a module imported there that registers at-fork
    handlers of its own (concurrent.futures) releases in the parent a lock it never took. Not where
    gevent or eventlet is loaded: their workers must be the first to import what uses ssl."""
    arbiter = getattr(arbiter_module, "Arbiter", None)
    start = getattr(arbiter, "start", None)
    if start is None or getattr(start, "_trace_run_original", None) is not None:
        return

    def start_then_prepare_workers(self, *args, **kwargs):
        result = start(self, *args, **kwargs)
        _prepare_for_workers()
        return result

    import functools

    start_then_prepare_workers._trace_run_original = start
    arbiter.start = functools.wraps(start)(start_then_prepare_workers)


def _prepare_for_workers() -> None:
    from . import green

    if green.loaded() or hooks.busy():
        return
    try:
        runtime = _runtime()
        runtime.ensure_sdk()
        runtime.prepare_exporters_for_fork()
    except Exception as exc:
        _log().debug("exporter not prepared in gunicorn's master (%s: %s); each worker builds its own"
                  % (type(exc).__name__, exc))


def _log_correlation(logging_module) -> None:
    try:
        from . import logcorr

        logcorr.install(logging_module)
    except Exception as exc:
        _log().warning("log correlation not enabled (%s: %s)" % (type(exc).__name__, exc))


def _mp_child_flush(_obj) -> None:
    from . import runtime

    if runtime.provider_ready():
        import multiprocessing.util as util

        util.Finalize(None, runtime.flush_at_exit, exitpriority=-100)


def _mp_flush_on_exit(util) -> None:
    # The registry holds its objects weakly: a module-level function stays alive.
    util.register_after_fork(_mp_child_flush, _mp_child_flush)


def active() -> dict:
    return dict(_active)

