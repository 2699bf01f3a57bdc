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
    subclass_of,
    traced_subclass,
)

SYSTEM = "postgresql"
_CURSOR_ARGS = ("name", "cursor_factory", "withhold", "scrollable")  # connection.cursor()'s, in order
_CURSOR_PARAMS = frozenset(_CURSOR_ARGS)


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
        self._cursors = self._cursors_class()
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
                import psycopg2.extensions

                # (a factory may hand back anything: psycopg2's own test_module gets None from a stand-in)
                if isinstance(conn, psycopg2.extensions.connection) and not getattr(
                        type(conn), "_trace_run_traced", False):
                    factory = conn.cursor_factory or psycopg2.extensions.cursor
                    if subclass_of(factory, psycopg2.extensions.cursor):
                        conn.cursor_factory = self.cursor_class(factory)
        return conn

    # -- traced subclasses ----------------------------------------------------------
    def _connection_class(self, base: type) -> type:
        """A subclass of `base` handing out traced cursors.

        The program's own `cursor()` (any signature) is not replaced: `_TracedCursors` sits between
        `base` and psycopg2's connection in the MRO, so the program's `super().cursor(...)` reaches it.
        """
        import psycopg2.extensions

        cursors = self._cursors
        bases = (cursors,) if base is psycopg2.extensions.connection else (base, cursors)
        return traced_subclass(base, {}, type(base.__name__, bases, {}))

    def _cursors_class(self) -> type:
        """The class whose `cursor()` (psycopg2's, reached by the program's `super()` or by none) makes the
        cursor class in effect (argument, `connection.cursor_factory`, psycopg2's cursor) a traced subclass
        of it. A call psycopg2 would refuse (bad arguments) goes on unchanged, to fail the same."""
        import psycopg2.extensions

        instrumentor = self
        default = psycopg2.extensions.connection

        class _TracedCursors(default):
            __slots__ = ()

            def cursor(self, /, *args, **kwargs):
                try:  # `with instrumentor.guard:` (Guard.failed says why not)
                    if len(args) <= 4 and _CURSOR_PARAMS.issuperset(kwargs) and not any(
                            name in kwargs for name in _CURSOR_ARGS[:len(args)]):
                        given = args[1] if len(args) > 1 else kwargs.get("cursor_factory")
                        factory = given if given is not None else self.cursor_factory
                        if factory is None:
                            factory = psycopg2.extensions.cursor
                        if subclass_of(factory, psycopg2.extensions.cursor):
                            traced = instrumentor.cursor_class(factory)
                            if len(args) > 1:
                                args = (args[0], traced) + tuple(args[2:])
                            else:
                                kwargs = dict(kwargs, cursor_factory=traced)
                except Exception as exc:
                    instrumentor.guard.failed(exc)
                return super().cursor(*args, **kwargs)

        return _TracedCursors

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
