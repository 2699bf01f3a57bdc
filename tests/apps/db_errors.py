"""Failing database and Redis calls: prints exactly what the program sees of each exception.

`db_errors.py SUFFIX PG_DSN REDIS_URL DEAD_PORT`: the output must be the same with
and without trace-run.
"""

import sqlite3
import sys

import psycopg
import psycopg2
import redis
from opentelemetry import trace

suffix, pg_dsn, redis_url, dead_port = sys.argv[1:5]
table = "tre_" + suffix
tracer = trace.get_tracer("db_errors")


def show(label, fn):
    try:
        fn()
    except Exception as exc:
        cls = type(exc)
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        print(label, cls.__module__ + "." + cls.__qualname__, code, str(exc).splitlines()[0] if str(exc) else "",
              exc.__traceback__ is not None)
    else:
        print(label, "no error")


with tracer.start_as_current_span("manual"):
    conn = psycopg.connect(pg_dsn, autocommit=True)
    conn.execute("CREATE TABLE %s (id int PRIMARY KEY)" % table)
    try:
        conn.execute("INSERT INTO %s VALUES (1)" % table)
        show("pg-syntax", lambda: conn.execute("SELEC 1"))
        show("pg-unique", lambda: conn.execute("INSERT INTO %s VALUES (1)" % table))
        conn2 = psycopg2.connect(pg_dsn)
        conn2.autocommit = True
        show("pg2-syntax", lambda: conn2.cursor().execute("SELEC 1"))
        show("pg2-unique", lambda: conn2.cursor().execute("INSERT INTO %s VALUES (1)" % table))
        conn2.close()
    finally:
        conn.execute("DROP TABLE %s" % table)
        conn.close()
    dead = "postgresql://postgres@127.0.0.1:%s/test?connect_timeout=3" % dead_port
    show("pg-refused", lambda: psycopg.connect(dead))
    show("pg2-refused", lambda: psycopg2.connect(dead))
    lite = sqlite3.connect(":memory:")
    show("sqlite-syntax", lambda: lite.execute("SELEC 1"))
    client = redis.Redis.from_url(redis_url)
    key = "tre:" + suffix
    client.set(key, "v")
    show("redis-wrongtype", lambda: client.lpush(key, "x"))
    client.delete(key)
    show("redis-refused", lambda: redis.Redis(host="127.0.0.1", port=int(dead_port)).get("k"))
print("done")
