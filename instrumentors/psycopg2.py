"""psycopg2: CLIENT spans for cursor execute, executemany, callproc and COPY.

psycopg2's connection and cursor are C types whose methods cannot be patched.
`psycopg2.connect` is wrapped to pass a traced subclass of the requested
`connection_factory` (psycopg2.extensions.connection by default); its
`cursor()` passes traced subclasses of whatever cursor factory applies
(argument, `connection.cursor_factory`, or the default of a connection class
such as DictConnection). Real subclasses keep isinstance checks and psycopg2's
own C type checks (register_type, extras.execute_values) working. A
connection_factory that is a plain function gets its connection's
`cursor_factory` replaced instead.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .base import TraceRunInstrumentor
from .dbapi import (
    SqlTracer,
    TracedClasses,
    composable_commenter,
    composed_query_text,
    connection_attributes,
    traced_subclass,
)

SYSTEM = "postgresql"
_NO_FACTORY = object()


def _attributes(conn: Any) -> dict:
    try:
        info = conn.info
        host, port, dbname = info.host, info.port, info.dbname
    except Exception:
        return connection_attributes(SYSTEM)
    return connection_attributes(SYSTEM, dbname, host, port)


def _callproc_statement(args: tuple, kwargs: dict) -> str:
    return "SELECT * FROM %s()" % (args[0] if args else kwargs.get("procname", ""),)


def _copy_statement(template: str):
    def statement(args: tuple, kwargs: dict) -> str:
        return template % (args[1] if len(args) > 1 else kwargs.get("table", ""),)

    return statement


class Psycopg2Instrumentor(TraceRunInstrumentor):
    library = "psycopg2"

    def _patch(self, **kwargs: Any) -> None:
        import psycopg2

        sql = SqlTracer(self, SYSTEM, composed_query_text, composable_commenter("psycopg2.sql"))
        attrs_of = self._attributes_of
        self._cursor_wrappers = {
            "execute": sql.wrapper(attrs_of),
            "executemany": sql.wrapper(attrs_of, batch=(1, "vars_list")),
            "callproc": sql.wrapper(attrs_of, statement=_callproc_statement),
            "copy_expert": sql.wrapper(attrs_of),
            "copy_from": sql.wrapper(attrs_of, statement=_copy_statement("COPY %s FROM STDIN")),
            "copy_to": sql.wrapper(attrs_of, statement=_copy_statement("COPY %s TO STDOUT")),
        }
        self.connection_class = TracedClasses(self._connection_class)
        self.cursor_class = TracedClasses(partial(traced_subclass, wrappers=self._cursor_wrappers))
        self._default_cursor: dict = {}  # connection class -> the cursor class its cursor() picks
        self.wrap(psycopg2, "connect", self._connect)

    def _connect(self, wrapped, instance, args, kwargs):
        if not self.is_instrumented_by_opentelemetry:
            return wrapped(*args, **kwargs)
        plain_factory = None
        with self.guard:
            import psycopg2.extensions

            if len(args) > 1:
                factory = args[1] or psycopg2.extensions.connection
            else:
                factory = kwargs.get("connection_factory") or psycopg2.extensions.connection
            if isinstance(factory, type) and issubclass(factory, psycopg2.extensions.connection):
                traced = self.connection_class(factory)
                if len(args) > 1:
                    args = (args[0], traced) + tuple(args[2:])
                else:
                    kwargs = dict(kwargs)
                    kwargs["connection_factory"] = traced
            else:
                plain_factory = factory
        conn = wrapped(*args, **kwargs)
        if plain_factory is not None:
            with self.guard:
                if not getattr(type(conn), "_trace_run_traced", False):
                    import psycopg2.extensions

                    conn.cursor_factory = self.cursor_class(conn.cursor_factory or psycopg2.extensions.cursor)
        return conn

    # -- traced subclasses ----------------------------------------------------------
    def _connection_class(self, base: type) -> type:
        """A subclass of `base` handing out traced cursors."""
        import psycopg2.extensions

        instrumentor = self
        plain_cursor = base.cursor is psycopg2.extensions.connection.cursor

        class TracedConnection(base):
            def cursor(self, *args, **kwargs):
                given = kwargs.get("cursor_factory", _NO_FACTORY)
                if given is _NO_FACTORY and len(args) > 1:
                    given = args[1]
                    args = (args[0],) + tuple(args[2:])
                    kwargs = dict(kwargs)
                    kwargs["cursor_factory"] = given
                factory = given if given not in (_NO_FACTORY, None) else self.cursor_factory
                if factory is None:
                    if plain_cursor:
                        factory = psycopg2.extensions.cursor
                    else:
                        factory = instrumentor._default_cursor.get(base)
                        if factory is None:
                            # The class picks its own default (DictConnection -> DictCursor): ask it once.
                            probe = super().cursor(*args, **kwargs)
                            factory = type(probe)
                            probe.close()
                            instrumentor._default_cursor[base] = factory
                if isinstance(factory, type):
                    kwargs = dict(kwargs)
                    kwargs["cursor_factory"] = instrumentor.cursor_class(factory)
                return super().cursor(*args, **kwargs)

        return traced_subclass(base, {}, TracedConnection)

    def _attributes_of(self, cursor: Any) -> dict:
        conn = cursor.connection
        attrs = getattr(conn, "_trace_run_attrs", None)
        if attrs is None:
            with self.guard:
                attrs = _attributes(conn)
                try:
                    conn._trace_run_attrs = attrs
                except AttributeError:
                    pass
        return attrs if attrs is not None else {"db.system.name": SYSTEM}
