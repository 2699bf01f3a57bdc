"""OTEL_PYTHON_LOG_CORRELATION: every `logging` record carries otelTraceID,
otelSpanID, otelServiceName and otelTraceSampled, and the root handler's
format shows them.

Choice: like upstream, the root logger gets a handler with
OTEL_PYTHON_LOG_FORMAT when logging is imported; if the program later calls
`logging.basicConfig()` itself, its call replaces ours (its level, stream and
handlers win) and our format is used unless it passes its own.
"""

from __future__ import annotations

from trace_run.core import config

_installed = False


def install(logging) -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from opentelemetry import trace

    from .sdk import service_name

    service = service_name()
    old_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = old_factory(*args, **kwargs)
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.otelTraceID = "%032x" % ctx.trace_id
            record.otelSpanID = "%016x" % ctx.span_id
            record.otelTraceSampled = ctx.trace_flags.sampled
        else:
            record.otelTraceID = "0"
            record.otelSpanID = "0"
            record.otelTraceSampled = False
        record.otelServiceName = service
        return record

    logging.setLogRecordFactory(factory)
    fmt = config.get("OTEL_PYTHON_LOG_FORMAT")
    level = getattr(logging, config.get("OTEL_PYTHON_LOG_LEVEL").upper(), logging.INFO)
    root = logging.getLogger()
    ours = []
    if not root.handlers:
        logging.basicConfig(format=fmt, level=level)
        ours = list(root.handlers)
    original = logging.basicConfig

    def basicConfig(**kwargs):
        if ours and root.handlers == ours and "force" not in kwargs:
            kwargs["force"] = True  # the program's own configuration replaces ours
        if "format" not in kwargs and "handlers" not in kwargs:
            kwargs["format"] = fmt
        return original(**kwargs)

    basicConfig.__wrapped__ = original
    logging.basicConfig = basicConfig
