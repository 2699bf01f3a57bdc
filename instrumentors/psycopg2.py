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

from typing import Any

from .base import TraceRunInstrumentor
from .dbapi import SqlTracer, composable_commenter, composed_query_text, connection_attributes, look_like

SYSTEM = "postgresql"
_NO_FACTORY = object()


def _attributes(conn: Any) -> dict:
    try:
        info = conn.info
        host, port, dbname = info.host, info.port, info.dbname
    except Exception:
        return connection_attributes(SYSTEM)
    return connection_attributes(SYSTEM, dbname, host, port)


class Psycopg2Instrumentor(TraceRunInstrumentor):
    library = "psycopg2"

    def _patch(self, **kwargs: Any) -> None:
        import psycopg2

        self._sql = SqlTracer(self, SYSTEM, composed_query_text, composable_commenter("psycopg2.sql"))
        self._connection_classes: dict = {}
        self._cursor_classes: dict = {}
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
    def connection_class(self, base: type) -> type:
        """A subclass of `base` handing out traced cursors (one per base)."""
        if getattr(base, "_trace_run_traced", False):
            return base
        cls = self._connection_classes.get(base)
        if cls is not None:
            return cls
        import psycopg2.extensions

        instrumentor = self
        plain_cursor = base.cursor is psycopg2.extensions.connection.cursor

        class TracedConnection(base):
            _trace_run_traced = True

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

        look_like(TracedConnection, base)
        self._connection_classes[base] = TracedConnection
        return TracedConnection

    def cursor_class(self, base: type) -> type:
        """A subclass of cursor class `base` whose statements are traced (one per base)."""
        if getattr(base, "_trace_run_traced", False):
            return base
        cls = self._cursor_classes.get(base)
        if cls is not None:
            return cls
        sql = self._sql
        guard = self.guard

        def attrs_of(cursor: Any) -> dict:
            conn = cursor.connection
            attrs = getattr(conn, "_trace_run_attrs", None)
            if attrs is None:
                with guard:
                    attrs = _attributes(conn)
                    try:
                        conn._trace_run_attrs = attrs
                    except AttributeError:
                        pass
            return attrs if attrs is not None else {"db.system.name": SYSTEM}

        class TracedCursor(base):
            _trace_run_traced = True

            def execute(self, *args, **kwargs):
                if not sql.active():
                    return super().execute(*args, **kwargs)
                return sql.run(attrs_of(self), self, super().execute, args, kwargs)

            def executemany(self, *args, **kwargs):
                if not sql.active():
                    return super().executemany(*args, **kwargs)
                batch = args[1] if len(args) > 1 else kwargs.get("vars_list")
                return sql.run(attrs_of(self), self, super().executemany, args, kwargs, batch=batch)

            def callproc(self, *args, **kwargs):
                if not sql.active():
                    return super().callproc(*args, **kwargs)
                name = args[0] if args else kwargs.get("procname", "")
                return sql.run(attrs_of(self), self, super().callproc, args, kwargs,
                               statement="SELECT * FROM %s()" % (name,))

            def copy_expert(self, *args, **kwargs):
                if not sql.active():
                    return super().copy_expert(*args, **kwargs)
                return sql.run(attrs_of(self), self, super().copy_expert, args, kwargs)

            def copy_from(self, *args, **kwargs):
                if not sql.active():
                    return super().copy_from(*args, **kwargs)
                table = args[1] if len(args) > 1 else kwargs.get("table", "")
                return sql.run(attrs_of(self), self, super().copy_from, args, kwargs,
                               statement="COPY %s FROM STDIN" % (table,))

            def copy_to(self, *args, **kwargs):
                if not sql.active():
                    return super().copy_to(*args, **kwargs)
                table = args[1] if len(args) > 1 else kwargs.get("table", "")
                return sql.run(attrs_of(self), self, super().copy_to, args, kwargs,
                               statement="COPY %s TO STDOUT" % (table,))

        look_like(TracedCursor, base)
        self._cursor_classes[base] = TracedCursor
        return TracedCursor
