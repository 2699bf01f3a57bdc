"""redis-py: one CLIENT span per command, one per pipeline; sync and redis.asyncio.

`db.query.text` is the command name followed by one `?` per argument
(`SET ? ?`): keys, values and credentials never leave the process. With
OTEL_TRACE_RUN_DB_SANITIZE=false arguments are shown, except those of
commands that carry credentials (AUTH, HELLO, MIGRATE). A pipeline's span is
named after its distinct commands (`SET INCR`) and carries the command count
in `db.operation.batch.size`. Cluster clients are not instrumented.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from opentelemetry import context, trace
from opentelemetry.semconv.attributes.db_attributes import (
    DB_OPERATION_BATCH_SIZE,
    DB_OPERATION_NAME,
    DB_QUERY_TEXT,
    DB_SYSTEM_NAME,
)
from opentelemetry.trace import SpanKind
from trace_run.agent import config

from .base import TraceRunInstrumentor, call_in_span, call_in_span_async
from .dbapi import AttributeCache, client_active, connection_attributes, end_with_error

SYSTEM = "redis"
_SECRET_COMMANDS = frozenset(("AUTH", "HELLO", "MIGRATE"))
_MAX_PIPELINE_NAMES = 5
_MAX_ARG_CHARS = 100


def _pool_attributes(pool: Any) -> dict:
    kw = getattr(pool, "connection_kwargs", None) or {}
    db = kw.get("db", 0) or 0
    if kw.get("path"):  # a unix socket: no port
        return connection_attributes(SYSTEM, db, kw["path"])
    return connection_attributes(SYSTEM, db, kw.get("host") or None, kw.get("port") or 6379)


def _name(arg: Any) -> str:
    if isinstance(arg, (bytes, bytearray)):
        arg = bytes(arg).decode("utf-8", "replace")
    return str(arg).upper()


def _show(arg: Any) -> str:
    if isinstance(arg, (bytes, bytearray)):
        arg = bytes(arg).decode("utf-8", "replace")
    text = str(arg)
    return text if len(text) <= _MAX_ARG_CHARS else text[:_MAX_ARG_CHARS] + "..."


def command_text(args: tuple, sanitize: bool = True) -> str:
    """`SET ? ?`: the command name and a `?` per argument (arguments shown only if asked)."""
    if not args:
        return ""
    op = _name(args[0])
    if sanitize or op.split(" ", 1)[0] in _SECRET_COMMANDS:
        return op + " ?" * (len(args) - 1)
    return " ".join([op] + [_show(a) for a in args[1:]])


def _response_code(exc: BaseException) -> str | None:
    """The error prefix Redis sends (`WRONGTYPE`, `ERR`, `NOSCRIPT`): a code, never data."""
    if not exc.args or not isinstance(exc.args[0], str):
        return None
    first = exc.args[0].split(" ", 1)[0]
    if first and first.isupper() and first.isalpha() and len(first) <= 20:
        return first
    return None


# `fail` for call_in_span: error.type, the Redis error prefix as db.response.status_code, ERROR status.
_end_with_error = partial(end_with_error, code_of=_response_code)


class RedisInstrumentor(TraceRunInstrumentor):
    library = "redis"

    def _patch(self, **kwargs: Any) -> None:
        import redis.client

        self._attrs = AttributeCache(_pool_attributes)
        self.wrap(redis.client.Redis, "execute_command", self._command)
        self.wrap(redis.client.Pipeline, "immediate_execute_command", self._command)
        self.wrap(redis.client.Pipeline, "execute", self._pipeline)
        try:
            import redis.asyncio.client as aio
        except ImportError:  # pragma: no cover - redis without asyncio support
            return
        self.wrap(aio.Redis, "execute_command", self._command_async)
        self.wrap(aio.Pipeline, "immediate_execute_command", self._command_async)
        self.wrap(aio.Pipeline, "execute", self._pipeline_async)

    # -- span plumbing --------------------------------------------------------------
    _active = client_active  # the rule every DB client shares (a method: called with this instrumentor)

    def _base(self, client: Any) -> dict:
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return {DB_SYSTEM_NAME: SYSTEM}
        return dict(self._attrs.get(pool))

    def _start_command(self, client: Any, args: tuple) -> tuple:
        """(span, context token) for one command; (None, None) if that failed."""
        with self.guard:
            attrs = self._base(client)
            op = _name(args[0]) if args else ""
            if op:
                attrs[DB_OPERATION_NAME] = op
            attrs[DB_QUERY_TEXT] = command_text(args, config.get("OTEL_TRACE_RUN_DB_SANITIZE"))
            return self._open(op or SYSTEM, attrs)
        return None, None

    def _start_pipeline(self, pipe: Any) -> tuple:
        """(span, context token) for a pipeline's execute; (None, None) if that failed."""
        with self.guard:
            return self._open(*_pipeline_name_and_attributes(pipe, self._base(pipe)))
        return None, None

    def _open(self, name: str, attrs: dict) -> tuple:
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
        return span, context.attach(trace.set_span_in_context(span))

    # -- wrappers ------------------------------------------------------------------------
    def _command(self, wrapped, instance, args, kwargs):
        if not self._active():
            return wrapped(*args, **kwargs)
        span, token = self._start_command(instance, args)
        return call_in_span(self.guard, span, token, wrapped, args, kwargs, _end_with_error)

    def _pipeline(self, wrapped, instance, args, kwargs):
        if not self._active() or not getattr(instance, "command_stack", None):
            return wrapped(*args, **kwargs)
        span, token = self._start_pipeline(instance)
        return call_in_span(self.guard, span, token, wrapped, args, kwargs, _end_with_error)

    async def _command_async(self, wrapped, instance, args, kwargs):
        if not self._active():
            return await wrapped(*args, **kwargs)
        span, token = self._start_command(instance, args)
        return await call_in_span_async(self.guard, span, token, wrapped, args, kwargs, _end_with_error)

    async def _pipeline_async(self, wrapped, instance, args, kwargs):
        if not self._active() or not getattr(instance, "command_stack", None):
            return await wrapped(*args, **kwargs)
        span, token = self._start_pipeline(instance)
        return await call_in_span_async(self.guard, span, token, wrapped, args, kwargs, _end_with_error)


def _pipeline_name_and_attributes(pipe: Any, attrs: dict) -> tuple:
    """(span name, `attrs` completed) for a pipeline: its distinct commands, their count and text."""
    stack = getattr(pipe, "command_stack", None) or ()
    sanitize = config.get("OTEL_TRACE_RUN_DB_SANITIZE")
    names: list = []
    lines = []
    for entry in stack:
        args = entry[0] if isinstance(entry, tuple) else getattr(entry, "args", ())
        if not args:
            continue
        op = _name(args[0])
        if op not in names:
            names.append(op)
        lines.append(command_text(args, sanitize))
    if len(names) > _MAX_PIPELINE_NAMES:
        names = names[:_MAX_PIPELINE_NAMES] + ["..."]
    name = " ".join(names) or "PIPELINE"
    if getattr(pipe, "transaction", False) or getattr(pipe, "explicit_transaction", False):
        lines = ["MULTI"] + lines + ["EXEC"]
    attrs[DB_OPERATION_NAME] = name
    if len(stack) > 1:  # the conventions count batches from two operations up
        attrs[DB_OPERATION_BATCH_SIZE] = len(stack)
    attrs[DB_QUERY_TEXT] = "\n".join(lines)
    return name, attrs
