"""sqlite3: one CLIENT span per statement on every CPython, connection-level and cursor-level calls alike.

Before 3.11 the C `Connection.execute` (and `executemany`, `executescript`) gets a cursor from
`self.cursor()` and calls that cursor's method: under the agent both are traced, which made two spans.
CI runs this file under 3.9 and 3.13 as well.
"""

from __future__ import annotations

import textwrap

import pytest
from support import clean_env, run_traced
from trace_run.instrumentors.sqlite3 import Sqlite3Instrumentor

# Every call shape, then the same shapes failing; run in process and in a program under trace-run.
PROGRAM = textwrap.dedent("""
    import sqlite3


    class MyCursor(sqlite3.Cursor):
        mine = True


    class MyConnection(sqlite3.Connection):
        def cursor(self, factory=MyCursor):
            return super().cursor(factory)


    def show(label, fn):
        try:
            fn()
        except sqlite3.Error as exc:
            print(label, type(exc).__name__)


    def calls():
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", [(1, "a"), (2, "b")])
        conn.executescript("UPDATE items SET name = 'c' WHERE id = 1; SELECT 1;")
        cur = conn.cursor()
        cur.execute("SELECT name FROM items WHERE id = 2")
        print("rows", cur.fetchall())
        cur.executemany("UPDATE items SET name = ? WHERE id = ?", [("x", 1), ("y", 2)])
        cur.executescript("DELETE FROM items WHERE id = 2")
        show("conn-execute", lambda: conn.execute("SELEC 1"))
        show("conn-executemany", lambda: conn.executemany("INSERT INTO items VALUES (?, ?)", [(1, "a"), (3, "b")]))
        show("conn-executescript", lambda: conn.executescript("SELEC 2;"))
        show("cursor-execute", lambda: conn.cursor().execute("SELEC 3"))
        mine = sqlite3.connect(":memory:", factory=MyConnection)
        print("mine", mine.execute("SELECT 4").fetchone(), mine.cursor().mine)
        mine.cursor().execute("SELECT 5")
        conn.close()
        mine.close()
""")

# (name, batch size, error type) per statement, in order.
EXPECTED = [
    ("CREATE items", None, None),
    ("INSERT items", 2, None),
    ("sqlite", None, None),
    ("SELECT items", None, None),
    ("UPDATE items", 2, None),
    ("DELETE items", None, None),
    ("sqlite", None, "sqlite3.OperationalError"),
    ("INSERT items", 2, "sqlite3.IntegrityError"),
    ("sqlite", None, "sqlite3.OperationalError"),
    ("sqlite", None, "sqlite3.OperationalError"),
    ("SELECT", None, None),
    ("SELECT", None, None),
]
OUTPUT = ["rows [('b',)]", "conn-execute OperationalError", "conn-executemany IntegrityError",
          "conn-executescript OperationalError", "cursor-execute OperationalError", "mine (4,) True"]


def _check(spans, status_of):
    """Exactly the EXPECTED spans, in order; `status_of(span)`: its status code's name."""
    assert [(s.name, s.attributes.get("db.operation.batch.size"), s.attributes.get("error.type"))
            for s in spans] == EXPECTED
    for s, (_, _, error) in zip(spans, EXPECTED):
        assert s.attributes["db.system.name"] == "sqlite" and s.attributes["db.namespace"] == ":memory:"
        assert status_of(s) == ("ERROR" if error else "UNSET"), s
        assert not s.events  # driver messages may hold row values: never recorded


def test_one_span_per_statement_in_process(instrumented, capsys):
    provider, exporter = instrumented(Sqlite3Instrumentor)
    scope: dict = {}
    exec(compile(PROGRAM, "sqlite_shapes", "exec"), scope)
    with provider.get_tracer("test").start_as_current_span("request") as request:
        scope["calls"]()
    assert capsys.readouterr().out.splitlines() == OUTPUT
    spans = sorted((s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"), key=lambda s: s.start_time)
    parent = request.get_span_context()
    _check(spans, lambda s: s.status.status_code.name)
    assert {(s.context.trace_id, s.parent.span_id) for s in spans} == {(parent.trace_id, parent.span_id)}


@pytest.mark.timeout(60)
def test_one_span_per_statement_under_trace_run(receiver):
    code = PROGRAM + textwrap.dedent("""
        from opentelemetry import trace

        with trace.get_tracer("app").start_as_current_span("manual"):
            calls()
        print("done")
    """)
    proc = run_traced(["python", "-c", code], env=clean_env(**receiver.env()), check=True)
    assert proc.stdout.splitlines() == OUTPUT + ["done"], proc.stdout
    assert proc.stderr == "", proc.stderr
    spans = receiver.wait_for(lambda s: any(x.name == "manual" for x in s))
    (manual,) = [s for s in spans if s.name == "manual"]
    clients = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start)
    assert len(spans) == len(clients) + 1
    _check(clients, lambda s: s.status)
    assert {(s.trace_id, s.parent_id) for s in clients} == {(manual.trace_id, manual.span_id)}

