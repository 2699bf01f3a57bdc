"""What an exception becomes on a span: the one place that decides it for every instrumentor.

`error.type` is the qualified class name everywhere (HTTP, databases,
messaging); an HTTP status that is an error is its code (`record_status`).
The status description is `Type: message` (`record`), or the type alone for
a database client's own span (`record_db`, no event). `end_failed` and
`end_failed_db` are the `fail` callbacks of spans.wrapper.

Every text taken from an exception (status description, `exception.message`,
`exception.stacktrace`) goes through the URL redaction, because clients quote
the URL they failed on ("Max retries exceeded with url: /x?X-Amz-Signature=...")
and source lines in a traceback may hold one too. A database error keeps only
its type and code (SQLSTATE, SQLite's result code, Redis's error prefix): the
message is withheld, on the DB span and on every SERVER or CONSUMER span it
escapes through, because PostgreSQL puts row values in it (DETAIL), Redis
echoes arguments ("unknown command ..., with args beginning with: ...") and
SQLAlchemy or Django repeat the statement and its parameters. A database error
is recognised by where its class (or one of its bases) is defined, so no driver
is imported, and it is recognised even when the driver is not instrumented; an
exception raised from one, or while handling one, is treated the same way.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Optional

from opentelemetry.semconv.attributes.db_attributes import DB_RESPONSE_STATUS_CODE
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Status, StatusCode

from .url_redaction import redact_text

__all__ = [
    "record", "record_db", "record_status", "end_failed", "end_failed_db", "error_type", "message", "stacktrace",
    "is_db_error", "db_code", "redis_prefix",
]

# Modules whose exceptions are database errors (a module, or a package and everything under it).
# Compared as names, not by a regex: nothing compiled while a process starts.
_DB_MODULES = frozenset((
    "psycopg", "psycopg2", "psycopg_pool", "sqlite3", "_sqlite3", "redis", "asyncpg", "aiopg", "pg8000", "pymysql",
    "MySQLdb", "aiomysql", "mysql.connector", "pymssql", "pyodbc", "oracledb", "cx_Oracle", "aiosqlite", "sqlalchemy",
    "django.db",
))
_DB_PACKAGES = tuple(name + "." for name in _DB_MODULES)
_CACHE_MAX = 256
_db_classes: dict = {}

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def error_type(exc: BaseException) -> str:
    """Fully qualified class name, as `error.type` and `exception.type` want it."""
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__", None):
        return cls.__qualname__
    return module + "." + cls.__qualname__


def _is_db_module(name: str) -> bool:
    return name in _DB_MODULES or name.startswith(_DB_PACKAGES)


def _db_class(cls: type) -> bool:
    try:
        return _db_classes[cls]
    except KeyError:
        pass
    found = any(_is_db_module(getattr(k, "__module__", None) or "") for k in cls.__mro__)
    if len(_db_classes) < _CACHE_MAX:
        _db_classes[cls] = found
    return found


def is_db_error(exc: BaseException) -> bool:
    """A driver's error, or one raised from (or while handling) a driver's error: its text may hold data."""
    if _db_class(type(exc)):
        return True
    before = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return before is not None and _db_class(type(before))


def redis_prefix(exc: BaseException) -> Optional[str]:
    """The error prefix Redis sends (`WRONGTYPE`, `ERR`, `NOSCRIPT`): a code, never data."""
    if not exc.args or not isinstance(exc.args[0], str):
        return None
    first = exc.args[0].split(" ", 1)[0]
    if first and first.isupper() and first.isalpha() and len(first) <= 20:
        return first
    return None


def db_code(exc: BaseException) -> Optional[str]:
    """SQLSTATE (psycopg, psycopg2), SQLite's extended result code, or Redis's error prefix."""
    for attr in ("sqlstate", "pgcode", "sqlite_errorcode"):
        code = getattr(exc, attr, None)
        if code not in (None, ""):
            return str(code)
    if (type(exc).__module__ or "").startswith("redis"):
        return redis_prefix(exc)
    return None


def _withheld(exc: BaseException) -> str:
    code = db_code(exc)
    if code is None and exc.__cause__ is not None:
        code = db_code(exc.__cause__)
    return "message withheld (database error%s)" % (", code " + code if code else "")


def message(exc: BaseException) -> str:
    """The exception's text as it may leave the process."""
    if is_db_error(exc):
        return _withheld(exc)
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable %s>" % type(exc).__name__
    return redact_text(text)


def _chain(exc: BaseException) -> list:
    """(exception, how it led to the one after it) pairs, the newest first, as traceback prints them."""
    out: list = []
    seen: set = set()
    link = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append((exc, link))
        if exc.__cause__ is not None:
            exc, link = exc.__cause__, _CAUSE
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc, link = exc.__context__, _CONTEXT
        else:
            exc = None
    return out


def stacktrace(exc: BaseException) -> str:
    """The traceback as Python prints it, each exception line made by `message`, the whole redacted."""
    parts = []
    for item, link in reversed(_chain(exc)):
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        text = message(item)
        parts.append("%s: %s\n" % (error_type(item), text) if text else error_type(item) + "\n")
        if not is_db_error(item):
            for note in getattr(item, "__notes__", None) or ():
                parts.append("%s\n" % note)
        if link is not None:
            parts.append(link)
    return redact_text("".join(parts))


def record(span: Any, exc: BaseException) -> None:
    """An `exception` event, `error.type` and ERROR status with the exception's redacted text."""
    if not span.is_recording():
        return
    kind = error_type(exc)
    text = message(exc)
    span.add_event("exception", {EXCEPTION_TYPE: kind, EXCEPTION_MESSAGE: text, EXCEPTION_STACKTRACE: stacktrace(exc)})
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, "%s: %s" % (type(exc).__name__, text)))


def record_db(span: Any, exc: BaseException, code_of: Callable[[BaseException], Any] = db_code) -> None:
    """A database client's failure: `error.type`, `db.response.status_code` and ERROR status naming
    the type only (no event: the message is the driver's, and may hold row values)."""
    if not isinstance(exc, Exception):
        return
    span.set_attribute(ERROR_TYPE, error_type(exc))
    code = code_of(exc)
    if code:
        span.set_attribute(DB_RESPONSE_STATUS_CODE, code)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def record_status(span: Any, status_code: int) -> None:
    """An HTTP status that is an error (>= 400 for clients, 5xx for servers): `error.type` is the code."""
    span.set_attribute(ERROR_TYPE, str(status_code))
    span.set_status(Status(StatusCode.ERROR))


def end_failed(span: Any, exc: BaseException) -> None:
    """`fail` for spans.wrapper (HTTP clients, messaging): `record`, then end the span."""
    try:
        record(span, exc)
    finally:
        span.end()


def end_failed_db(span: Any, exc: BaseException) -> None:
    """`fail` for spans.wrapper (SQL drivers, Redis): `record_db`, then end the span."""
    try:
        record_db(span, exc)
    finally:
        span.end()
