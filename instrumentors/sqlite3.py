"""sqlite3: CLIENT spans for execute, executemany and executescript.

sqlite3.Connection and Cursor are C types whose methods cannot be patched, so
`sqlite3.connect` is wrapped to pass `factory=` a traced subclass of the
factory the program asked for (sqlite3.Connection by default); that subclass
hands out traced cursor subclasses. isinstance checks stay true.
"""

from __future__ import annotations

from typing import Any

from .base import TraceRunInstrumentor
from .dbapi import SqlTracer, connection_attributes, look_like

SYSTEM = "sqlite"


class Sqlite3Instrumentor(TraceRunInstrumentor):
    library = "sqlite3"

    def _patch(self, **kwargs: Any) -> None:
        import sqlite3
        import sqlite3.dbapi2

        self._sql = SqlTracer(self, SYSTEM)
        self._connection_classes: dict = {}
        self._cursor_classes: dict = {}
        self._default_cursor: dict = {}
        connect = self._connect_wrapper()
        self.wrap(sqlite3, "connect", connect)
        if sqlite3.dbapi2.__dict__.get("connect") is not None:
            self.wrap(sqlite3.dbapi2, "connect", connect)

    def _connect_wrapper(self):
        import sqlite3

        def connect(wrapped, instance, args, kwargs):
            if not self.is_instrumented_by_opentelemetry:
                return wrapped(*args, **kwargs)
            with self.guard:
                # connect(database, timeout, detect_types, isolation_level, check_same_thread, factory, ...)
                if len(args) > 5:
                    factory = args[5]
                    args = args[:5] + (self.connection_class(factory),) + tuple(args[6:])
                else:
                    kwargs = dict(kwargs)
                    kwargs["factory"] = self.connection_class(kwargs.get("factory") or sqlite3.Connection)
            return wrapped(*args, **kwargs)

        return connect

    def connection_class(self, base: type) -> type:
        """A subclass of `base` whose statements and cursors are traced (one per base)."""
        cls = self._connection_classes.get(base)
        if cls is not None or getattr(base, "_trace_run_traced", False):
            return cls or base
        import sqlite3

        instrumentor = self
        # A subclass may choose another default cursor in its own cursor() (learned on first use).
        default_cursor = sqlite3.Cursor if base.cursor is sqlite3.Connection.cursor else None

        class TracedConnection(base):
            _trace_run_traced = True

            def __init__(self, database, *args, **kwargs):
                super().__init__(database, *args, **kwargs)
                try:
                    name = database.decode() if isinstance(database, bytes) else str(database)
                except Exception:
                    name = ""
                self._trace_run_attrs = connection_attributes(SYSTEM, name)

            def cursor(self, factory=None, *args, **kwargs):
                if factory is None:
                    factory = default_cursor or instrumentor._default_cursor.get(base)
                    if factory is None:
                        # The class picks its own default cursor: ask it once.
                        probe = super().cursor()
                        factory = instrumentor._default_cursor[base] = type(probe)
                        probe.close()
                return super().cursor(instrumentor.cursor_class(factory), *args, **kwargs)

            def execute(self, *args, **kwargs):
                return instrumentor._sql.run(self._trace_run_attrs, self, super().execute, args, kwargs)

            def executemany(self, *args, **kwargs):
                batch = args[1] if len(args) > 1 else kwargs.get("parameters") or kwargs.get("seq_of_parameters")
                return instrumentor._sql.run(self._trace_run_attrs, self, super().executemany, args, kwargs,
                                             batch=batch)

            def executescript(self, *args, **kwargs):
                return instrumentor._sql.run(self._trace_run_attrs, self, super().executescript, args, kwargs)

        look_like(TracedConnection, base)
        self._connection_classes[base] = TracedConnection
        return TracedConnection

    def cursor_class(self, base: type) -> type:
        cls = self._cursor_classes.get(base)
        if cls is not None or getattr(base, "_trace_run_traced", False):
            return cls or base
        instrumentor = self

        class TracedCursor(base):
            _trace_run_traced = True

            def _trace_run_attrs(self) -> dict:
                attrs = getattr(self.connection, "_trace_run_attrs", None)
                return attrs if attrs is not None else {"db.system.name": SYSTEM}

            def execute(self, *args, **kwargs):
                return instrumentor._sql.run(self._trace_run_attrs(), self, super().execute, args, kwargs)

            def executemany(self, *args, **kwargs):
                batch = args[1] if len(args) > 1 else kwargs.get("parameters") or kwargs.get("seq_of_parameters")
                return instrumentor._sql.run(self._trace_run_attrs(), self, super().executemany, args, kwargs,
                                             batch=batch)

            def executescript(self, *args, **kwargs):
                return instrumentor._sql.run(self._trace_run_attrs(), self, super().executescript, args, kwargs)

        look_like(TracedCursor, base)
        self._cursor_classes[base] = TracedCursor
        return TracedCursor
