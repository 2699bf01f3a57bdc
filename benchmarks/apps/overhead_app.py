"""The Flask app the overhead benchmark serves (gunicorn, one sync worker).

- GET /plain: returns text; 1 span (the SERVER span).
- GET /work:  one PostgreSQL SELECT (psycopg), a Redis GET and SET, one outgoing
              `requests` call to a tiny local server; 5 spans.
Clients are made once per worker, on first use (after the fork, after the agent
has patched the libraries). Nothing here knows about tracing.
"""

import os

import psycopg
import redis
import requests
from flask import Flask

PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DOWNSTREAM = os.environ.get("BENCH_DOWNSTREAM_URL", "http://127.0.0.1:8081/")
KEY = "trace-run-bench:%d" % os.getpid()

app = Flask(__name__)
_clients: dict = {}


def clients():
    if not _clients:
        _clients["pg"] = psycopg.connect(PG_DSN, autocommit=True)
        _clients["redis"] = redis.Redis.from_url(REDIS_URL)
        _clients["http"] = requests.Session()
    return _clients


@app.get("/plain")
def plain():
    return "hello, world\n"


@app.get("/work")
def work():
    c = clients()
    with c["pg"].cursor() as cur:
        cur.execute("SELECT id, name FROM (VALUES (1, 'a'), (2, 'b')) AS t(id, name) WHERE id = %s", (1,))
        row = cur.fetchone()
    hits = c["redis"].get(KEY)
    c["redis"].set(KEY, int(hits or 0) + 1, ex=60)
    down = c["http"].get(DOWNSTREAM, timeout=5)
    return "%s %s %s\n" % (row[1], int(hits or 0), down.status_code)
