"""psycopg2 in process against the real PostgreSQL: factories, extras, COPY, errors, uninstrument."""

from __future__ import annotations

import io
import uuid

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import pytest
from psycopg2 import sql
from support import PG_DSN
from trace_run.instrumentors.psycopg2 import Psycopg2Instrumentor


@pytest.fixture
def table():
    name = "trp2_" + uuid.uuid4().hex[:10]
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    conn.cursor().execute("CREATE TABLE %s (id int PRIMARY KEY, name text)" % name)
    yield name
    conn.cursor().execute("DROP TABLE IF EXISTS %s" % name)
    conn.close()


@pytest.fixture
def traced(instrumented):
    provider, exporter = instrumented(Psycopg2Instrumentor)
    return provider.get_tracer("test"), exporter


def _spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]


def test_cursor_call_shapes(table, traced):
    tracer, exporter = traced
    with tracer.start_as_current_span("request") as parent:
        conn = psycopg2.connect(PG_DSN)
        assert isinstance(conn, psycopg2.extensions.connection)
        psycopg2.extensions.register_type(psycopg2.extensions.UNICODE, conn)  # C type check passes
        cur = conn.cursor()
        assert isinstance(cur, psycopg2.extensions.cursor)
        cur.execute("INSERT INTO %s VALUES (1, 'secret')" % table)
        cur.executemany("INSERT INTO %s VALUES (%%s, %%s)" % table, [(2, "b"), (3, "c")])
        psycopg2.extras.execute_values(cur, "INSERT INTO %s VALUES %%s" % table, [(4, "d"), (5, "e")])
        cur.execute(sql.SQL("SELECT name FROM {} WHERE id = %s").format(sql.Identifier(table)), (2,))
        assert cur.fetchone() == ("b",)
        cur.copy_expert("COPY %s TO STDOUT" % table, io.StringIO())
        cur.copy_from(io.StringIO("6\tf\n"), table)
        cur.copy_to(io.StringIO(), table)
        cur.callproc("pg_backend_pid")
        conn.commit()
        conn.close()
    spans = _spans(exporter)
    assert [(s.name, s.attributes["db.query.text"]) for s in spans] == [
        ("INSERT " + table, "INSERT INTO %s VALUES (?)" % table),
        ("INSERT " + table, "INSERT INTO %s VALUES (%%s, %%s)" % table),
        ("INSERT " + table, "INSERT INTO %s VALUES (?)" % table),
        ('SELECT "%s"' % table, 'SELECT name FROM "%s" WHERE id = %%s' % table),
        ("COPY " + table, "COPY %s TO STDOUT" % table),
        ("COPY " + table, "COPY %s FROM STDIN" % table),
        ("COPY " + table, "COPY %s TO STDOUT" % table),
        ("SELECT pg_backend_pid", "SELECT * FROM pg_backend_pid()"),
    ]
    assert spans[1].attributes["db.operation.batch.size"] == 2
    for s in spans:
        assert s.parent.span_id == parent.get_span_context().span_id
        assert s.attributes["db.system.name"] == "postgresql" and s.attributes["db.namespace"] == "test"
        assert s.attributes["server.address"] == "127.0.0.1" and s.attributes["server.port"] == 5432


def test_connection_and_cursor_factories(traced):
    tracer, exporter = traced

    class MyCursor(psycopg2.extensions.cursor):
        mine = True

    class MyConnection(psycopg2.extensions.connection):
        pass

    conn = psycopg2.connect(PG_DSN, connection_factory=MyConnection, cursor_factory=MyCursor)
    assert isinstance(conn, MyConnection) and type(conn).__name__ == "MyConnection"
    cur = conn.cursor()
    assert isinstance(cur, MyCursor) and cur.mine
    cur.execute("SELECT 1")
    dict_conn = psycopg2.connect(PG_DSN, connection_factory=psycopg2.extras.DictConnection)
    dcur = dict_conn.cursor()
    assert isinstance(dcur, psycopg2.extras.DictCursor)
    dcur.execute("SELECT 2 AS n")
    assert dcur.fetchone()["n"] == 2
    rcur = dict_conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
    rcur.execute("SELECT 3 AS n")
    assert rcur.fetchone() == {"n": 3}
    with pytest.raises(TypeError, match="given by name"):  # as bare: DictConnection.cursor adds cursor_factory=
        dict_conn.cursor("named_cur", psycopg2.extras.NamedTupleCursor)
    ncur = conn.cursor("named_cur", psycopg2.extras.NamedTupleCursor)  # positional factory
    ncur.execute("SELECT 4 AS n")
    assert ncur.fetchone().n == 4 and isinstance(ncur, psycopg2.extras.NamedTupleCursor)
    dict_conn.rollback()
    conn.rollback()
    plain = psycopg2.connect(PG_DSN, connection_factory=lambda dsn: psycopg2.extensions.connection(dsn))
    plain.cursor().execute("SELECT 5")
    pool = psycopg2.pool.SimpleConnectionPool(1, 1, PG_DSN)
    pooled = pool.getconn()
    pooled.cursor().execute("SELECT 6")
    pool.putconn(pooled)
    pool.closeall()
    for c in (conn, dict_conn, plain):
        c.close()
    assert [s.attributes["db.query.text"] for s in _spans(exporter)] == ["SELECT ?"] + [
        "SELECT ? AS n"] * 3 + ["SELECT ?"] * 2


