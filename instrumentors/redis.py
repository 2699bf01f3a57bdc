"""redis-py: one CLIENT span per command, one per pipeline; sync and redis.asyncio.

`db.query.text` is the command name followed by one `?` per argument
(`SET ? ?`): keys, values and credentials never leave the process. With
OTEL_TRACE_RUN_DB_SANITIZE=false arguments are shown, except those of
commands that carry credentials (AUTH, HELLO, MIGRATE) and the passwords
given to CONFIG SET and ACL SETUSER. A pipeline's span is
named after its distinct commands (`SET INCR`) and carries the command count
in `db.operation.batch.size`. Cluster clients are not instrumented.
"""

from __future__ import annotations

from functools import partial
from types import MethodType
from typing import Any, Optional

from opentelemetry.semconv.attributes.db_attributes import (
    DB_OPERATION_BATCH_SIZE,
    DB_OPERATION_NAME,
    DB_QUERY_TEXT,
    DB_SYSTEM_NAME,
)
from opentelemetry.trace import SpanKind
from trace_run.core import config, runtime_context

from . import bounds, errors, spans
from .base import TraceRunInstrumentor
from .bounds import TRUNCATED
from .dbapi import AttributeCache, client_active, connection_attributes

SYSTEM = "redis"
_SECRET_COMMANDS = frozenset(("AUTH", "HELLO", "MIGRATE"))
_SECRET_CONFIG = frozenset(("REQUIREPASS", "MASTERAUTH", "TLS-KEY-FILE-PASS", "TLS-CLIENT-KEY-FILE-PASS"))
_ACL_SECRET_RULES = (">", "<", "#", "!")
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


_CLIENT = SpanKind.CLIENT
_kept = config.kept
_NO_POOL = {DB_SYSTEM_NAME: SYSTEM}  # a client without a connection pool (copied, never changed)
_SETTINGS = "redis.settings"  # config.derived's key


def _settings() -> tuple:
    """(OTEL_TRACE_RUN_DB_SANITIZE, the value bound, {(command name, argument count): (span name, the attributes
    the command adds to its pool's)}), for the configuration read now: config.reset() forgets all three."""
    return config.get("OTEL_TRACE_RUN_DB_SANITIZE"), bounds.limit(), {}


_COMMANDS_MAX = 256  # commands kept per configuration (see _command_span): a client sends a few


def command_text(args: tuple, sanitize: bool = True) -> str:
    """`SET ? ?`: the command name and a `?` per argument (arguments shown only if asked)."""
    if not args:
        return ""
    op = _name(args[0])
    if sanitize or op.split(" ", 1)[0] in _SECRET_COMMANDS:
        return op + " ?" * (len(args) - 1)
    shown = [_show(a) for a in args[1:]]
    if op.startswith(("CONFIG", "ACL")):
        _mask_secrets(op, args, shown)
    return " ".join([op] + shown)


def _mask_secrets(op: str, args: tuple, shown: list) -> None:
    """`?` for the passwords in `CONFIG SET requirepass|masterauth ...` and in `ACL SETUSER`'s
    `>pw`, `<pw`, `#hash`, `!hash` rules, as for AUTH. shown[i] shows args[i + 1]."""
    words = op.split()
    if len(words) > 1:  # redis-py sends "CONFIG SET" as one argument
        sub, first = words[1], 0
    elif shown:  # execute_command("CONFIG", "SET", ...)
        sub, first = _name(args[1]), 1
    else:
        return
    if words[0] == "CONFIG" and sub == "SET":
        for i in range(first, len(shown) - 1, 2):
            if _name(args[i + 1]) in _SECRET_CONFIG:
                shown[i + 1] = "?"
    elif words[0] == "ACL" and sub == "SETUSER":
        for i in range(first + 1, len(shown)):  # shown[first] is the user name
            if shown[i][:1] in _ACL_SECRET_RULES:
                shown[i] = "?"


class RedisInstrumentor(TraceRunInstrumentor):
    library = "redis"

    def _patch(self, **kwargs: Any) -> None:
        import redis.client

        self._attrs = AttributeCache(_pool_attributes)
        active = MethodType(client_active(), self)  # the rule every DB client shares
        command = partial(spans.wrapper, self.guard, self._start_command, errors.end_failed_db, enabled=active)
        pipeline = partial(spans.wrapper, self.guard, self._start_pipeline, errors.end_failed_db, enabled=active)
        self.wrap(redis.client.Redis, "execute_command", command())
        self.wrap(redis.client.Pipeline, "immediate_execute_command", command())
        self.wrap(redis.client.Pipeline, "execute", pipeline())
        try:
            import redis.asyncio.client as aio
        except ImportError:  # pragma: no cover - redis without asyncio support
            return
        self.wrap(aio.Redis, "execute_command", command(is_async=True))
        self.wrap(aio.Pipeline, "immediate_execute_command", command(is_async=True))
        self.wrap(aio.Pipeline, "execute", pipeline(is_async=True))

    # -- span plumbing --------------------------------------------------------------

    def _base(self, client: Any) -> dict:
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return {DB_SYSTEM_NAME: SYSTEM}
        return dict(self._attrs.get(pool))

    def _start_command(self, client: Any, args: tuple, kwargs: dict) -> tuple:
        """`start` for spans.wrapper: one command. Its span's name and own attributes are kept by command name
        and argument count for the configuration read now (see _command_span); the pool's are kept per pool."""
        sanitize, bound, kept = _kept(_SETTINGS) or config.derived(_SETTINGS, _settings)
        try:
            name, own = kept[args[0], len(args)]
        except (KeyError, TypeError, IndexError):
            name, own = _command_span(args, sanitize, bound, kept)
        pool = getattr(client, "connection_pool", None)
        attrs = {**(_NO_POOL if pool is None else self._attrs.get(pool)), **own}
        span = (self._tracer or self.tracer).start_span(name, kind=_CLIENT, attributes=attrs)
        return span, runtime_context.attach(runtime_context.with_span(span)), args, kwargs

    def _start_pipeline(self, pipe: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
        """`start` for spans.wrapper: a pipeline's execute (an empty one makes no span)."""
        if not getattr(pipe, "command_stack", None):
            return None
        return self._open(*_pipeline_name_and_attributes(pipe, self._base(pipe)), args, kwargs)

    def _open(self, name: str, attrs: dict, args: tuple, kwargs: dict) -> tuple:
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
        return span, runtime_context.attach(runtime_context.with_span(span)), args, kwargs


def _command_span(args: tuple, sanitize: bool, bound: Any, kept: dict) -> tuple:
    """(span name, the attributes one command adds to its pool's: operation and bounded text). Put in `kept` when
    they depend on the command's name and argument count alone: sanitized, the name a short str or bytes (up to
    64 characters), the text within the bound (a cut text's `trace_run.truncated` list is never shared)."""
    op = _name(args[0]) if args else ""
    own: dict = {}
    if op:
        own[DB_OPERATION_NAME] = op
    bounds.put(own, DB_QUERY_TEXT, command_text(args, sanitize), bound)
    found = (op or SYSTEM, own)
    if sanitize and args and TRUNCATED not in own and type(args[0]) in (str, bytes) and len(args[0]) <= 64:
        if len(kept) >= _COMMANDS_MAX:
            kept.clear()
        kept[args[0], len(args)] = found
    return found


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
    bounds.put(attrs, DB_QUERY_TEXT, "\n".join(lines))
    return name, attrs
