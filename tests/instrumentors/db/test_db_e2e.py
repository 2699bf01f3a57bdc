"""Programs run under trace-run: every SQL statement and Redis command is a CLIENT span under the
manual span, with no literal or value in it; failing calls raise exactly what they raise untraced."""

from __future__ import annotations

import os
import socket
import sys
import uuid

import pytest
from support import HERE, PG_DSN, REDIS_URL, clean_env, run_traced

APP = os.path.join(HERE, "apps", "db_app.py")
ERRORS = os.path.join(HERE, "apps", "db_errors.py")


def _run(receiver, mode, **env):
    suffix = uuid.uuid4().hex[:10]
    secret = "s3cr3t" + uuid.uuid4().hex[:12]
    proc = run_traced(["python", APP, mode, suffix, PG_DSN, REDIS_URL],
                      env=clean_env(DB_APP_SECRET=secret, **receiver.env(**env)), check=True)
    assert proc.stdout.strip().endswith("done"), proc.stdout
    assert proc.stderr == "", proc.stderr
    spans = receiver.wait_for(lambda s: any(x.name == "manual" for x in s))
    (manual,) = [s for s in spans if s.name == "manual"]
    clients = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start)
    for s in clients:
        assert s.trace_id == manual.trace_id and s.parent_id == manual.span_id, s
    assert secret.encode() not in receiver.raw_bytes()
    return proc, suffix, clients


def _names(clients):
    return [s.name for s in clients]


def test_psycopg_sync_calls(receiver):
    proc, suffix, clients = _run(receiver, "psycopg")
    table = "tr_" + suffix
    assert "rows 3" in proc.stdout and "named 4" in proc.stdout
    assert _names(clients) == ["CREATE " + table, "INSERT " + table, "INSERT " + table, 'SELECT "%s"' % table,
                               "COPY " + table, "SELECT " + table, "DROP " + table]
    insert, many = clients[1], clients[2]
    assert insert.attributes["db.query.text"] == "INSERT INTO %s VALUES (?)" % table
    assert many.attributes["db.query.text"] == "INSERT INTO %s VALUES (%%s, %%s)" % table
    assert many.attributes["db.operation.batch.size"] == 2
    for s in clients:
        assert s.attributes["db.system.name"] == "postgresql"
        assert s.attributes["db.namespace"] == "test"
        assert s.attributes["server.address"] == "127.0.0.1" and s.attributes["server.port"] == 5432
        assert s.status == "UNSET" and s.scope == "trace_run.instrumentors.psycopg"


def test_psycopg_async_and_pools(receiver):
    proc, _, clients = _run(receiver, "psycopg_async")
    assert "async (1,)" in proc.stdout
    texts = [s.attributes["db.query.text"] for s in clients]
    assert texts == ["SELECT ? AS a", "SELECT ? WHERE ? <> %s", "SELECT ?", "SELECT ?"]
    assert _names(clients) == ["SELECT"] * 4


def test_psycopg2_calls(receiver):
    proc, suffix, clients = _run(receiver, "psycopg2")
    table = "tr_" + suffix
    assert "dict True DictCursor" in proc.stdout and "count 4" in proc.stdout
    assert _names(clients) == ["CREATE " + table, "INSERT " + table, "INSERT " + table, "COPY " + table,
                               "SELECT " + table, "SELECT " + table, "DROP " + table]
    assert clients[1].attributes["db.query.text"] == "INSERT INTO %s VALUES (?)" % table
    assert clients[4].attributes["db.query.text"] == "SELECT name FROM %s WHERE name = ?" % table
    assert all(s.scope == "trace_run.instrumentors.psycopg2" for s in clients)


def test_sqlite3_calls(receiver):
    proc, _, clients = _run(receiver, "sqlite3")
    assert "isinstance True" in proc.stdout and "rows 2" in proc.stdout
    assert _names(clients) == ["CREATE items", "INSERT items", "SELECT items", "sqlite"]
    assert clients[1].attributes["db.operation.batch.size"] == 2
    assert clients[3].attributes["db.query.text"] == "INSERT INTO items VALUES (?); DELETE FROM items WHERE id = ?;"
    assert all(s.attributes["db.system.name"] == "sqlite" and s.attributes["db.namespace"] == ":memory:"
               for s in clients)