def test_errors_are_unchanged_and_recorded(table, traced):
    tracer, exporter = traced
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("INSERT INTO %s VALUES (1, 'a')" % table)
    with pytest.raises(psycopg2.errors.UniqueViolation) as unique:
        cur.execute("INSERT INTO %s VALUES (1, 'secret-dup')" % table)
    assert type(unique.value) is psycopg2.errors.UniqueViolation and unique.value.pgcode == "23505"
    with pytest.raises(psycopg2.errors.SyntaxError):
        cur.execute("SELEC 1")
    conn.close()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    failed = [s for s in _spans(exporter) if s.status.status_code.name == "ERROR"]
    assert [(s.name, s.attributes["error.type"], s.attributes["db.response.status_code"]) for s in failed] == [
        ("INSERT " + table, "psycopg2.errors.UniqueViolation", "23505"),
        ("postgresql", "psycopg2.errors.SyntaxError", "42601"),
    ]


def test_a_connection_made_while_traced_goes_quiet_after_uninstrument(memory):
    provider, exporter = memory
    instrumentor = Psycopg2Instrumentor()
    instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    traced_conn = psycopg2.connect(PG_DSN)
    instrumentor.uninstrument()
    conn = psycopg2.connect(PG_DSN)
    assert type(conn) is psycopg2.extensions.connection
    traced_conn.cursor().execute("SELECT 1")
    assert exporter.get_finished_spans() == ()
    conn.close()
    traced_conn.close()


def test_sqlcommenter_reaches_postgres(traced, monkeypatch):
    from trace_run.core import config

    tracer, exporter = traced
    monkeypatch.setenv("OTEL_TRACE_RUN_SQLCOMMENTER", "true")
    config.reset()
    try:
        conn = psycopg2.connect(PG_DSN)
        conn.autocommit = True  # a new pg_stat_activity snapshot per statement
        cur = conn.cursor()
        query = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        cur.execute(query + ";")
        plain = cur.fetchone()[0]
        cur.execute(sql.SQL(query + " AND {} = %s").format(sql.Literal(1)), (1,))
        composed = cur.fetchone()[0]
        conn.close()
    finally:
        config.reset()
    first, second = _spans(exporter)
    comment = "/*traceparent='00-%032x-%016x-01'*/"
    assert plain == query + " " + comment % (first.context.trace_id, first.context.span_id) + ";"
    assert composed == query + " AND 1 = 1 " + comment % (second.context.trace_id, second.context.span_id)
    assert first.attributes["db.query.text"] == query + ";"


def test_a_connection_factory_handing_back_something_else_gets_it_back_untouched(traced, monkeypatch):
    """psycopg2's own test_module puts a stand-in for `_connect` that records its arguments and returns
    None; a factory that is not a connection class goes to it as given, and what comes back is the
    program's, untouched (no `trace-run:` line about a `cursor_factory` it does not have)."""
    seen = []

    def stand_in(dsn, connection_factory=None, **kwargs):
        seen.append(connection_factory)
        return None

    def factory(*args, **kwargs):
        return psycopg2.extensions.connection(*args, **kwargs)

    monkeypatch.setattr(psycopg2, "_connect", stand_in)
    assert psycopg2.connect(PG_DSN, connection_factory=factory) is None
    assert seen == [factory]
