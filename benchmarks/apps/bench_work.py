"""What the /all route of every benchmark app does (Flask, FastAPI/Starlette, Django alike).

One PostgreSQL SELECT, a Redis GET and SET, one outgoing `requests` call to a tiny local
server: 5 spans under trace-run (with the SERVER span). Clients are made once per process, on
first use (after the fork, after the agent has patched the libraries). Nothing here knows about
tracing.
"""

import os

import psycopg
import redis
import requests

PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DOWNSTREAM = os.environ.get("BENCH_DOWNSTREAM_URL", "http://127.0.0.1:8081/")
QUERY = "SELECT id, name FROM (VALUES (1, 'a'), (2, 'b')) AS t(id, name) WHERE id = %s"
PLAIN = "hello, world\n"

_clients: dict = {}


def clients() -> dict:
    if not _clients:
        _clients["redis"] = redis.Redis.from_url(REDIS_URL)
        _clients["http"] = requests.Session()
    return _clients


def _psycopg_cursor():
    if "pg" not in _clients:
        _clients["pg"] = psycopg.connect(PG_DSN, autocommit=True)
    return _clients["pg"].cursor()


def work(cursor=None) -> str:
    """The /all route's body; `cursor` makes a DB cursor (Django passes its own connection's)."""
    c = clients()
    with (cursor or _psycopg_cursor)() as cur:
        cur.execute(QUERY, (1,))
        row = cur.fetchone()
    key = "trace-run-bench:%d" % os.getpid()
    hits = c["redis"].get(key)
    c["redis"].set(key, int(hits or 0) + 1, ex=60)
    down = c["http"].get(DOWNSTREAM, timeout=5)
    return "%s %s %s\n" % (row[1], int(hits or 0), down.status_code)
