"""psycopg2 (and psycopg 3): a connection subclass with its own cursor() behaves under the agent exactly as bare.

Programs override cursor() with any signature (none, `name` only, *args, a cursor built by hand); the
agent once called it with `cursor_factory=` (TypeError) and called it once more to learn its default
cursor. The program's output is compared with the same program run bare; statements are traced
wherever the cursor comes from psycopg2's connection.cursor. psycopg 3 patches its cursor classes in
place, so its connection's cursor() is never touched: checked all the same.
"""

from __future__ import annotations

import textwrap

import pytest
from support import PG_DSN, clean_env, python, run_traced
from trace_run.instrumentors.psycopg import PsycopgInstrumentor
from trace_run.instrumentors.psycopg2 import Psycopg2Instrumentor

PROGRAM = textwrap.dedent("""
    import psycopg2
    import psycopg2.extensions as ext
    import psycopg2.extras
    import psycopg


    class MyCursor(ext.cursor):
        mine = True


    class NoArgs(ext.connection):
        def cursor(self):
            return super().cursor()


    class NameOnly(ext.connection):
        def cursor(self, name=None):
            return super().cursor(name)


    class Star(ext.connection):
        def cursor(self, *args, **kwargs):
            return super().cursor(*args, **kwargs)


    class OwnCursor(ext.connection):
        def cursor(self):
            return MyCursor(self)


    class SuperMine(ext.connection):
        def cursor(self):
            return super().cursor(cursor_factory=MyCursor)


    class Cached(ext.connection):
        calls = 0
        cur = None

        def cursor(self):
            Cached.calls += 1
            if self.cur is None:
                self.cur = super().cursor()
            return self.cur


    class Pg3NoArgs(psycopg.Connection):
        def cursor(self):
            return super().cursor()


    def show(label, fn):
        try:
            got = fn()
        except Exception as exc:
            print(label, "raises", type(exc).__name__, str(exc).strip())
            return
        if isinstance(got, (ext.cursor, psycopg.Cursor)):
            rows = got.fetchall() if got.description else None
            print(label, "->", type(got).__name__, isinstance(got, MyCursor), getattr(got, "mine", None), rows)
        else:
            print(label, "->", repr(got))


    def run(cursor, sql):
        cur = cursor()
        cur.execute(sql)
        return cur


    def calls(dsn):
        for cls in (NoArgs, NameOnly, Star, OwnCursor, SuperMine, Cached):
            c = psycopg2.connect(dsn, connection_factory=cls)
            n = cls.__name__.lower()
            show(n + " connection", lambda: (type(c).__name__, isinstance(c, cls)))
            show(n + " cursor()", lambda: c.cursor())
            show(n + " cursor().execute", lambda: run(c.cursor, "SELECT 1 AS %s_cursor" % n))
            show(n + " cursor('x')", lambda: c.cursor("x"))
            show(n + " cursor(None, MyCursor)", lambda: c.cursor(None, MyCursor))
            show(n + " cursor(cursor_factory=MyCursor)", lambda: c.cursor(cursor_factory=MyCursor))
            c.close()
        print("cached cursor() ran", Cached.calls)
        plain = psycopg2.connect(dsn)
        show("plain cursor(cursor_factory=lambda)",
             lambda: run(lambda: plain.cursor(cursor_factory=lambda *a: MyCursor(*a)), "SELECT 2 AS lam"))
        show("plain cursor(cursor_factory=int)", lambda: plain.cursor(cursor_factory=int))
        show("plain cursor(5 args)", lambda: plain.cursor(None, None, False, None, 1))
        show("plain cursor(bad=1)", lambda: plain.cursor(bad=1))
        show("plain cursor(twice)", lambda: plain.cursor(None, MyCursor, cursor_factory=MyCursor))
        plain.cursor_factory = MyCursor
        show("plain cursor_factory attribute", lambda: run(plain.cursor, "SELECT 3 AS attr"))
        plain.close()
        d = psycopg2.connect(dsn, connection_factory=psycopg2.extras.DictConnection)
        show("dict", lambda: run(d.cursor, "SELECT 4 AS dict"))
        d.close()
        with Pg3NoArgs.connect(dsn, autocommit=True) as p3:
            show("pg3 connection", lambda: (type(p3).__name__, isinstance(p3, Pg3NoArgs)))
            show("pg3 cursor().execute", lambda: run(p3.cursor, "SELECT 5 AS pg3_cursor"))
            show("pg3 execute", lambda: p3.execute("SELECT 6 AS pg3_conn"))
""")

