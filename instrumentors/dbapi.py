"""The one DB-API tracing core every SQL driver module uses.

A driver module patches its cursor methods and hands each call to
`SqlTracer.run` (or `run_async`, or `copy_context`) together with the
connection's fixed attributes (`connection_attributes`). The core makes the
CLIENT span: name `{operation} {collection}`, sanitized `db.query.text`,
SQLSTATE and `error.type` on failure, and optionally a sqlcommenter comment
carrying `traceparent`. Query parameters are never read. The wrapped call runs
outside the guard, so the driver's own exceptions reach the program unchanged.
Redis, not SQL, shares the rules for when to trace (`client_active`), how a
failure looks (`record_error`) and the connection attributes.
"""

from __future__ import annotations

import importlib
import weakref
from types import MethodType
from typing import Any, Callable

from opentelemetry import context, trace
from opentelemetry.semconv.attributes.db_attributes import (
    DB_COLLECTION_NAME,
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

from .base import call_in_span, call_in_span_async, is_instrumentation_enabled
from .sql_sanitize import analyze, span_name

__all__ = [
    "SqlTracer", "connection_attributes", "error_type", "AttributeCache", "client_active", "record_error",
    "end_with_error", "composed_query_text", "composable_commenter", "look_like",
]

_QUERY_KWARGS = ("query", "sql", "statement", "operation", "sql_script")
_CLIENT = SpanKind.CLIENT


def connection_attributes(system: str, namespace: Any = None, host: Any = None, port: Any = None) -> dict:
    """The attributes every span of one connection shares (built once per connection).

    A host that is a unix socket directory or path (`/...`) has no port.
    """
    attrs = {DB_SYSTEM_NAME: system}
    if namespace not in (None, ""):
        attrs[DB_NAMESPACE] = str(namespace)
    if host not in (None, ""):
        host = str(host)
        attrs[SERVER_ADDRESS] = host
        if port not in (None, "") and not host.startswith("/"):
            try:
                attrs[SERVER_PORT] = int(port)
            except (TypeError, ValueError):
                pass
    return attrs


class AttributeCache:
    """connection -> its attributes, without keeping connections alive."""

    def __init__(self, build: Callable[[Any], dict]):
        self._build = build
        self._by_conn: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, conn: Any) -> dict:
        try:
            return self._by_conn[conn]
        except (KeyError, TypeError):
            pass
        attrs = self._build(conn)
        try:
            self._by_conn[conn] = attrs
        except TypeError:  # not weak-referenceable: rebuild each time
            pass
        return attrs


def error_type(exc: BaseException) -> str:
    """Fully qualified class name, as `error.type` wants it."""
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__", None):
        return cls.__qualname__
    return module + "." + cls.__qualname__


def _status_code(exc: BaseException) -> str | None:
    """SQLSTATE (psycopg, psycopg2) or SQLite's extended result code."""
    for attr in ("sqlstate", "pgcode", "sqlite_errorcode"):
        code = getattr(exc, attr, None)
        if code not in (None, ""):
            return str(code)
    return None


def client_active(instrumentor: Any) -> bool:
    """Is there a client span to make for a call made now? (Not when suppressed or under a non-recording parent.)"""
    if not instrumentor.is_instrumented_by_opentelemetry or not is_instrumentation_enabled():
        return False
    parent = trace.get_current_span()
    return parent.is_recording() or not parent.get_span_context().is_valid


def record_error(span: Any, exc: BaseException, code_of: Callable[[BaseException], Any] = _status_code) -> None:
    """`error.type`, `db.response.status_code` (code_of(exc)) and ERROR status, for an Exception."""
    if not isinstance(exc, Exception):
        return
    span.set_attribute(ERROR_TYPE, error_type(exc))
    code = code_of(exc)
    if code:
        span.set_attribute(DB_RESPONSE_STATUS_CODE, code)
    # The message is left out on purpose: PostgreSQL puts row values in it.
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def end_with_error(span: Any, exc: BaseException, code_of: Callable[[BaseException], Any] = _status_code) -> None:
    """`fail` for base.call_in_span: record_error, then end the span."""
    try:
        record_error(span, exc, code_of)
    finally:
        span.end()


# -- psycopg and psycopg2 share these (their `sql` modules have the same API) ---------------


