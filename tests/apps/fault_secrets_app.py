"""Puts secrets everywhere a real program does, under trace-run, for the secrets property test.

    python fault_secrets_app.py PG_DSN REDIS_URL AMQP_URL

One JSON object per stdin line, {"tag": ..., "s": [secret, ...]} (at least 12 secrets):
the program serves HTTP (Flask) and calls itself with requests and httpx, with secrets
in signature query values, URL user:password and Authorization/Cookie/X-Api-Key
headers; runs SQL with secret literals through psycopg (one of them in an error
message) with a password in the DSN; stores and reads Redis values; publishes and
consumes RabbitMQ message bodies. Then it flushes its spans and prints "ok TAG".
"""

import json
import sys
import threading
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


@app.route("/echo/<int:n>")
def echo(n):
    return jsonify(n=n, headers=len(request.headers))


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
    r = requests.get(base + "/echo/1?X-Amz-Signature=%s&sig=%s&page=2" % (s[3], s[4]), headers=headers, timeout=10)
    assert r.status_code == 200, r.status_code
    user_url = base.replace("http://", "http://user%s:%s@" % (tag, s[5]))
    assert requests.get(user_url + "/echo/2", timeout=10).status_code == 200
    with httpx.Client(timeout=10) as client:
        assert client.get(user_url + "/echo/3?signature=%s" % s[6], headers=headers).status_code == 200
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