def test_redis_commands_and_pipelines(receiver):
    proc, _, clients = _run(receiver, "redis")
    assert "get True" in proc.stdout and "pipe 3" in proc.stdout
    assert _names(clients) == ["SET", "GET", "SET INCRBY GET", "GET", "DEL"]
    assert [s.attributes["db.query.text"] for s in clients] == [
        "SET ? ?", "GET ?", "MULTI\nSET ? ?\nINCRBY ? ?\nGET ?\nEXEC", "GET ?\nGET ?", "DEL ? ? ?"]
    assert clients[2].attributes["db.operation.batch.size"] == 3
    for s in clients:
        assert s.attributes["db.system.name"] == "redis" and s.attributes["db.namespace"] == "0"
        assert s.attributes["server.address"] == "127.0.0.1" and s.attributes["server.port"] == 6379


def test_redis_asyncio(receiver):
    proc, _, clients = _run(receiver, "redis_async")
    assert _names(clients) == ["SET", "GET DEL"]
    assert clients[1].attributes["db.query.text"] == "MULTI\nGET ?\nDEL ?\nEXEC"


def test_sqlcommenter_puts_traceparent_in_postgres_statements(receiver):
    # The statement as PostgreSQL saw it: pg_stat_activity shows our own query.
    suffix = uuid.uuid4().hex[:10]
    code = ("import psycopg\nfrom opentelemetry import trace\n"
            "with trace.get_tracer('t').start_as_current_span('manual'):\n"
            "    with psycopg.connect(%r) as c:\n"
            "        print(c.execute(\"SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() "
            "AND 'm%s' = 'm%s'\").fetchone()[0])\n") % (PG_DSN, suffix, suffix)
    proc = run_traced(["python", "-c", code], check=True,
                      env=clean_env(**receiver.env(OTEL_TRACE_RUN_SQLCOMMENTER="true")))
    spans = receiver.wait_for(lambda s: len(s) >= 2)
    (client,) = [s for s in spans if s.kind == "CLIENT"]
    assert proc.stdout.strip().endswith("/*traceparent='00-%s-%s-01'*/" % (client.trace_id, client.span_id))
    assert "traceparent" not in client.attributes["db.query.text"]


def test_sanitize_off_shows_raw_text(receiver):
    code = ("import sqlite3\nsqlite3.connect(':memory:').execute(\"SELECT 'visible' -- note\")\n")
    run_traced(["python", "-c", code], check=True,
               env=clean_env(**receiver.env(OTEL_TRACE_RUN_DB_SANITIZE="false")))
    (span,) = receiver.wait_for(lambda s: len(s) >= 1)
    assert span.attributes["db.query.text"] == "SELECT 'visible' -- note"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_failures_reach_the_program_unchanged(receiver):
    suffix = uuid.uuid4().hex[:10]
    args = ["python", ERRORS, suffix, PG_DSN, REDIS_URL, str(_dead_port())]
    bare = run_traced(args, env=clean_env(), trace_run=False, check=True)
    traced = run_traced(args, env=clean_env(**receiver.env()), check=True)
    assert traced.stdout == bare.stdout
    assert traced.stderr == ""
    assert "pg-unique psycopg.errors.UniqueViolation 23505" in bare.stdout
    spans = receiver.wait_for(lambda s: any(x.name == "manual" for x in s))
    errors = {(s.name, s.attributes.get("error.type"), s.attributes.get("db.response.status_code"))
              for s in spans if s.status == "ERROR"}
    table = "tre_" + suffix
    assert errors == {
        ("postgresql", "psycopg.errors.SyntaxError", "42601"),
        ("INSERT " + table, "psycopg.errors.UniqueViolation", "23505"),
        ("postgresql", "psycopg2.errors.SyntaxError", "42601"),
        ("INSERT " + table, "psycopg2.errors.UniqueViolation", "23505"),
        ("sqlite", "sqlite3.OperationalError", "1" if sys.version_info >= (3, 11) else None),  # sqlite_errorcode
        ("LPUSH", "redis.exceptions.ResponseError", "WRONGTYPE"),
        ("GET", "redis.exceptions.ConnectionError", None),
    }
    (manual,) = [s for s in spans if s.name == "manual"]
    assert all(s.parent_id == manual.span_id for s in spans if s.kind == "CLIENT")
