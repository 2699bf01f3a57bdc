"""psycopg 3: CLIENT spans for cursor execute, executemany, stream and COPY, sync and async.

psycopg 3's cursors are Python classes, so their methods are patched in place:
every connection (plain, async, from a psycopg_pool pool), `Connection.execute`
(which goes through a cursor), client-side, raw and server-side (named)
cursors are covered. In pipeline mode a span covers queueing the statement;
errors of pipelined statements surface at the next sync, outside its span.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .base import TraceRunInstrumentor
from .chatter import suppress_chatter
from .dbapi import AttributeCache, SqlTracer, composable_commenter, composed_query_text, connection_attributes

SYSTEM = "postgresql"


def _attributes(conn: Any) -> dict:
    info = conn.info
    host = info.host
    # A unix socket directory has no port (which psycopg may fail to report): not asked for.
    return connection_attributes(SYSTEM, info.dbname, host, None if host and host.startswith("/") else info.port)


_BATCH = (1, "params_seq")


def _cached_attributes(guard: Any, cache: AttributeCache, cursor: Any) -> dict:
    try:  # `with guard:` (a try costs nothing until it fails, a `with` two Python calls a span)
        return cache.get(cursor.connection)
    except Exception as exc:
        guard.failed(exc)
    return {"db.system.name": SYSTEM}


class PsycopgInstrumentor(TraceRunInstrumentor):
    library = "psycopg"

    def _patch(self, **kwargs: Any) -> None:
        import psycopg

        sql = SqlTracer(self, SYSTEM, composed_query_text, composable_commenter("psycopg.sql"))
        cache = AttributeCache(_attributes)
        attrs_of = partial(_cached_attributes, self.guard, cache)
        execute, executemany = sql.wrapper(attrs_of), sql.wrapper(attrs_of, batch=_BATCH)
        execute_async = sql.wrapper(attrs_of, is_async=True)
        executemany_async = sql.wrapper(attrs_of, batch=_BATCH, is_async=True)
        copy = sql.outliving(sql.copy_context, attrs_of)
        self.wrap(psycopg.Cursor, "execute", execute)
        self.wrap(psycopg.Cursor, "executemany", executemany)
        self.wrap(psycopg.Cursor, "copy", copy)
        self.wrap(psycopg.Cursor, "stream", sql.outliving(sql.stream, attrs_of))
        self.wrap(psycopg.ServerCursor, "execute", execute)
        self.wrap(psycopg.AsyncCursor, "execute", execute_async)
        self.wrap(psycopg.AsyncCursor, "executemany", executemany_async)
        self.wrap(psycopg.AsyncCursor, "copy", copy)
        self.wrap(psycopg.AsyncCursor, "stream", sql.outliving(sql.stream_async, attrs_of))
        self.wrap(psycopg.AsyncServerCursor, "execute", execute_async)

    def patch_pool(self, psycopg_pool: Any) -> None:
        """psycopg_pool's health checks are the pool's chatter, not the program's work
        (registry `submodules`: called when psycopg_pool is imported)."""
        def quiet(wrapped, instance, args, kwargs):
            with suppress_chatter():
                return wrapped(*args, **kwargs)

        def quiet_async(wrapped, instance, args, kwargs):
            async def run():
                with suppress_chatter():
                    return await wrapped(*args, **kwargs)

            return run()

        for name in ("check", "_check_connection"):
            if hasattr(psycopg_pool.ConnectionPool, name):
                self.wrap(psycopg_pool.ConnectionPool, name, quiet)
            if hasattr(psycopg_pool, "AsyncConnectionPool") and hasattr(psycopg_pool.AsyncConnectionPool, name):
                self.wrap(psycopg_pool.AsyncConnectionPool, name, quiet_async)