def composed_query_text(query: Any, cursor: Any) -> Any:
    """`query_text` for SqlTracer: a `sql.Composed` renders itself against the cursor."""
    as_string = getattr(query, "as_string", None)
    if as_string is not None:
        return as_string(cursor)
    return query


def composable_commenter(sql_module: str) -> Callable[[Any, str], Any]:
    """`add_comment` for SqlTracer: appends to a `sql.Composable` of `sql_module` (imported when first needed)."""

    def add_comment(query: Any, comment: str) -> Any:
        sql = importlib.import_module(sql_module)
        if isinstance(query, sql.Composable):
            return query + sql.SQL(" " + comment)
        return None

    return add_comment


def look_like(cls: type, base: type) -> None:
    """Traced subclasses keep the name and module of the class they extend (reprs, logs)."""
    cls.__name__ = base.__name__
    cls.__qualname__ = base.__qualname__
    cls.__module__ = base.__module__


def _find_query(args: tuple, kwargs: dict) -> tuple:
    """(query, where): where is an int index into args or a kwargs key."""
    if args:
        return args[0], 0
    for key in _QUERY_KWARGS:
        if key in kwargs:
            return kwargs[key], key
    return None, None


def _with_comment(query: Any, comment: str) -> Any:
    """The statement with the sqlcommenter comment before any trailing `;`."""
    if isinstance(query, str):
        body = query.rstrip()
        if body.endswith(";"):
            return body[:-1] + " " + comment + ";"
        return body + " " + comment
    if isinstance(query, bytes):
        body = query.rstrip()
        tail = comment.encode("ascii")
        if body.endswith(b";"):
            return body[:-1] + b" " + tail + b";"
        return body + b" " + tail
    return None


