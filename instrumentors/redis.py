"""redis-py: one CLIENT span per command, one per pipeline; sync and redis.asyncio.

`db.query.text` is the command name followed by one `?` per argument
(`SET ? ?`): keys, values and credentials never leave the process. With
OTEL_TRACE_RUN_DB_SANITIZE=false arguments are shown, except those of
commands that carry credentials (AUTH, HELLO, MIGRATE). A pipeline's span is
named after its distinct commands (`SET INCR`) and carries the command count
in `db.operation.batch.size`. Cluster clients are not instrumented.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, trace
from opentelemetry.semconv.attributes.db_attributes import (
    DB_NAMESPACE,
    DB_OPERATION_BATCH_SIZE,
    DB_OPERATION_NAME,
    DB_QUERY_TEXT,
    DB_RESPONSE_STATUS_CODE,
    DB_SYSTEM_NAME,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.trace import SpanKind, Status, StatusCode
from trace_run.agent import config

from .base import TraceRunInstrumentor, is_instrumentation_enabled
from .dbapi import AttributeCache, error_type

SYSTEM = "redis"
_SECRET_COMMANDS = frozenset(("AUTH", "HELLO", "MIGRATE"))
_MAX_PIPELINE_NAMES = 5
_MAX_ARG_CHARS = 100


def _pool_attributes(pool: Any) -> dict:
    kw = getattr(pool, "connection_kwargs", None) or {}
    attrs = {DB_SYSTEM_NAME: SYSTEM, DB_NAMESPACE: str(kw.get("db", 0) or 0)}
    if kw.get("path"):
        attrs[SERVER_ADDRESS] = str(kw["path"])
    elif kw.get("host"):
        attrs[SERVER_ADDRESS] = str(kw["host"])
        try:
            attrs[SERVER_PORT] = int(kw.get("port") or 6379)
        except (TypeError, ValueError):
            pass
    return attrs


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
    def _active(self) -> bool:
        if not self.is_instrumented_by_opentelemetry or not is_instrumentation_enabled():
            return False
        parent = trace.get_current_span()
        return parent.is_recording() or not parent.get_span_context().is_valid

    def _base(self, client: Any) -> dict:
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return {DB_SYSTEM_NAME: SYSTEM}
        return dict(self._attrs.get(pool))

    def _start_command(self, client: Any, args: tuple):
        attrs = self._base(client)
        op = _name(args[0]) if args else ""
        if op:
            attrs[DB_OPERATION_NAME] = op
        attrs[DB_QUERY_TEXT] = command_text(args, config.get("OTEL_TRACE_RUN_DB_SANITIZE"))
        return self._open(op or SYSTEM, attrs)

    def _start_pipeline(self, pipe: Any):
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
        attrs = self._base(pipe)
        attrs[DB_OPERATION_NAME] = name
        if len(stack) > 1:  # the conventions count batches from two operations up
            attrs[DB_OPERATION_BATCH_SIZE] = len(stack)
        attrs[DB_QUERY_TEXT] = "\n".join(lines)
        return self._open(name, attrs)

    def _open(self, name: str, attrs: dict):
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
        return span, context.attach(trace.set_span_in_context(span))

    @staticmethod
    def _close(span, token, exc: BaseException | None) -> None:
        try:
            if isinstance(exc, Exception):
                span.set_attribute(ERROR_TYPE, error_type(exc))
                code = _response_code(exc)
                if code:
                    span.set_attribute(DB_RESPONSE_STATUS_CODE, code)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
        finally:
            context.detach(token)

    # -- wrappers ------------------------------------------------------------------------
    def _command(self, wrapped, instance, args, kwargs):
        if not self._active():
            return wrapped(*args, **kwargs)
        opened = None
        with self.guard:
            opened = self._start_command(instance, args)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            if opened is not None:
                with self.guard:
                    self._close(*opened, exc)
            raise
        if opened is not None:
            with self.guard:
                self._close(*opened, None)
        return result

    def _pipeline(self, wrapped, instance, args, kwargs):
        if not self._active() or not getattr(instance, "command_stack", None):
            return wrapped(*args, **kwargs)
        opened = None
        with self.guard:
            opened = self._start_pipeline(instance)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            if opened is not None:
                with self.guard:
                    self._close(*opened, exc)
            raise
        if opened is not None:
            with self.guard:
                self._close(*opened, None)
        return result

    async def _command_async(self, wrapped, instance, args, kwargs):
        if not self._active():
            return await wrapped(*args, **kwargs)
        opened = None
        with self.guard:
            opened = self._start_command(instance, args)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            if opened is not None:
                with self.guard:
                    self._close(*opened, exc)
            raise
        if opened is not None:
            with self.guard:
                self._close(*opened, None)
        return result

    async def _pipeline_async(self, wrapped, instance, args, kwargs):
        if not self._active() or not getattr(instance, "command_stack", None):
            return await wrapped(*args, **kwargs)
        opened = None
        with self.guard:
            opened = self._start_pipeline(instance)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            if opened is not None:
                with self.guard:
                    self._close(*opened, exc)
            raise
        if opened is not None:
            with self.guard:
                self._close(*opened, None)
        return result
