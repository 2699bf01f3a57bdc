"""The one DB-API tracing core every SQL driver module uses.

A driver module declares, per cursor method, a wrapper made by
`SqlTracer.wrapper` (or uses `stream` / `copy_context`), given how to find the
connection's fixed attributes (`connection_attributes`); for C types,
`traced_subclass` turns those wrappers into the methods of a subclass. The core makes the
CLIENT span: name `{operation} {collection}`, sanitized `db.query.text`,
SQLSTATE and `error.type` on failure (errors.record_db), and optionally a sqlcommenter comment
carrying `traceparent`. Query parameters are never read. The wrapped call runs
outside the guard, so the driver's own exceptions reach the program unchanged.
Redis, not SQL, shares the rule for when to trace (`client_active`) and the
connection attributes.
"""

from __future__ import annotations

import importlib
import weakref
from types import FunctionType, MethodType
from typing import Any, Callable, Optional

from opentelemetry.semconv.attributes.db_attributes import (
    DB_COLLECTION_NAME,
    DB_NAMESPACE,
    DB_OPERATION_BATCH_SIZE,
    DB_OPERATION_NAME,
    DB_QUERY_TEXT,
    DB_SYSTEM_NAME,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.trace import SpanKind
from trace_run.core import config, runtime_context
from trace_run.core.wrapping import FunctionWrapper, method_wrapper

from . import bounds, errors, spans
from .base import instrumentation_enabled_in
from .sql_sanitize import analyze, span_name

__all__ = [
    "SqlTracer", "connection_attributes", "AttributeCache", "client_active", "traced_subclass", "TracedClasses",
    "composed_query_text", "composable_commenter", "subclass_of",
]

_ref = weakref.ref
_kept = config.kept
_QUERY_KWARGS = ("query", "sql", "statement", "operation", "sql_script")
_CLIENT = SpanKind.CLIENT
_STATEMENTS_MAX = 256  # statements kept per driver: a program runs a few hundred at most, most far fewer
_STATEMENT_MAX = 4096  # characters of the longest query kept (as sql_sanitize keeps its analyses)
_SETTINGS = "dbapi.settings"  # config.derived's key


def _settings() -> tuple:
    """(OTEL_TRACE_RUN_DB_SANITIZE, the value bound, OTEL_TRACE_RUN_SQLCOMMENTER): what a statement's span
    depends on besides the call, read once per configuration (config.reset() forgets it)."""
    return config.get("OTEL_TRACE_RUN_DB_SANITIZE"), bounds.limit(), config.get("OTEL_TRACE_RUN_SQLCOMMENTER")


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
        # weakref(connection) -> attributes, the dictionary's own store: read as its __getitem__ does, without
        # that Python frame (~8 bytecodes a span)
        self._held: dict = self._by_conn.data

    def get(self, conn: Any) -> dict:
        try:
            return self._held[_ref(conn)]
        except (KeyError, TypeError):  # TypeError: not weak-referenceable (or not hashable)
            pass
        attrs = self._build(conn)
        try:
            self._by_conn[conn] = attrs
        except TypeError:  # not weak-referenceable: rebuild each time
            pass
        return attrs


def client_active() -> Callable[[Any], bool]:
    """`is_client_active(instrumentor)`: in C where the common call path is (runtime_context.NATIVE)."""
    native = runtime_context.NATIVE
    return is_client_active if native is None else native.client_active


def is_client_active(instrumentor: Any) -> bool:
    """Is there a client span to make for a call made now? Not when suppressed, nor inside a trace that is
    not sampled. A parent that has ended still counts (its context is sampled): work that outlives its
    request, such as a background task run after the response, stays in the request's trace."""
    if not instrumentor._is_instrumented_by_opentelemetry:
        return False
    ctx = runtime_context.get_current()  # is_instrumentation_enabled() and the span, from one read
    return instrumentation_enabled_in(ctx) and not runtime_context.unsampled_in(ctx)


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


def traced_subclass(base: type, wrappers: dict, cls: Optional[type] = None) -> type:
    """A subclass of `base` (a C type whose methods cannot be patched in place) whose methods named in
    `wrappers` run through those wrapt wrappers. `cls`: a subclass written out, for methods of its own.
    It keeps the name and module of `base` (reprs, logs)."""
    if cls is None:
        cls = type(base.__name__, (base,), {})
    cls._trace_run_traced = True
    for name, wrapper in wrappers.items():
        setattr(cls, name, _through(getattr(base, name), wrapper))
    cls.__name__ = base.__name__
    cls.__qualname__ = base.__qualname__
    cls.__module__ = base.__module__
    return cls


def subclass_of(factory: Any, base: type) -> bool:
    """Is `factory` a class of `base` we can subclass to trace? Anything else goes to the driver untouched,
    which then accepts or refuses it as it would bare."""
    return isinstance(factory, type) and issubclass(factory, base)


class TracedClasses:
    """base class -> its traced subclass, made once by `make(base)`; a traced class is its own."""

    def __init__(self, make: Callable[[type], type]):
        self._make = make
        self._made: dict = {}

    def __call__(self, base: type) -> type:
        if getattr(base, "_trace_run_traced", False):
            return base
        cls = self._made.get(base)
        if cls is None:
            cls = self._made[base] = self._make(base)
        return cls


def _through(original: Callable, wrapper: Callable) -> Callable:
    """The traced method: wrapper(original bound, self, args, kwargs). Where the wrapper is C (the native
    call path), a wrapt FunctionWrapper, also C: no frame of trace-run's is on the stack while the driver's
    C method runs, so a warning it raises names the program's line, as bare (CPython 3.12+'s sqlite3
    deprecations; Python's default filter shows them only for `__main__`). Else a plain function
    (wrapping.method_wrapper, ~0.4 us a call less than the FunctionWrapper; the Python wrapper is a frame of
    trace-run's anyway)."""
    if not isinstance(wrapper, FunctionType):
        return FunctionWrapper(original, wrapper)
    return method_wrapper(original, wrapper)


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
        self.active: Callable[[], bool] = MethodType(client_active(), instrumentor)
        self._query_text = query_text
        self._add_comment = add_comment
        self._statements: dict = {}  # (query, settings) -> (span name, the statement's attributes)

    # -- helpers -------------------------------------------------------------------
    def _start(self, attrs: dict, cursor: Any, args: tuple, kwargs: dict, batch: Any, statement: Any = None,
               commenter: bool = True):
        if statement is not None:  # the call has no SQL argument (e.g. psycopg2 copy_from)
            query, where = statement, None
        elif args:
            query, where = args[0], 0
        else:
            query, where = _find_query(args, kwargs)
        settings = _kept(_SETTINGS) or config.derived(_SETTINGS, _settings)
        found = self._statements.get((query, settings)) if type(query) is str else None
        if found is None:
            found = self._statement(query, cursor, settings)
        name, own = found
        attributes = {**attrs, **own}
        if batch is not None:
            try:
                size = len(batch)
            except TypeError:
                size = 0
            if size > 1:
                attributes[DB_OPERATION_BATCH_SIZE] = size
        span = (self.instrumentor._tracer or self.instrumentor.tracer).start_span(
            name, kind=_CLIENT, attributes=attributes
        )
        token = runtime_context.attach(runtime_context.with_span(span))
        if commenter and where is not None and settings[2]:
            args, kwargs = self._comment(span, query, where, args, kwargs)
        return span, token, args, kwargs

    def _statement(self, query: Any, cursor: Any, settings: tuple) -> tuple:
        """(span name, the attributes a statement adds to its connection's: sanitized text, operation,
        collection). Kept by the query (a str up to _STATEMENT_MAX characters) and the settings they were
        made with, unless the text was cut (a `trace_run.truncated` list is never shared between spans)."""
        text = query
        if self._query_text is not None and not isinstance(query, (str, bytes)):
            text = self._query_text(query, cursor)
        analysis = analyze(text, settings[0], settings[1])
        own = {DB_QUERY_TEXT: analysis.text}
        if analysis.truncated:
            bounds.note(own, DB_QUERY_TEXT)
        if analysis.operation:
            own[DB_OPERATION_NAME] = analysis.operation
        if analysis.collection:
            own[DB_COLLECTION_NAME] = analysis.collection
        found = (span_name(analysis, self.system), own)
        if type(query) is str and len(query) <= _STATEMENT_MAX and not analysis.truncated:
            if len(self._statements) >= _STATEMENTS_MAX:
                self._statements.clear()
            self._statements[query, settings] = found
        return found

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
            runtime_context.detach(token)

    # -- entry points ----------------------------------------------------------------
    def wrapper(self, attrs_of: Callable[[Any], dict], batch: tuple = (), statement: Callable | None = None,
                is_async: bool = False, query_of: Callable | None = None) -> Callable:
        """The wrapt wrapper of one cursor (or connection) method: a CLIENT span per call.

        attrs_of(instance): the connection's attributes; batch: (position, keyword, ...) of the
        parameter sequence whose length is `db.operation.batch_size`; statement(args, kwargs): the
        SQL to record when the call has none (psycopg2 `callproc`, `copy_from`); query_of(instance): the
        same when the instance holds it (an asyncpg prepared statement).
        """
        position, names = (batch[0], batch[1:]) if batch else (None, ())
        if position is None and statement is None and query_of is None:
            def start_plain(instance: Any, args: tuple, kwargs: dict) -> tuple:  # (execute: the SQL in the call)
                return self._start(attrs_of(instance), instance, args, kwargs, None)

            return spans.wrapper(self.guard, start_plain, errors.end_failed_db, enabled=self.active, is_async=is_async)

        def start(instance: Any, args: tuple, kwargs: dict) -> tuple:
            seq = None
            if position is not None:
                seq = args[position] if len(args) > position else next(
                    (kwargs[n] for n in names if kwargs.get(n) is not None), None)
            if query_of is not None:
                text = query_of(instance)
            else:
                text = statement(args, kwargs) if statement is not None else None
            return self._start(attrs_of(instance), instance, args, kwargs, seq, text)

        return spans.wrapper(self.guard, start, errors.end_failed_db, enabled=self.active, is_async=is_async)

    def outliving(self, how: Callable, attrs_of: Callable[[Any], dict]) -> Callable:
        """The wrapt wrapper of a call whose span outlives it: `how` is `stream`, `stream_async` or
        `copy_context`."""
        active = self.active

        def wrapper(wrapped, instance, args, kwargs):
            if not active():
                return wrapped(*args, **kwargs)
            return how(attrs_of(instance), instance, wrapped, args, kwargs)

        return wrapper

    def stream(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict):
        """For generator calls (psycopg `cursor.stream()`): the span lasts until the rows run out, or
        until the caller closes the generator early (not an error: it stopped reading).

        The span is not made current: the generator may be resumed from any context.
        """
        span = self._open_detached(attrs, cursor, args, kwargs)
        try:
            yield from wrapped(*args, **kwargs)  # also passes close() on to the driver's generator
        except GeneratorExit:
            self._end_detached(span, None)
            raise
        except BaseException as exc:
            self._end_detached(span, exc)
            raise
        self._end_detached(span, None)

    async def stream_async(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict):
        """The same for async generators. `async for` does not pass `aclose()` on as `yield from`
        passes `close()`: the driver's generator is closed here, else psycopg leaves the connection
        ACTIVE (its clean-up runs only when that generator is closed)."""
        span = self._open_detached(attrs, cursor, args, kwargs)
        rows = wrapped(*args, **kwargs)
        try:
            async for row in rows:
                yield row
        except GeneratorExit:
            self._end_detached(span, None)
            raise
        except BaseException as exc:
            self._end_detached(span, exc)
            raise
        finally:
            aclose = getattr(rows, "aclose", None)
            if aclose is not None:
                await aclose()
        self._end_detached(span, None)

    def _open_detached(self, attrs: dict, cursor: Any, args: tuple, kwargs: dict):
        """A span for a generator's rows, not made current; None if starting it failed."""
        with self.guard:
            span, token, _args, _kwargs = self._start(attrs, cursor, args, kwargs, None, commenter=False)
            runtime_context.detach(token)
            return span
        return None

    def _end_detached(self, span, exc: BaseException | None) -> None:
        if span is not None:
            with self.guard:
                if exc is None:
                    span.end()
                else:
                    errors.end_failed_db(span, exc)

    def copy_context(self, attrs: dict, cursor: Any, wrapped: Callable, args: tuple, kwargs: dict):
        """For context-manager calls (psycopg `cursor.copy()`): the span covers the `with` block."""
        if not self.active():
            return wrapped(*args, **kwargs)
        return _SpanContext(self, attrs, cursor, wrapped, args, kwargs)


class _SpanContext:
    """Starts the span on enter (sync or async), ends it on exit with the block's error."""

    def __init__(self, tracer: SqlTracer, attrs, cursor, wrapped, args, kwargs):
        self._tracer = tracer
        self._call = (attrs, cursor, wrapped, args, kwargs)
        self._span = self._token = self._inner = None

    def _open(self) -> None:
        attrs, cursor, wrapped, args, kwargs = self._call
        with self._tracer.guard:
            self._span, self._token, args, kwargs = self._tracer._start(attrs, cursor, args, kwargs, None)
        self._inner = wrapped(*args, **kwargs)

    def _close(self, exc: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        if exc is not None:
            with self._tracer.guard:
                errors.record_db(span, exc)
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