class SqlTracer:
    """Spans for one driver's statements.

    `query_text(query, cursor)` turns driver-specific query objects (e.g.
    psycopg `sql.Composed`) into text; `add_comment(query, comment)` does the
    same for sqlcommenter. Both are optional.
    """

    def __init__(self, instrumentor: Any, system: str, query_text: Callable | None = None,
                 add_comment: Callable | None = None):
        self.instrumentor = instrumentor
        self.system = system
        self.guard = instrumentor.guard
        # Is there tracing work to do for a call made now? (client_active, bound: no extra call layer)
        self.active: Callable[[], bool] = MethodType(client_active, instrumentor)
        self._query_text = query_text
        self._add_comment = add_comment

    # -- helpers -------------------------------------------------------------------
    def _start(self, attrs: dict, cursor: Any, args: tuple, kwargs: dict, batch: Any, statement: Any = None,
               commenter: bool = True):
        if statement is not None:  # the call has no SQL argument (e.g. psycopg2 copy_from)
            query, where, text = statement, None, statement
        else:
            query, where = _find_query(args, kwargs)
            text = query
        if self._query_text is not None and not isinstance(query, (str, bytes)):
            text = self._query_text(query, cursor)
        analysis = analyze(text, config.get("OTEL_TRACE_RUN_DB_SANITIZE"))
        attributes = dict(attrs)
        attributes[DB_QUERY_TEXT] = analysis.text
        if analysis.operation:
            attributes[DB_OPERATION_NAME] = analysis.operation
        if analysis.collection:
            attributes[DB_COLLECTION_NAME] = analysis.collection
        if batch is not None:
            try:
                size = len(batch)
            except TypeError:
                size = 0
            if size > 1:
                attributes[DB_OPERATION_BATCH_SIZE] = size
        span = self.instrumentor.tracer.start_span(
            span_name(analysis, self.system), kind=_CLIENT, attributes=attributes
        )
        token = context.attach(trace.set_span_in_context(span))
        if commenter and where is not None and config.get("OTEL_TRACE_RUN_SQLCOMMENTER"):
            args, kwargs = self._comment(span, query, where, args, kwargs)
        return span, token, args, kwargs

    def _comment(self, span, query, where, args: tuple, kwargs: dict):
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return args, kwargs
        # Level 1 traceparent, like our propagator: only the `sampled` flag is sent.
        comment = "/*traceparent='00-%032x-%016x-%02x'*/" % (ctx.trace_id, ctx.span_id, ctx.trace_flags & 0x01)
        new = _with_comment(query, comment)
        if new is None and self._add_comment is not None:
            new = self._add_comment(query, comment)
        if new is None:
            return args, kwargs
        if where == 0:
            return (new,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs[where] = new
        return args, kwargs

    @staticmethod
    def _finish(span, token) -> None:
        try:
            span.end()
        finally:
            context.detach(token)

    # -- entry points ----------------------------------------------------------------
    def run(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict, batch: Any = None,
            statement: Any = None):
        """Call wrapped(*args, **kwargs) inside a CLIENT span (`statement`: SQL when not in args)."""
        if not self.active():
            return wrapped(*args, **kwargs)
        span = token = None
        with self.guard:
            span, token, args, kwargs = self._start(attrs, cursor, args, kwargs, batch, statement)
        return call_in_span(self.guard, span, token, wrapped, args, kwargs, end_with_error)

    async def run_async(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict,
                        batch: Any = None):
        """The same for coroutine methods."""
        if not self.active():
            return await wrapped(*args, **kwargs)
        span = token = None
        with self.guard:
            span, token, args, kwargs = self._start(attrs, cursor, args, kwargs, batch)
        return await call_in_span_async(self.guard, span, token, wrapped, args, kwargs, end_with_error)

    def stream(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict):
        """For generator calls (psycopg `cursor.stream()`): the span lasts until the rows run out.

        The span is not made current: the generator may be resumed from any context.
        """
        span = self._open_detached(attrs, cursor, args, kwargs)
        try:
            yield from wrapped(*args, **kwargs)
        except BaseException as exc:
            self._end_detached(span, exc)
            raise
        self._end_detached(span, None)

    async def stream_async(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict):
        """The same for async generators."""
        span = self._open_detached(attrs, cursor, args, kwargs)
        try:
            async for row in wrapped(*args, **kwargs):
                yield row
        except BaseException as exc:
            self._end_detached(span, exc)
            raise
        self._end_detached(span, None)

    def _open_detached(self, attrs: dict, cursor: Any, args: tuple, kwargs: dict):
        """A span for a generator's rows, not made current; None if starting it failed."""
        with self.guard:
            span, token, _args, _kwargs = self._start(attrs, cursor, args, kwargs, None, commenter=False)
            context.detach(token)
            return span
        return None

    def _end_detached(self, span, exc: BaseException | None) -> None:
        if span is not None:
            with self.guard:
                if exc is None:
                    span.end()
                else:
                    end_with_error(span, exc)

    def copy_context(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict):
        """For context-manager calls (psycopg `cursor.copy()`): the span covers the `with` block."""
        if not self.active():
            return wrapped(*args, **kwargs)
        return _SpanContext(self, attrs, cursor, wrapped, args, kwargs)


class _SpanContext:
    """Starts the span on enter (sync or async), ends it on exit with the block's error."""

    def __init__(self, tracer: SqlTracer, attrs, cursor, wrapped, args, kwargs):
        self._tracer = tracer
        self._attrs = attrs
        self._cursor = cursor
        self._wrapped = wrapped
        self._args = args
        self._kwargs = kwargs
        self._span = self._token = self._inner = None

    def _open(self) -> None:
        args, kwargs = self._args, self._kwargs
        with self._tracer.guard:
            self._span, self._token, args, kwargs = self._tracer._start(
                self._attrs, self._cursor, args, kwargs, None)
        self._inner = self._wrapped(*args, **kwargs)

    def _close(self, exc: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        if exc is not None:
            with self._tracer.guard:
                record_error(span, exc)
        with self._tracer.guard:
            self._tracer._finish(span, self._token)

    def __enter__(self):
        try:
            self._open()
            return self._inner.__enter__()
        except BaseException as exc:
            self._close(exc)
            raise

    def __exit__(self, exc_type, exc, tb):
        try:
            return self._inner.__exit__(exc_type, exc, tb)
        except BaseException as inner_exc:
            self._close(inner_exc)
            raise
        finally:
            self._close(exc)

    async def __aenter__(self):
        try:
            self._open()
            return await self._inner.__aenter__()
        except BaseException as exc:
            self._close(exc)
            raise

    async def __aexit__(self, exc_type, exc, tb):
        try:
            return await self._inner.__aexit__(exc_type, exc, tb)
        except BaseException as inner_exc:
            self._close(inner_exc)
            raise
        finally:
            self._close(exc)
