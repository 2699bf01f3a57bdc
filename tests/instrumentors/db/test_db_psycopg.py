"""psycopg 3 in process against the real PostgreSQL: every call shape, errors, toggles, uninstrument."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import psycopg_pool
import pytest
from psycopg import sql
from support import PG_DSN
from trace_run.core import config
from trace_run.instrumentors.psycopg import PsycopgInstrumentor


@pytest.fixture
def traced(instrumented):
    provider, exporter = instrumented(PsycopgInstrumentor)
    return provider.get_tracer("test"), exporter


@pytest.fixture
def table():
    name = "trp_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("CREATE TABLE %s (id int PRIMARY KEY, name text)" % name)
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS %s" % name)


def _spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]


def _check_parent(spans, parent):
    for s in spans:
        assert s.parent.span_id == parent.get_span_context().span_id
        assert s.attributes["db.system.name"] == "postgresql"
        assert s.attributes["db.namespace"] == "test"
        assert s.attributes["server.address"] == "127.0.0.1" and s.attributes["server.port"] == 5432


def test_sync_call_shapes(table, traced):
    tracer, exporter = traced
    with tracer.start_as_current_span("request") as parent, psycopg.connect(PG_DSN) as conn:
        conn.execute("INSERT INTO %s VALUES (1, 'secret-a')" % table)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO %s VALUES (%%s, %%s)" % table, [(2, "b"), (3, "c")])
            cur.execute(sql.SQL("SELECT name FROM {} WHERE id = %s").format(sql.Identifier(table)), (2,))
            assert cur.fetchone() == ("b",)
            with cur.copy("COPY %s (id, name) FROM STDIN" % table) as copy:
                copy.write_row((4, "d"))
        with psycopg.ClientCursor(conn) as ccur:
            ccur.execute("SELECT id FROM %s WHERE name = %%s" % table, ("d",))
        with psycopg.RawCursor(conn) as rcur:
            rcur.execute("SELECT id FROM %s WHERE id = $1" % table, (4,))
        with conn.cursor(name="srv") as named:
            named.execute("SELECT id FROM %s ORDER BY id" % table)
            assert [r[0] for r in named.fetchall()] == [1, 2, 3, 4]
        with conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT 2")
        conn.commit()
    spans = _spans(exporter)
    assert [(s.name, s.attributes["db.query.text"]) for s in spans] == [
        ("INSERT " + table, "INSERT INTO %s VALUES (?)" % table),
        ("INSERT " + table, "INSERT INTO %s VALUES (%%s, %%s)" % table),
        ('SELECT "%s"' % table, 'SELECT name FROM "%s" WHERE id = %%s' % table),
        ("COPY " + table, "COPY %s (id, name) FROM STDIN" % table),
        ("SELECT " + table, "SELECT id FROM %s WHERE name = %%s" % table),
        ("SELECT " + table, "SELECT id FROM %s WHERE id = $1" % table),
        ("SELECT " + table, "SELECT id FROM %s ORDER BY id" % table),
        ("SELECT", "SELECT ?"),
        ("SELECT", "SELECT ?"),
    ]
    assert spans[1].attributes["db.operation.batch.size"] == 2
    _check_parent(spans, parent)


def test_async_connections_cursors_copy_and_pools(table, traced):
    tracer, exporter = traced

    async def main():
        with tracer.start_as_current_span("request") as parent:
            async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
                await conn.execute("INSERT INTO %s VALUES (1, 'x')" % table)
                async with conn.cursor() as cur:
                    await cur.executemany("INSERT INTO %s VALUES (%%s, %%s)" % table, [(2, "b"), (3, "c")])
                    async with cur.copy("COPY %s TO STDOUT" % table) as copy:
                        rows = [row async for row in copy]
                    assert len(rows) == 3
                async with conn.transaction(), conn.cursor(name="asrv") as named:
                    await named.execute("SELECT id FROM %s" % table)
                    assert len(await named.fetchall()) == 3
            async with psycopg_pool.AsyncConnectionPool(PG_DSN, min_size=1, max_size=1, open=False) as pool:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 42")
            return parent

    parent = asyncio.run(main())
    with tracer.start_as_current_span("request") as parent2:
        with psycopg_pool.ConnectionPool(PG_DSN, min_size=1, max_size=1) as pool, pool.connection() as conn:
            conn.execute("SELECT 43")
    spans = _spans(exporter)
    assert [s.name for s in spans] == ["INSERT " + table, "INSERT " + table, "COPY " + table,
                                       "SELECT " + table, "SELECT", "SELECT"]
    _check_parent(spans[:5], parent)
    _check_parent(spans[5:], parent2)


def test_errors_are_unchanged_and_recorded(table, traced):
    tracer, exporter = traced
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("INSERT INTO %s VALUES (1, 'a')" % table)
        with pytest.raises(psycopg.errors.UniqueViolation) as unique:
            conn.execute("INSERT INTO %s VALUES (1, 'secret-dup')" % table)
        assert type(unique.value) is psycopg.errors.UniqueViolation and unique.value.sqlstate == "23505"
        with pytest.raises(psycopg.errors.SyntaxError) as syntax:
            conn.cursor().execute("SELEC 1")
        assert syntax.value.sqlstate == "42601"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    failed = [s for s in _spans(exporter) if s.status.status_code.name == "ERROR"]
    assert [(s.name, s.attributes["error.type"], s.attributes["db.response.status_code"]) for s in failed] == [
        ("INSERT " + table, "psycopg.errors.UniqueViolation", "23505"),
        ("postgresql", "psycopg.errors.SyntaxError", "42601"),
    ]
    assert not any("secret" in str(s.to_json()) for s in failed)


def test_sqlcommenter_reaches_postgres(traced, monkeypatch):
    tracer, exporter = traced
    monkeypatch.setenv("OTEL_TRACE_RUN_SQLCOMMENTER", "true")
    config.reset()
    query = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:  # a new stats snapshot per statement
        seen = conn.execute(query).fetchone()[0]
        composed = conn.execute(sql.SQL(query + " AND {} = %s").format(sql.Literal(1)), (1,)).fetchone()[0]
    first, second = _spans(exporter)
    assert seen == query + " /*traceparent='00-%032x-%016x-01'*/" % (first.context.trace_id, first.context.span_id)
    assert composed.endswith("/*traceparent='00-%032x-%016x-01'*/" % (second.context.trace_id,
                                                                         second.context.span_id))
    assert first.attributes["db.query.text"] == query


def test_stream_spans_last_until_the_rows_run_out(table, traced):
    tracer, exporter = traced
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        rows = list(conn.cursor().stream("SELECT generate_series(1, 5)"))
        assert len(rows) == 5
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(conn.cursor().stream("SELECT * FROM %s_missing" % table))

    async def main():
        async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
            return [row async for row in conn.cursor().stream("SELECT 'x' FROM %s" % table)]

    assert asyncio.run(main()) == []
    spans = _spans(exporter)
    assert [(s.name, s.attributes["db.query.text"], s.status.status_code.name) for s in spans] == [
        ("SELECT", "SELECT generate_series(?)", "UNSET"),
        ("SELECT %s_missing" % table, "SELECT * FROM %s_missing" % table, "ERROR"),
        ("SELECT " + table, "SELECT ? FROM " + table, "UNSET"),
    ]
    assert spans[1].attributes["db.response.status_code"] == "42P01"


def test_stream_closed_early_leaves_the_connection_as_bare_and_the_span_unset(traced):
    """Closing a stream before its last row (`break` inside `aclosing`/`closing`) runs psycopg's own
    clean-up, as bare: the transaction is no longer ACTIVE (psycopg's own suite,
    test_stream_error_python_consumed, caught the async case). Stopping early is no error."""
    from contextlib import aclosing, closing

    tracer, exporter = traced
    with psycopg.connect(PG_DSN) as conn:
        with closing(conn.cursor().stream("SELECT generate_series(1, 10000)")) as rows:
            for _ in rows:
                break
        sync_status = conn.info.transaction_status.name

    async def main():
        async with await psycopg.AsyncConnection.connect(PG_DSN) as conn:
            async with aclosing(conn.cursor().stream("SELECT generate_series(1, 10000)")) as rows:
                async for _ in rows:
                    break
            return conn.info.transaction_status.name

    # psycopg's clean-up cancels the rest of the query: INTRANS, or INERROR when the cancel lands
    # before the server finished (bare too, now and again); ACTIVE means the clean-up never ran
    assert {sync_status, asyncio.run(main())} <= {"INTRANS", "INERROR"}
    spans = _spans(exporter)
    assert [(s.name, s.status.status_code.name) for s in spans] == [("SELECT", "UNSET"), ("SELECT", "UNSET")]
    assert all("error.type" not in s.attributes for s in spans)


def test_kept_statement_spans_follow_the_settings_the_connection_and_the_statement(traced, monkeypatch):
    """A statement's span name and sanitized text are kept by query for the settings read now: a setting changed
    and config.reset(), another connection, another statement each get their own, and every span has the
    attributes, in the order, it had when nothing was kept."""
    tracer, exporter = traced
    query = "SELECT 1 AS one WHERE 'secret' <> %s"
    seen = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    with psycopg.connect(PG_DSN, autocommit=True) as a, \
            psycopg.connect(PG_DSN.replace("127.0.0.1", "localhost"), autocommit=True) as b:
        a.execute(query, ("x",))
        a.execute(query, ("x",))
        b.execute(query, ("x",))
        a.execute("SELECT 2")
        monkeypatch.setenv("OTEL_TRACE_RUN_DB_SANITIZE", "false")
        config.reset()
        a.execute(query, ("x",))
        monkeypatch.delenv("OTEL_TRACE_RUN_DB_SANITIZE")
        monkeypatch.setenv("OTEL_TRACE_RUN_MAX_VALUE_LENGTH", "16")
        config.reset()
        a.execute(query, ("x",))
        a.execute(query, ("x",))
        monkeypatch.delenv("OTEL_TRACE_RUN_MAX_VALUE_LENGTH")
        config.reset()
        a.execute(query, ("x",))
        assert a.execute(seen).fetchone()[0] == seen
        monkeypatch.setenv("OTEL_TRACE_RUN_SQLCOMMENTER", "true")
        config.reset()
        assert a.execute(seen).fetchone()[0].startswith(seen + " /*traceparent='00-")
    spans = _spans(exporter)
    assert [(s.name, s.attributes["db.query.text"], s.attributes["server.address"],
             s.attributes.get("trace_run.truncated")) for s in spans] == [
        ("SELECT", "SELECT ? AS one WHERE ? <> %s", "127.0.0.1", None),
        ("SELECT", "SELECT ? AS one WHERE ? <> %s", "127.0.0.1", None),
        ("SELECT", "SELECT ? AS one WHERE ? <> %s", "localhost", None),
        ("SELECT", "SELECT ?", "127.0.0.1", None),
        ("SELECT", "SELECT 1 AS one WHERE 'secret' <> %s", "127.0.0.1", None),
        ("SELECT", "SELECT ? AS o...", "127.0.0.1", ("db.query.text",)),
        ("SELECT", "SELECT ? AS o...", "127.0.0.1", ("db.query.text",)),
        ("SELECT", "SELECT ? AS one WHERE ? <> %s", "127.0.0.1", None),
        ("SELECT pg_stat_activity", seen, "127.0.0.1", None),
        ("SELECT pg_stat_activity", seen, "127.0.0.1", None),
    ]
    keys = ("db.system.name", "db.namespace", "server.address", "server.port", "db.query.text", "db.operation.name")
    assert {tuple(s.attributes) for s in spans if "trace_run.truncated" not in s.attributes} == {
        keys, keys + ("db.collection.name",)}
