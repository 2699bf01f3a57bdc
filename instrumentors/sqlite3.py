"""sqlite3: CLIENT spans for execute, executemany and executescript.

sqlite3.Connection and Cursor are C types whose methods cannot be patched, so
`sqlite3.connect` is wrapped to pass `factory=` a traced subclass of the
factory the program asked for (sqlite3.Connection by default); that subclass
hands out traced cursor subclasses. isinstance checks stay true. A program's own
`cursor()` is never called other than as the program calls it: what it gets from
sqlite3's `cursor()` is traced; a cursor it builds by hand is its own, untraced.
"""

from __future__ import annotations

import sys
from functools import partial
from operator import attrgetter
from typing import Any

from .base import TraceRunInstrumentor
from .dbapi import SqlTracer, TracedClasses, connection_attributes, subclass_of, traced_subclass

SYSTEM = "sqlite"


def _namespace(database: Any) -> str:
    """`db.namespace`: the database file. A `file:` URI keeps only its path: its query may hold a
    key (`?psk=...`, SQLCipher's `key=`)."""
    name = database.decode() if isinstance(database, bytes) else str(database)
    if name[:5].lower() != "file:":
        return name
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(name).path)


class Sqlite3Instrumentor(TraceRunInstrumentor):
    library = "sqlite3"

    def _patch(self, **kwargs: Any) -> None:
        import sqlite3
        import sqlite3.dbapi2

        sql = SqlTracer(self, SYSTEM)
        # Before 3.11 the C Connection.execute, executemany and executescript call self.cursor().<same>(...):
        # our cursor() makes that cursor traced, so its span stands alone (a connection span would be a
        # second one around it). From 3.11 they use an untraced cursor of their own: the connection's is the span.
        delegates = sys.version_info < (3, 11)
        self._connection_wrappers = {} if delegates else _statement_wrappers(sql, _own_attributes)
        self._cursor_wrappers = _statement_wrappers(sql, _connection_attributes)
        self.connection_class = TracedClasses(self._connection_class)
        self.cursor_class = TracedClasses(partial(traced_subclass, wrappers=self._cursor_wrappers))
        self._cursors = self._cursors_class()
        self._delegating = self._delegating_class(self._cursors) if delegates else None
        self.wrap(sqlite3, "connect", self._connect)
        if sqlite3.dbapi2.__dict__.get("connect") is not None:
            self.wrap(sqlite3.dbapi2, "connect", self._connect)

    def _connect(self, wrapped, instance, args, kwargs):
        if not self.is_instrumented_by_opentelemetry:
            return wrapped(*args, **kwargs)
        with self.guard:
            import sqlite3

            # connect(database, timeout, detect_types, isolation_level, check_same_thread, factory, ...)
            if len(args) > 5:
                if subclass_of(args[5], sqlite3.Connection):
                    args = args[:5] + (self.connection_class(args[5]),) + tuple(args[6:])
            else:
                factory = kwargs.get("factory", sqlite3.Connection)
                if subclass_of(factory, sqlite3.Connection):
                    kwargs = dict(kwargs)
                    kwargs["factory"] = self.connection_class(factory)
        return wrapped(*args, **kwargs)

    def _connection_class(self, base: type) -> type:
        """A subclass of `base` whose statements and cursors are traced.

        The program's own `cursor()` (any signature) is not replaced: `_TracedCursors` sits between
        `base` and sqlite3.Connection in the MRO, so the program's `super().cursor(...)` reaches it.
        """
        import sqlite3

        cursors = self._cursors
        if self._delegating is not None and base.cursor is not sqlite3.Connection.cursor:
            cursors = self._delegating  # the program's cursor() may hand out a cursor of its own making
        bases = (cursors,) if base is sqlite3.Connection else (base, cursors)

        class TracedConnection(*bases):
            # what a connection whose __init__ was called again and failed reads: CPython's C __init__
            # empties the instance dict first (CPython's test_connection_bad_reinit)
            _trace_run_attrs = {"db.system.name": SYSTEM}

            def __init__(self, /, database, *args, **kwargs):
                super().__init__(database, *args, **kwargs)
                try:
                    name = _namespace(database)
                except Exception:
                    name = ""
                self._trace_run_attrs = connection_attributes(SYSTEM, name)

        return traced_subclass(base, self._connection_wrappers, TracedConnection)

    def _cursors_class(self) -> type:
        """The class whose `cursor()` (sqlite3.Connection.cursor, reached by the program's `super()` or
        by none) makes the cursor class asked for a traced subclass of it. A call sqlite3 would refuse
        (a factory that is not a Cursor class, None, extra arguments) goes on unchanged, to fail the same."""
        import sqlite3

        instrumentor = self

        class _TracedCursors(sqlite3.Connection):
            __slots__ = ()

            def cursor(self, /, *args, **kwargs):
                try:  # `with instrumentor.guard:` (Guard.failed says why not)
                    if not args and not kwargs:
                        args = (instrumentor.cursor_class(sqlite3.Cursor),)
                    elif len(args) == 1 and not kwargs and subclass_of(args[0], sqlite3.Cursor):
                        args = (instrumentor.cursor_class(args[0]),)
                    elif not args and len(kwargs) == 1 and subclass_of(kwargs.get("factory"), sqlite3.Cursor):
                        kwargs = {"factory": instrumentor.cursor_class(kwargs["factory"])}
                except Exception as exc:
                    instrumentor.guard.failed(exc)
                return super().cursor(*args, **kwargs)

        return _TracedCursors

    def _delegating_class(self, cursors: type) -> type:
        """Before 3.11, for a class with its own cursor(): the C execute, executemany and executescript
        call self.cursor().<same>(*args) and return that cursor. Done here the same way, in the same
        order, so that a cursor the program's cursor() built by hand (untraced) still gets its span; a
        traced cursor makes its own. Calls the C method would refuse before calling cursor() (3.10's
        argument checks) go to it unchanged."""
        import sqlite3

        wrappers = self._cursor_wrappers

        def run(conn: Any, name: str, args: tuple) -> Any:
            cursor = conn.cursor()
            method = getattr(cursor, name)
            if isinstance(cursor, sqlite3.Cursor) and not getattr(type(cursor), "_trace_run_traced", False):
                wrappers[name](method, cursor, args, {})
            else:
                method(*args)
            return cursor

        class _DelegatingCursors(cursors):
            __slots__ = ()

            def execute(self, /, *args, **kwargs):
                if kwargs or not 1 <= len(args) <= 2 or not isinstance(args[0], str):
                    return super().execute(*args, **kwargs)
                return run(self, "execute", args)

            def executemany(self, /, *args, **kwargs):
                if kwargs or len(args) != 2 or not isinstance(args[0], str):
                    return super().executemany(*args, **kwargs)
                return run(self, "executemany", args)

            def executescript(self, /, *args, **kwargs):
                if kwargs or len(args) != 1:
                    return super().executescript(*args, **kwargs)
                return run(self, "executescript", args)

        return _DelegatingCursors


def _statement_wrappers(sql: SqlTracer, attrs_of) -> dict:
    return {
        "execute": sql.wrapper(attrs_of),
        "executemany": sql.wrapper(attrs_of, batch=(1, "parameters", "seq_of_parameters")),
        "executescript": sql.wrapper(attrs_of),
    }


_own_attributes = attrgetter("_trace_run_attrs")  # a connection's, set in its __init__
def _connection_attributes(cursor: Any) -> dict:
    attrs = getattr(cursor.connection, "_trace_run_attrs", None)
    return attrs if attrs is not None else {"db.system.name": SYSTEM}
