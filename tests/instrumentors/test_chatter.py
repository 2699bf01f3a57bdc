"""Issue 10: connection-pool health checks and redis-py health checks make no spans
(they are the library's chatter); OTEL_TRACE_RUN_CHATTER=true brings them back."""

from __future__ import annotations

import time

import pytest
from support import PG_DSN, REDIS_URL, clean_env, run_traced, write_script

PROGRAM = """
    import asyncio, time
    import redis
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
    from opentelemetry import trace

    pool = ConnectionPool(%(dsn)r, min_size=1, max_size=2, check=ConnectionPool.check_connection, open=True)
    with pool.connection() as conn:          # the pool checks the connection first
        pass
    pool.check()                             # a periodic health check by the program
    with trace.get_tracer("app").start_as_current_span("request"):
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    pool.close()

    async def main():
        apool = AsyncConnectionPool(%(dsn)r, min_size=1, check=AsyncConnectionPool.check_connection, open=False)
        await apool.open()
        async with apool.connection():
            pass
        await apool.check()
        await apool.close()
    asyncio.run(main())

    r = redis.Redis.from_url(%(redis)r, health_check_interval=1)
    r.ping()
    time.sleep(1.1)                          # the next command does a health-check PING first
    with trace.get_tracer("app").start_as_current_span("request2"):
        r.get("trace-run-chatter-key")
    print("done")
"""


@pytest.mark.parametrize("chatter", ["false", "true"])
def test_pool_and_redis_health_checks_make_no_spans(tmp_path, receiver, chatter):
    script = write_script(tmp_path, PROGRAM % {"dsn": PG_DSN, "redis": REDIS_URL})
    env = clean_env(**receiver.env(OTEL_TRACE_RUN_CHATTER=chatter))
    proc = run_traced(["python", script], env=env, check=True)
    assert proc.stdout == "done\n"
    receiver.wait_for(lambda ss: {"request", "request2"} <= {s.name for s in ss})
    time.sleep(0.5)
    spans = receiver.spans
    names = sorted(s.name for s in spans)
    request = next(s for s in spans if s.name == "request")
    select = next(s for s in spans if s.name == "SELECT")
    assert select.parent_id == request.span_id and select.trace_id == request.trace_id
    checks = [s for s in spans if s.attributes.get("db.system.name") == "postgresql" and s.name != "SELECT"]
    if chatter == "false":
        # The program's own work only: its two spans, its SELECT, its PING and its GET.
        assert names == ["GET", "PING", "SELECT", "request", "request2"], names
        assert checks == []
    else:
        assert len(checks) >= 3, names  # connection checks (sync and async) and pool.check()
        assert all(s.attributes.get("db.query.text") == "" for s in checks)
