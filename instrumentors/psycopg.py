"""psycopg 3: CLIENT spans for cursor execute, executemany, stream and COPY, sync and async.

psycopg 3's cursors are Python classes, so their methods are patched in place:
every connection (plain, async, from a psycopg_pool pool), `Connection.execute`
(which goes through a cursor), client-side, raw and server-side (named)
cursors are covered. In pipeline mode a span covers queueing the statement;
errors of pipelined statements surface at the next sync, outside its span.
"""

from __future__ import annotations

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


class PsycopgInstrumentor(TraceRunInstrumentor):
    library = "psycopg"

    def _patch(self, **kwargs: Any) -> None:
        import psycopg

        sql = self._sql = SqlTracer(self, SYSTEM, composed_query_text, composable_commenter("psycopg.sql"))
        cache = AttributeCache(_attributes)
        guard = self.guard

        def attrs_of(cursor: Any) -> dict:
            with guard:
                return cache.get(cursor.connection)
            return {"db.system.name": SYSTEM}

        def execute(wrapped, instance, args, kwargs):
            if not sql.active():
                return wrapped(*args, **kwargs)
            return sql.run(attrs_of(instance), instance, wrapped, args, kwargs)

        def executemany(wrapped, instance, args, kwargs):
            if not sql.active():
                return wrapped(*args, **kwargs)
            batch = args[1] if len(args) > 1 else kwargs.get("params_seq")
            return sql.run(attrs_of(instance), instance, wrapped, args, kwargs, batch=batch)

        def copy(wrapped, instance, args, kwargs):
            if not sql.active():
                return wrapped(*args, **kwargs)
            return sql.copy_context(attrs_of(instance), instance, wrapped, args, kwargs)

        def stream(wrapped, instance, args, kwargs):
            if not sql.active():
                return wrapped(*args, **kwargs)
            return sql.stream(attrs_of(instance), instance, wrapped, args, kwargs)

        def stream_async(wrapped, instance, args, kwargs):
            if not sql.active():
                return wrapped(*args, **kwargs)
            return sql.stream_async(attrs_of(instance), instance, wrapped, args, kwargs)

        async def execute_async(wrapped, instance, args, kwargs):
            if not sql.active():
                return await wrapped(*args, **kwargs)
            return await sql.run_async(attrs_of(instance), instance, wrapped, args, kwargs)

        async def executemany_async(wrapped, instance, args, kwargs):
            if not sql.active():
                return await wrapped(*args, **kwargs)
            batch = args[1] if len(args) > 1 else kwargs.get("params_seq")
            return await sql.run_async(attrs_of(instance), instance, wrapped, args, kwargs, batch=batch)

        self.wrap(psycopg.Cursor, "execute", execute)
        self.wrap(psycopg.Cursor, "executemany", executemany)
        self.wrap(psycopg.Cursor, "copy", copy)
        self.wrap(psycopg.Cursor, "stream", stream)
        self.wrap(psycopg.ServerCursor, "execute", execute)
        self.wrap(psycopg.AsyncCursor, "execute", execute_async)
        self.wrap(psycopg.AsyncCursor, "executemany", executemany_async)
        self.wrap(psycopg.AsyncCursor, "copy", copy)
        self.wrap(psycopg.AsyncCursor, "stream", stream_async)
        self.wrap(psycopg.AsyncServerCursor, "execute", execute_async)
        import sys

        if "psycopg_pool" in sys.modules and hasattr(sys.modules["psycopg_pool"], "ConnectionPool"):
            self.patch_pool(sys.modules["psycopg_pool"])  # instrumented by hand after the pool was imported

    def _unpatch(self, **kwargs: Any) -> None:
        self._pool_patched = False

    def patch_pool(self, psycopg_pool: Any) -> None:
        """psycopg_pool's health checks are the pool's chatter, not the program's work.
        (The agent calls this when psycopg_pool is imported: registry `extras`.)"""
        if not self.is_instrumented_by_opentelemetry or getattr(self, "_pool_patched", False):
            return
        self._pool_patched = True

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
