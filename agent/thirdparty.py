"""Third-party instrumentors (entry point group `opentelemetry_instrumentor`).

Applied lazily, keyed on the library they instrument, and only for libraries
we do not cover. The list of installed ones comes from thirdparty_cache: where
it is empty, the agent's start does not import this module.

An instrumentor whose declared `instruments` range leaves out the installed
library is not applied, with one trace-run line saying so; what upstream
instrumentors log (through `logging`, under `opentelemetry.instrumentation`)
becomes trace-run's own lines too, each message once, instead of reaching
stderr bare through Python's last-resort handler.
"""

from trace_run.core import config, hooks
from trace_run.instrumentors import registry

from . import thirdparty_cache

# Entry point names whose import name differs (None: nothing to hook on).
_MODULE_FOR = {
    "aiohttp-client": "aiohttp", "aiohttp-server": "aiohttp", "aiohttp_client": "aiohttp",
    "aiohttp_server": "aiohttp", "grpc_client": "grpc", "grpc_server": "grpc",
    "grpc_aio_client": "grpc", "grpc_aio_server": "grpc", "mysql": "mysql.connector",
    "mysqlclient": "MySQLdb", "pymysql": "pymysql", "kafka": "kafka", "boto3sqs": "boto3",
    "tortoiseorm": "tortoise", "system_metrics": None, "asgi": None, "aws-lambda": None,
    "aws_lambda": None, "openai-v2": "openai", "confluent_kafka": "confluent_kafka",
}

found: list = []  # (name, module, value, distribution, status)


def _log():
    """trace_run.core.log, imported once there is something to say (not at start)."""
    from trace_run.core import log

    return log


def module_for(ep_name: str):
    if ep_name in _MODULE_FOR:
        return _MODULE_FOR[ep_name]
    name = ep_name
    for suffix in ("-client", "-server", "_client", "_server"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def classify(disabled: set) -> list:
    """(name, module, value, distribution, status) for each installed instrumentor."""
    rows = []
    for name, value, dist in thirdparty_cache.load():
        module = module_for(name)
        if name in registry.SELF_TRACED:
            e = registry.SELF_TRACED[name]
            status = "skipped: %s traces itself from %s (before: trace-run's %s spans)" % (name, e.since, e.via)
        elif name in registry.COVERED_NAMES or (module and registry.lookup(module)) or name == "logging":
            status = "skipped: trace-run covers it"
        elif name in disabled:
            status = "disabled"
        elif module is None:
            status = "skipped: no library to hook"
        else:
            status = "armed (on import of %s)" % module
        rows.append((name, module, value, dist, status))
    return rows


def arm(disabled: set) -> None:
    rows = classify(disabled)
    found[:] = rows
    hooks.when_imported_each([(module, _applier(name, value)) for name, module, value, _dist, status in rows
                              if status.startswith("armed")])


_failed: set = set()  # instrumentors whose instrument() failed in this process: never tried again


def _applier(name: str, value: str):
    def apply(_module) -> None:
        if name in _failed:
            return
        instrumentor = entered = None
        try:
            import importlib

            from . import runtime

            runtime.ensure_sdk()
            forward_upstream_messages()
            mod_name, _, attr = value.partition(":")
            obj = importlib.import_module(mod_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            instrumentor = obj()
            if instrumentor.is_instrumented_by_opentelemetry:
                return
            conflict = _conflict(instrumentor)
            if conflict:
                _log().warning("third-party instrumentor %s not applied: %s" % (name, conflict))
                return
            entered = instrumentor
            instrumentor.instrument()
        except (Exception, SystemExit) as exc:  # an instrumentor calling sys.exit() does not end the program
            _failed.add(name)
            _log().warning("third-party instrumentor %s not applied (%s: %s)%s"
                        % (name, type(exc).__name__, exc, _left_off(entered)))

    return apply


def _left_off(instrumentor) -> str:
    """Undo what a failed instrument() did before it raised (its own _uninstrument, guarded); what to add
    to the message when that failed too."""
    if instrumentor is None or not hasattr(instrumentor, "_uninstrument"):
        return ""
    try:
        instrumentor._uninstrument()
    except (Exception, SystemExit) as exc:
        return "; undoing it failed too (%s: %s), what it patched may stay" % (type(exc).__name__, exc)
    return ""


def _conflict(instrumentor) -> str:
    """Why the installed library is not one the instrumentor declares ("" when it is)."""
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
    if conflict is None:
        return ""
    if getattr(conflict, "required", None) and getattr(conflict, "found", None):
        return "it instruments %s, and %s is installed (no upstream instrumentor supports that version)" % (
            conflict.required, conflict.found)
    return str(conflict)


_forwarded: set = set()
UPSTREAM_LOGGER = "opentelemetry.instrumentation"


def forward_upstream_messages() -> None:
    """Route the `opentelemetry.instrumentation` loggers into trace-run's messages (once per process)."""
    import logging

    upstream = logging.getLogger(UPSTREAM_LOGGER)
    if any(getattr(h, "trace_run_forward", False) for h in upstream.handlers):
        return

    class Forward(logging.Handler):
        trace_run_forward = True

        def emit(self, record) -> None:
            try:
                _forward_record(record)
            except Exception:  # never into the program
                pass

    upstream.addHandler(Forward())
    upstream.propagate = False
    if config.get("OTEL_LOG_LEVEL") == "debug":
        upstream.setLevel(logging.DEBUG)


def _forward_record(record) -> None:
    key = (record.name, str(record.msg))
    if key in _forwarded:  # once per message template: a per-request warning is said once
        return
    _forwarded.add(key)
    try:
        text = "%s: %s" % (record.name, record.getMessage())
    except Exception:
        text = "%s: %s" % (record.name, record.msg)
    if record.levelno >= 40:
        _log().error(text)
    elif record.levelno >= 30:
        _log().warning(text)
    else:
        _log().debug(text)