# db.query.text of each traced statement, in order; a cursor built by hand (OwnCursor, a factory that is
# a function) is the program's own object, left untraced.
EXPECTED = ["SELECT ? AS noargs_cursor", "SELECT ? AS nameonly_cursor", "SELECT ? AS star_cursor",
            "SELECT ? AS supermine_cursor", "SELECT ? AS cached_cursor", "SELECT ? AS attr", "SELECT ? AS dict",
            "SELECT ? AS pg3_cursor", "SELECT ? AS pg3_conn"]


def bare_output() -> list:
    proc = run_traced([python(), "-c", PROGRAM + "\ncalls(%r)\n" % PG_DSN], env=clean_env(), trace_run=False,
                      check=True)
    assert proc.stderr == "", proc.stderr
    return proc.stdout.splitlines()


def test_bare_output_is_what_the_program_expects():
    """The comparison below is meaningful: every shape works bare and the refused calls are refused."""
    out = bare_output()
    assert "noargs connection -> ('NoArgs', True)" in out
    assert "noargs cursor() -> cursor False None None" in out
    assert "owncursor cursor() -> MyCursor True True None" in out
    assert "nameonly cursor('x') -> cursor False None None" in out
    assert "cached cursor() ran 2" in out
    assert "pg3 cursor().execute -> Cursor False None [(5,)]" in out
    assert any(line.startswith("noargs cursor('x') raises TypeError") for line in out)
    assert any(line.startswith("plain cursor(bad=1) raises TypeError") for line in out)


def test_own_cursor_in_process(instrumented, capsys):
    bare = bare_output()
    instrumented(Psycopg2Instrumentor)
    provider, exporter = instrumented(PsycopgInstrumentor)
    scope: dict = {}
    exec(compile(PROGRAM, "psycopg2_own_cursor", "exec"), scope)
    with provider.get_tracer("test").start_as_current_span("request") as request:
        scope["calls"](PG_DSN)
    assert capsys.readouterr().out.splitlines() == bare
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time)
    clients = [s for s in spans if s.kind.name == "CLIENT"]
    assert len(spans) == len(clients) + 1
    assert [s.attributes["db.query.text"] for s in clients] == EXPECTED
    parent = request.get_span_context()
    for s in clients:
        assert (s.context.trace_id, s.parent.span_id) == (parent.trace_id, parent.span_id)
        assert s.name == "SELECT" and s.status.status_code.name == "UNSET"
        assert s.attributes["db.system.name"] == "postgresql"


@pytest.mark.timeout(90)
def test_own_cursor_under_trace_run(receiver):
    bare = bare_output()
    code = PROGRAM + textwrap.dedent("""
        from opentelemetry import trace

        with trace.get_tracer("app").start_as_current_span("manual"):
            calls(%r)
    """ % PG_DSN)
    proc = run_traced(["python", "-c", code], env=clean_env(**receiver.env()), check=True)
    assert proc.stdout.splitlines() == bare, proc.stdout
    assert proc.stderr == "", proc.stderr
    spans = receiver.wait_for(lambda s: any(x.name == "manual" for x in s))
    (manual,) = [s for s in spans if s.name == "manual"]
    clients = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start)
    assert len(spans) == len(clients) + 1
    assert [s.attributes["db.query.text"] for s in clients] == EXPECTED
    for s in clients:
        assert (s.trace_id, s.parent_id) == (manual.trace_id, manual.span_id)
        assert s.name == "SELECT" and s.status == "UNSET"
