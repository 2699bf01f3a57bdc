"""asyncpg against the real PostgreSQL: in process (every call shape, pools, transactions, errors, chatter)
and one program under trace-run."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from support import PG_DSN, clean_env, run_traced, write_script
from trace_run.core import config
from trace_run.instrumentors.asyncpg import AsyncpgInstrumentor


@pytest.fixture
def traced(instrumented):
    provider, exporter = instrumented(AsyncpgInstrumentor)
    return provider.get_tracer("test"), exporter


@pytest.fixture
def table():
    name = "tra_" + uuid.uuid4().hex[:10]

    async def run(sql):
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run("CREATE TABLE %s (id int PRIMARY KEY, name text)" % name))
    yield name
    asyncio.run(run("DROP TABLE IF EXISTS %s" % name))


def _clients(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]


def _check(spans, parent):
    for s in spans:
        assert s.parent.span_id == parent.get_span_context().span_id, s.name
        assert s.attributes["db.system.name"] == "postgresql"
        assert s.attributes["db.namespace"] == "test"
        assert s.attributes["server.address"] == "127.0.0.1" and s.attributes["server.port"] == 5432
        assert s.instrumentation_scope.name == "trace_run.instrumentors.asyncpg"


def test_connection_prepared_copy_and_transaction(table, traced):
    tracer, exporter = traced

    async def main():
        with tracer.start_as_current_span("request") as parent:
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute("INSERT INTO %s VALUES (1, 'secret-a')" % table)
            await conn.executemany("INSERT INTO %s VALUES ($1, $2)" % table, [(2, "b"), (3, "c")])
            assert await conn.fetchval("SELECT name FROM %s WHERE id = $1" % table, 2) == "b"
            assert (await conn.fetchrow("SELECT id FROM %s WHERE name = 'secret-c'" % table)) is None
            assert len(await conn.fetch("SELECT * FROM %s" % table)) == 3
            stmt = await conn.prepare("SELECT name FROM %s WHERE id = $1" % table)
            assert await stmt.fetchval(1) == "secret-a"
            assert [r["name"] for r in await stmt.fetch(3)] == ["c"]
            await conn.copy_records_to_table(table, records=[(4, "secret-d")], columns=["id", "name"])
            async with conn.transaction():
                await conn.execute("DELETE FROM %s WHERE id = 4" % table)
            await conn.close()
            return parent

    parent = asyncio.run(main())
    spans = _clients(exporter)
    assert [(s.name, s.attributes["db.query.text"]) for s in spans] == [
        ("INSERT " + table, "INSERT INTO %s VALUES (?)" % table),
        ("INSERT " + table, "INSERT INTO %s VALUES ($1, $2)" % table),
        ("SELECT " + table, "SELECT name FROM %s WHERE id = $1" % table),
        ("SELECT " + table, "SELECT id FROM %s WHERE name = ?" % table),
        ("SELECT " + table, "SELECT * FROM " + table),
        ("SELECT " + table, "SELECT name FROM %s WHERE id = $1" % table),  # prepare
        ("SELECT " + table, "SELECT name FROM %s WHERE id = $1" % table),  # stmt.fetchval
        ("SELECT " + table, "SELECT name FROM %s WHERE id = $1" % table),  # stmt.fetch
        ("COPY " + table, "COPY %s FROM STDIN" % table),
        ("BEGIN", "BEGIN;"),
        ("DELETE " + table, "DELETE FROM %s WHERE id = ?" % table),
        ("COMMIT", "COMMIT;"),
    ]
    assert spans[1].attributes["db.operation.batch.size"] == 2
    assert "db.operation.batch.size" not in spans[0].attributes
    assert not any("secret" in s.to_json() for s in spans)
    _check(spans, parent)


def test_pools_and_their_reset_is_chatter(table, traced, monkeypatch):
    tracer, exporter = traced

    async def main(row):
        with tracer.start_as_current_span("request") as parent:
            pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=1)
            assert await pool.fetchval("SELECT 42") == 42
            async with pool.acquire() as conn:
                await conn.execute("INSERT INTO %s VALUES (%d, 'x')" % (table, row))
                stmt = await conn.prepare("SELECT 1")
            with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
                stmt.fetchval()  # raised at the call, not at an await, as bare
            await pool.close()
            return parent

    parent = asyncio.run(main(1))
    spans = _clients(exporter)
    assert [s.name for s in spans] == ["SELECT", "INSERT " + table, "SELECT"]
    _check(spans, parent)

    exporter.clear()
    monkeypatch.setenv("OTEL_TRACE_RUN_CHATTER", "true")
    config.reset()
    asyncio.run(main(2))
    reset = [s for s in _clients(exporter) if s.name not in ("SELECT", "INSERT " + table)]
    assert len(_clients(exporter)) == 5
    assert len(reset) == 2 and all("pg_advisory_unlock_all" in s.attributes["db.query.text"] for s in reset)


def test_type_introspection_makes_no_span(traced):
    tracer, exporter = traced
    logged = []

    async def main():
        conn = await asyncpg.connect(PG_DSN)
        if hasattr(conn, "add_query_logger"):  # asyncpg 0.29+
            conn.add_query_logger(lambda record: logged.append(record.query))
        await conn.execute("CREATE TEMP TABLE intro (a int); INSERT INTO intro VALUES (7)")
        # A row of a table's type is a composite asyncpg does not know: it reads the catalogue first.
        row = await conn.fetchval("SELECT x FROM intro x")
        await conn.close()
        return row

    assert tuple(asyncio.run(main())) == (7,)
    assert len(logged) > 2 or asyncpg.__version__ < "0.29"  # asyncpg did introspect
    assert [s.attributes["db.query.text"] for s in _clients(exporter)] == [
        "CREATE TEMP TABLE intro (a int); INSERT INTO intro VALUES (?)", "SELECT x FROM intro x"]


def test_errors_are_unchanged_and_recorded(table, traced):
    tracer, exporter = traced

    async def main():
        conn = await asyncpg.connect(PG_DSN)
        await conn.execute("INSERT INTO %s VALUES (1, 'a')" % table)
        with pytest.raises(asyncpg.UniqueViolationError) as unique:
            await conn.execute("INSERT INTO %s VALUES (1, 'secret-dup')" % table)
        assert type(unique.value) is asyncpg.UniqueViolationError and unique.value.sqlstate == "23505"
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await conn.fetch("SELEC 1")
        stmt = await conn.prepare("SELECT 1 / $1::int")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await stmt.fetchval(0)
        await conn.close()

    asyncio.run(main())
    failed = [s for s in _clients(exporter) if s.status.status_code.name == "ERROR"]
    assert [(s.name, s.attributes["error.type"], s.attributes["db.response.status_code"]) for s in failed] == [
        ("INSERT " + table, "asyncpg.exceptions.UniqueViolationError", "23505"),
        ("postgresql", "asyncpg.exceptions.PostgresSyntaxError", "42601"),
        ("SELECT", "asyncpg.exceptions.DivisionByZeroError", "22012"),
    ]
    assert not any("secret" in s.to_json() or s.events for s in failed)


def test_under_trace_run_spans_are_children_of_the_manual_span(receiver, tmp_path):
    secret = "s3cr3t" + uuid.uuid4().hex[:12]
    app = write_script(tmp_path, """
        import asyncio, sys
        import asyncpg
        from opentelemetry import trace

        async def main():
            with trace.get_tracer("app").start_as_current_span("manual"):
                pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
                await pool.execute("CREATE TEMP TABLE t (id int, name text)")
                async with pool.acquire() as conn:
                    await conn.execute("CREATE TEMP TABLE u (name text)")
                    await conn.executemany("INSERT INTO u VALUES ($1)", [(sys.argv[2],), ("b",), ("c",)])
                    print(await conn.fetchval("SELECT count(*) FROM u WHERE name <> '%s'" % sys.argv[2]))
                    try:
                        await conn.fetch("SELECT * FROM missing_table")
                    except asyncpg.UndefinedTableError as exc:
                        print("error", exc.sqlstate)
                await pool.close()
            print("done")

        asyncio.run(main())
    """)
    proc = run_traced(["python", app, PG_DSN, secret], env=clean_env(**receiver.env()), check=True)
    assert proc.stdout.split() == ["2", "error", "42P01", "done"], proc.stdout
    assert proc.stderr == "", proc.stderr
    spans = receiver.wait_for(lambda s: any(x.name == "manual" for x in s))
    (manual,) = [s for s in spans if s.name == "manual"]
    clients = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start)
    assert [s.name for s in clients] == ["CREATE t", "CREATE u", "INSERT u", "SELECT u", "SELECT missing_table"]
    for s in clients:
        assert s.trace_id == manual.trace_id and s.parent_id == manual.span_id, s
        assert s.scope == "trace_run.instrumentors.asyncpg"
        assert s.attributes["db.namespace"] == "test" and s.attributes["server.port"] == 5432
    assert clients[2].attributes["db.operation.batch.size"] == 3
    assert clients[3].attributes["db.query.text"] == "SELECT count(*) FROM u WHERE name <> ?"
    assert clients[4].status == "ERROR" and clients[4].attributes["db.response.status_code"] == "42P01"
    assert secret.encode() not in receiver.raw_bytes()
