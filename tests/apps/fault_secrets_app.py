"""Puts secrets everywhere a real program does, under trace-run, for the secrets property test.

    python fault_secrets_app.py PG_DSN REDIS_URL AMQP_URL

One JSON object per stdin line, {"tag": ..., "s": [secret, ...]} (at least 19 secrets):
the program serves HTTP (Flask) and calls itself with requests, httpx and urllib, with
secrets in signature and token query values, URL user:password and Authorization/Cookie/
X-Api-Key headers; a request to a closed port whose URL has a signature (its error text
quotes the URL); handlers that let a PostgreSQL unique violation (its DETAIL holds the
row value) and a Redis error echoing an argument escape; runs SQL with secret literals
through psycopg (one of them in an error message) with a password in the DSN; opens
SQLite through a URI with a key in its query; stores and reads Redis values; publishes
and consumes RabbitMQ message bodies. Then it flushes its spans and prints "ok TAG".
"""

import json
import logging
import os
import socket
import sqlite3
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

import httpx
import pika
import psycopg
import redis
import requests
from flask import Flask, jsonify, request
from opentelemetry import trace
from werkzeug.serving import make_server

pg_dsn, redis_url, amqp_url = sys.argv[1], sys.argv[2], sys.argv[3]
app = Flask(__name__)


app.logger.disabled = True  # the 500s below would fill the stderr pipe nobody reads until the end
logging.getLogger("werkzeug").disabled = True


@app.route("/echo/<int:n>")
def echo(n):
    return jsonify(n=n, headers=len(request.headers))


@app.route("/signup", methods=["POST"])
def signup():
    # A unique violation escapes: PostgreSQL's DETAIL names the row value.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TEMP TABLE users (email text UNIQUE)")
        for _ in range(2):
            conn.execute("INSERT INTO users VALUES (%s)", (request.json["email"],))
    return "unreachable"


@app.route("/redis-fail", methods=["POST"])
def redis_fail():
    # Redis echoes the arguments of an unknown command in its error.
    rds.execute_command("TRACE-RUN-NO-SUCH-COMMAND", request.json["value"])
    return "unreachable"


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


server = make_server("127.0.0.1", 0, app, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
base = "http://127.0.0.1:%d" % server.server_port


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = "%s:%s@%s" % (parts.username or "postgres", password, parts.hostname + (":%d" % parts.port
                                                                                     if parts.port else ""))
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


rds = redis.Redis.from_url(redis_url)
amqp = pika.BlockingConnection(pika.URLParameters(amqp_url))
channel = amqp.channel()
queue = channel.queue_declare(queue="", exclusive=True).method.queue

for line in sys.stdin:
    job = json.loads(line)
    tag, s = job["tag"], job["s"]
    # HTTP: query signatures, URL credentials, credential headers (captured by configuration).
    headers = {"Authorization": "Bearer " + s[0], "Cookie": "session=" + s[1], "X-Api-Key": s[2],
               "X-Request-Id": "req-" + tag}
    r = requests.get(base + "/echo/1?X-Amz-Signature=%s&sig=%s&page=2&token=%s" % (s[3], s[4], s[12]),
                     headers=headers, timeout=10)
    assert r.status_code == 200, r.status_code
    user_url = base.replace("http://", "http://user%s:%s@" % (tag, s[5]))
    assert requests.get(user_url + "/echo/2", timeout=10).status_code == 200
    with httpx.Client(timeout=10) as client:
        assert client.get(user_url + "/echo/3?signature=%s&API_KEY=%s" % (s[6], s[13]),
                          headers=headers).status_code == 200
    # Error texts: a client error quoting its URL, urllib with user:password, escaping DB errors.
    try:
        requests.get("http://127.0.0.1:%d/x?X-Amz-Signature=%s;v=1" % (closed_port(), s[14]), timeout=10)
    except requests.ConnectionError:
        pass
    try:
        urllib.request.urlopen("http://u:%s@127.0.0.1:%d/echo/5" % (s[15], server.server_port), timeout=10)
    except (urllib.error.URLError, OSError, UnicodeError):  # no such host (the IDNA codec may refuse it first)
        pass
    assert requests.post(base + "/signup", json={"email": s[16]}, timeout=10).status_code == 500
    assert requests.post(base + "/redis-fail", json={"value": s[18]}, timeout=10).status_code == 500
    # SQLite through a URI whose query holds a key.
    with tempfile.TemporaryDirectory() as tmp:
        lite = sqlite3.connect("file:%s?psk=%s&mode=rwc" % (os.path.join(tmp, "app.db"), s[17]), uri=True)
        lite.execute("CREATE TABLE t (x)")
        lite.close()
    # SQL: literals in the text, one in the server's error message, a password in the DSN.
    with psycopg.connect(with_password(pg_dsn, s[7])) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT '%s' AS token, length('%s')" % (s[8], s[8]))
            cur.fetchall()
            try:
                cur.execute("SELECT '%s'::int" % s[9])
            except psycopg.errors.DataError:  # not a number, or out of range for int
                conn.rollback()
    # Redis values.
    key = "trace-run-secrets:" + tag
    rds.set(key, s[10], ex=60)
    assert rds.get(key) == s[10].encode()
    rds.delete(key)
    # Message bodies, published and consumed.
    channel.basic_publish(exchange="", routing_key=queue, body=("payload " + s[11]).encode())
    for _ in range(50):
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            break
        amqp.sleep(0.05)
    assert body == ("payload " + s[11]).encode(), body
    trace.get_tracer_provider().force_flush()
    print("ok " + tag, flush=True)

amqp.close()
server.shutdown()
