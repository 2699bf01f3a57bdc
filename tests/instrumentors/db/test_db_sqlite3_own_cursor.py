"""sqlite3: a Connection subclass with its own cursor() behaves under the agent exactly as bare.

Programs override cursor() with any signature (no `factory` at all, *args, a cursor built by hand);
the agent once called it with a factory (TypeError), and on 3.9/3.10 `conn.execute` failed too, since
the C method calls self.cursor(). The program's output is compared with the same program run bare;
statements are traced wherever the cursor comes from sqlite3.Connection.cursor.
CI runs this file under 3.9 and 3.13 as well.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
from support import clean_env, python, run_traced
from trace_run.instrumentors.sqlite3 import Sqlite3Instrumentor

PROGRAM = textwrap.dedent("""
    import sqlite3


    class MyCursor(sqlite3.Cursor):
        mine = True


    class NoArgs(sqlite3.Connection):
        def cursor(self):
            return super().cursor()


    class Star(sqlite3.Connection):
        def cursor(self, *args, **kwargs):
            return super().cursor(*args, **kwargs)


    class OwnCursor(sqlite3.Connection):
        def cursor(self):
            return MyCursor(self)


    class SuperMine(sqlite3.Connection):
        def cursor(self):
            return super().cursor(MyCursor)


    class Cached(sqlite3.Connection):
        made = 0
        calls = 0

        def cursor(self):
            Cached.calls += 1
            if not Cached.made:
                Cached.made += 1
                self.cur = super().cursor()
            return self.cur


    class Logged(sqlite3.Connection):
        calls = 0

        def cursor(self):
            Logged.calls += 1
            return MyCursor(self)

        def execute(self, sql, *args):
            print("logged", sql)
            return super().execute(sql, *args)


    def show(label, fn):
        try:
            got = fn()
        except Exception as exc:
            print(label, "raises", type(exc).__name__, exc)
            return
        if isinstance(got, sqlite3.Cursor):
            mine = isinstance(got, MyCursor), getattr(got, "mine", None)
            print(label, "->", type(got).__name__, *mine, got.fetchall())
        else:
            print(label, "->", repr(got))


    def calls():
        for cls in (NoArgs, Star, OwnCursor, SuperMine, Cached):
            c = sqlite3.connect(":memory:", factory=cls)
            n = cls.__name__.lower()
            show(n + " connection", lambda: (type(c).__name__, isinstance(c, cls)))
            show(n + " cursor()", lambda: c.cursor())
            show(n + " cursor().execute", lambda: c.cursor().execute("SELECT 1 AS %s_cursor" % n))
            show(n + " execute", lambda: c.execute("SELECT 2 AS %s_conn" % n))
            show(n + " executescript", lambda: c.executescript("CREATE TABLE t_%s (x)" % n))
            show(n + " executemany", lambda: c.executemany("INSERT INTO t_%s VALUES (?)" % n, [(1,), (2,)]))
            show(n + " cursor(MyCursor)", lambda: c.cursor(MyCursor))
            show(n + " cursor(factory=MyCursor)", lambda: c.cursor(factory=MyCursor))
            c.close()
        print("cached cursor() ran", Cached.calls, "made", Cached.made)
        logged = sqlite3.connect(":memory:", factory=Logged)
        show("logged execute", lambda: logged.execute("SELECT 6 AS logged"))
        up = super(Logged, logged)  # sqlite3's methods (bare), ours in between (traced), refusing these calls
        for label, call in [("execute(1)", lambda: up.execute(1)),
                            ("execute()", lambda: up.execute()),
                            ("execute(3 args)", lambda: up.execute("SELECT 1", (), 3)),
                            ("execute(x=1)", lambda: up.execute("SELECT 1", x=1)),
                            ("executemany(1 arg)", lambda: up.executemany("SELECT 1")),
                            ("executemany(bad seq)", lambda: up.executemany("SELECT 1", 5)),
                            ("executescript(bytes)", lambda: up.executescript(b"SELECT 1")),
                            ("executescript(2 args)", lambda: up.executescript("SELECT 1", 2)),
                            ("execute(bad params)", lambda: up.execute("SELECT ?", 5))]:
            show("logged " + label, call)
        logged.close()
        show("logged closed execute", lambda: logged.execute("SELECT 7 AS closed"))
        print("logged cursor() ran", Logged.calls)
        plain = sqlite3.connect(":memory:")
        show("plain cursor(None)", lambda: plain.cursor(None))
        show("plain cursor(factory=None)", lambda: plain.cursor(factory=None))
        show("plain cursor(lambda)", lambda: plain.cursor(lambda conn: MyCursor(conn)).execute("SELECT 4 AS lam"))
        show("plain cursor(MyCursor, 1)", lambda: plain.cursor(MyCursor, 1))
        show("plain cursor(fac=MyCursor)", lambda: plain.cursor(fac=MyCursor))
        show("plain cursor(factory=MyCursor)", lambda: plain.cursor(factory=MyCursor).execute("SELECT 5 AS fac"))
        show("connect factory=None", lambda: sqlite3.connect(":memory:", factory=None))
        plain.close()
