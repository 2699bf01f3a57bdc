"""Database and Redis calls under one manual span: `db_app.py MODE SUFFIX PG_DSN REDIS_URL`.

MODE picks the driver and call shapes; SUFFIX makes table and key names unique;
$DB_APP_SECRET is written as a literal / value and must never show up in a span
(it is not on the command line, which the resource records).
"""

import asyncio
import io
import os
import sys

from opentelemetry import trace

mode, suffix, pg_dsn, redis_url = sys.argv[1:5]
secret = os.environ["DB_APP_SECRET"]
table = "tr_" + suffix
tracer = trace.get_tracer("db_app")


def psycopg_sync():
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE %s (id int PRIMARY KEY, name text)" % table)
        try:
            conn.execute("INSERT INTO %s VALUES (1, '%s')" % (table, secret))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO %s VALUES (%%s, %%s)" % table, [(2, secret), (3, secret)])
                cur.execute(sql.SQL("SELECT name FROM {} WHERE name = %s").format(sql.Identifier(table)),
                            (secret,))
                print("rows", len(cur.fetchall()))
                with cur.copy("COPY %s (id, name) FROM STDIN" % table) as copy:
                    copy.write_row((4, secret))
            with conn.transaction(), conn.cursor(name="named_" + suffix) as named:
                named.execute("SELECT id FROM %s WHERE id > 0" % table)
                print("named", len(named.fetchall()))
        finally:
            conn.execute("DROP TABLE %s" % table)


def psycopg_async():
    import psycopg
    import psycopg_pool

    async def main():
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute("SELECT '%s' AS a" % secret)
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1 WHERE 'x' <> %s", (secret,))
                print("async", await cur.fetchone())
        pool = psycopg_pool.AsyncConnectionPool(pg_dsn, min_size=1, max_size=1, open=False)
        await pool.open()
        async with pool.connection() as conn:
            await conn.execute("SELECT 2")
        await pool.close()

    asyncio.run(main())
    import psycopg_pool as pp

    with pp.ConnectionPool(pg_dsn, min_size=1, max_size=1) as pool, pool.connection() as conn:
        conn.execute("SELECT 3")


def psycopg2_calls():
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE %s (id int PRIMARY KEY, name text)" % table)
    try:
        psycopg2.extras.execute_values(cur, "INSERT INTO %s VALUES %%s" % table, [(1, secret), (2, secret)])
        cur.executemany("INSERT INTO %s VALUES (%%s, %%s)" % table, [(3, secret), (4, secret)])
        cur.copy_expert("COPY %s TO STDOUT" % table, io.StringIO())
        dict_conn = psycopg2.connect(pg_dsn, connection_factory=psycopg2.extras.DictConnection)
        dcur = dict_conn.cursor()
        dcur.execute("SELECT name FROM %s WHERE name = '%s'" % (table, secret))
        print("dict", dcur.fetchone()["name"] == secret, type(dcur).__name__)
        rcur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        rcur.execute("SELECT count(*) AS n FROM %s" % table)
        print("count", rcur.fetchone()["n"])
        dict_conn.close()
    finally:
        cur.execute("DROP TABLE %s" % table)
        conn.close()


def sqlite_calls():
    import sqlite3

    conn = sqlite3.connect(":memory:")
    print("isinstance", isinstance(conn, sqlite3.Connection))
    conn.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(1, secret), (2, secret)])
    cur = conn.cursor()
    cur.execute("SELECT * FROM items WHERE name = '%s'" % secret)
    print("rows", len(cur.fetchall()))
    conn.executescript("INSERT INTO items VALUES (3, '%s'); DELETE FROM items WHERE id = 3;" % secret)
    conn.close()


def redis_calls():
    import redis

    key = "tr:" + suffix
    client = redis.Redis.from_url(redis_url)
    client.set(key, secret)
    print("get", client.get(key) == secret.encode())
    with client.pipeline() as pipe:
        pipe.set(key + ":a", secret).incr(key + ":n").get(key + ":a")
        print("pipe", len(pipe.execute()))
    with client.pipeline(transaction=False) as pipe:
        pipe.get(key).get(key)
        pipe.execute()
    redis.StrictRedis(connection_pool=client.connection_pool).delete(key, key + ":a", key + ":n")


def redis_async():
    import redis.asyncio

    async def main():
        key = "tra:" + suffix
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.set(key, secret)
        async with client.pipeline() as pipe:
            pipe.get(key).delete(key)
            print("apipe", await pipe.execute())
        await client.aclose()

    asyncio.run(main())


MODES = {"psycopg": psycopg_sync, "psycopg_async": psycopg_async, "psycopg2": psycopg2_calls,
         "sqlite3": sqlite_calls, "redis": redis_calls, "redis_async": redis_async}

with tracer.start_as_current_span("manual"):
    MODES[mode]()
print("done")
