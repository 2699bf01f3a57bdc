"""asyncpg: a CLIENT span per statement, as for the other SQL drivers.

Connection's statement methods, PreparedStatement's (the span carries the prepared text; `prepare`
itself is a round trip and has its span) and `copy_*` are patched in place. Pool connections are
Connections (the pool's proxy forwards to them) and `pool.fetch()` and the rest delegate to one, so
pools need nothing more. A transaction's BEGIN, COMMIT and ROLLBACK are statements asyncpg sends through
`Connection.execute`, so they have spans like the statements inside. asyncpg's type introspection runs
through its private execute path and makes no span; the reset a pool runs on each released connection
is chatter (instrumentors/chatter.py). Cursors (`conn.cursor()`) are not traced.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .base import TraceRunInstrumentor
from .chatter import suppress_chatter
from .dbapi import AttributeCache, SqlTracer, connection_attributes

SYSTEM = "postgresql"

# method -> position and keyword of its sequence of argument tuples (db.operation.batch.size)
_CONNECTION = {"execute": (), "fetch": (), "fetchrow": (), "fetchval": (), "copy_from_query": (),
               "executemany": (1, "args"), "fetchmany": (1, "args")}
_PREPARED = {"fetch": (), "fetchrow": (), "fetchval": (), "explain": (),
             "executemany": (0, "args"), "fetchmany": (0, "args")}
_COPY = {"copy_from_table": "COPY %s TO STDOUT", "copy_to_table": "COPY %s FROM STDIN",
         "copy_records_to_table": "COPY %s FROM STDIN"}


def _attributes(conn: Any) -> dict:
    addr = getattr(conn, "_addr", None)  # (host, port), or a unix socket path
    host, port = addr if isinstance(addr, tuple) and len(addr) >= 2 else (addr, None)
    return connection_attributes(SYSTEM, getattr(getattr(conn, "_params", None), "database", None), host, port)


def _cached_attributes(guard: Any, cache: AttributeCache, conn: Any) -> dict:
    with guard:
        return cache.get(conn)
    return {"db.system.name": SYSTEM}


def _copy_statement(template: str):
    def statement(args: tuple, kwargs: dict) -> str:
        table = args[0] if args else kwargs.get("table_name", "")
        schema = kwargs.get("schema_name")
        return template % ("%s.%s" % (schema, table) if schema else table)

    return statement


def _prepared_query(statement: Any) -> Any:
    return statement.get_query()


def _first_argument(args: tuple, kwargs: dict) -> Any:
    """`prepare`'s SQL, recorded without a sqlcommenter comment (it would outlive its span)."""
    return args[0] if args else kwargs.get("query")


class AsyncpgInstrumentor(TraceRunInstrumentor):
    library = "asyncpg"

    def _patch(self, **kwargs: Any) -> None:
        import asyncpg
        from asyncpg.prepared_stmt import PreparedStatement

        sql = SqlTracer(self, SYSTEM)
        cache = AttributeCache(_attributes)
        attrs_of = partial(_cached_attributes, self.guard, cache)
        for name, batch in _CONNECTION.items():
            if hasattr(asyncpg.Connection, name):
                self.wrap(asyncpg.Connection, name, sql.wrapper(attrs_of, batch=batch, is_async=True))
        for name, template in _COPY.items():
            self.wrap(asyncpg.Connection, name,
                      sql.wrapper(attrs_of, statement=_copy_statement(template), is_async=True))
        self.wrap(asyncpg.Connection, "prepare", sql.wrapper(attrs_of, statement=_first_argument, is_async=True))

        def statement_attrs(statement: Any) -> dict:
            return attrs_of(statement._connection)

        for name, batch in _PREPARED.items():
            if hasattr(PreparedStatement, name):
                self.wrap(PreparedStatement, name, _called_first(
                    sql.wrapper(statement_attrs, batch=batch, query_of=_prepared_query, is_async=True)))
        self.wrap(asyncpg.Connection, "reset", _quiet)


def _called_first(traced: Any) -> Any:
    """PreparedStatement's methods check synchronously that its connection is still usable (not released
    to a pool): called first, they raise where they raise bare; the span covers awaiting them."""

    def wrapper(wrapped, instance, args, kwargs):
        awaitable = wrapped(*args, **kwargs)
        return traced(lambda *_args, **_kwargs: awaitable, instance, args, kwargs)

    return wrapper


async def _quiet(wrapped, instance, args, kwargs):
    """A pool's reset of a released connection is the pool's chatter, not the program's work."""
    with suppress_chatter():
        return await wrapped(*args, **kwargs)