""")

# (name, db.query.text, error.type) of each traced statement, in order (literals sanitized); the rest are not
# traced: a cursor built by hand (OwnCursor.cursor(), a factory that is a function) and then used by the program
# is the program's object, left as it is. The connection's execute & co. are traced on every CPython.
_DELEGATES = sys.version_info < (3, 11)  # C conn.execute & co. run self.cursor().<method> before 3.11


def expected_statements() -> list:
    out = []
    for n in ("noargs", "star", "owncursor", "supermine", "cached"):
        if n != "owncursor":
            out.append(("SELECT", "SELECT ? AS %s_cursor" % n, None))
        out += [("SELECT", "SELECT ? AS %s_conn" % n, None), ("CREATE t_" + n, "CREATE TABLE t_%s (x)" % n, None),
                ("INSERT t_" + n, "INSERT INTO t_%s VALUES (?)" % n, None)]
    out.append(("SELECT", "SELECT ? AS logged", None))
    if _DELEGATES:  # super(Logged, conn) reaches our delegating methods there; calls they run and that fail
        out += [("SELECT", "SELECT ?", "TypeError"), ("SELECT", "SELECT ?", "ValueError"),
                ("SELECT", "SELECT ?", "ValueError")]
    return out + [("SELECT", "SELECT ? AS closed", "sqlite3.ProgrammingError"), ("SELECT", "SELECT ? AS fac", None)]


def bare_output() -> list:
    code = PROGRAM + "\ncalls()\n"
    proc = run_traced([python(), "-c", code], env=clean_env(), trace_run=False, check=True)
    assert proc.stderr == "", proc.stderr
    return proc.stdout.splitlines()


def test_bare_output_is_what_the_program_expects():
    """The comparison below is meaningful: every shape works bare and the refused calls are refused."""
    out = bare_output()
    assert "noargs connection -> ('NoArgs', True)" in out
    assert "noargs cursor() -> Cursor False None []" in out
    assert "owncursor cursor() -> MyCursor True True []" in out
    assert "cached cursor() ran %d made 1" % (5 if _DELEGATES else 2) in out
    # 3.9 calls cursor() before checking any argument, 3.10 after checking counts and types, 3.11 never
    assert "logged cursor() ran %d" % {(3, 9): 10, (3, 10): 5}.get(sys.version_info[:2], 0) in out
    assert any(line.startswith("noargs cursor(MyCursor) raises TypeError") for line in out)
    assert any(line.startswith("plain cursor(None) raises TypeError") for line in out)


def test_own_cursor_in_process(instrumented, capsys):
    bare = bare_output()
    provider, exporter = instrumented(Sqlite3Instrumentor)
    scope: dict = {}
    exec(compile(PROGRAM, "sqlite_own_cursor", "exec"), scope)
    with provider.get_tracer("test").start_as_current_span("request") as request:
        scope["calls"]()
    assert capsys.readouterr().out.splitlines() == bare
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time)
    clients = [s for s in spans if s.kind.name == "CLIENT"]
    assert len(spans) == len(clients) + 1
    assert [(s.name, s.attributes["db.query.text"], s.attributes.get("error.type")) for s in clients] == \
        expected_statements()
    parent = request.get_span_context()
    for s in clients:
        assert (s.context.trace_id, s.parent.span_id) == (parent.trace_id, parent.span_id)
        assert s.status.status_code.name == ("ERROR" if "error.type" in s.attributes else "UNSET")
        assert s.attributes["db.system.name"] == "sqlite" and s.attributes["db.namespace"] == ":memory:"


@pytest.mark.timeout(90)
def test_own_cursor_under_trace_run(receiver):
    bare = bare_output()
    code = PROGRAM + textwrap.dedent("""
        from opentelemetry import trace

        with trace.get_tracer("app").start_as_current_span("manual"):
            calls()
    """)
    proc = run_traced(["python", "-c", code], env=clean_env(**receiver.env()), check=True)
    assert proc.stdout.splitlines() == bare, proc.stdout
    assert proc.stderr == "", proc.stderr
    spans = receiver.wait_for(lambda s: any(x.name == "manual" for x in s))
    (manual,) = [s for s in spans if s.name == "manual"]
    clients = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start)
    assert len(spans) == len(clients) + 1
    assert [(s.name, s.attributes["db.query.text"], s.attributes.get("error.type")) for s in clients] == \
        expected_statements()
    for s in clients:
        assert (s.trace_id, s.parent_id) == (manual.trace_id, manual.span_id)
        assert s.status == ("ERROR" if "error.type" in s.attributes else "UNSET")
        assert not s.events  # driver messages may hold row values: never recorded
