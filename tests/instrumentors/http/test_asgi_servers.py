"""A Starlette app (no tracing code) with real PostgreSQL under every ASGI server we support, run by
trace-run: uvicorn, hypercorn and gunicorn with uvicorn's worker. Each request carries its own
`traceparent`; the trace must run from it through the SERVER span down to the DB spans, wherever the
query ran (async endpoint, sync endpoint, run_in_threadpool, background task, WebSocket)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import HERE, PG_DSN, TRACE_RUN, clean_env
from support.otlp_receiver import Receiver
from test_http_e2e import free_port, get, wait_port

APPS = os.path.join(HERE, "apps")
BIN = os.path.dirname(sys.executable)
SERVERS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "asgi_db_app:app", "--port", "{port}"],
    "hypercorn": [os.path.join(BIN, "hypercorn"), "asgi_db_app:app", "-b", "127.0.0.1:{port}"],
    "gunicorn-uvicorn-worker": [os.path.join(BIN, "gunicorn"), "-w", "2", "-k", "uvicorn_worker.UvicornWorker",
                                "-b", "127.0.0.1:{port}", "asgi_db_app:app"],
}


class Server:
    def __init__(self, name: str):
        self.name = name
        self.rx = Receiver().start()
        self.port = free_port()
        cmd = [TRACE_RUN] + [c.replace("{port}", str(self.port)) for c in SERVERS[name]]
        self.proc = subprocess.Popen(
            cmd, cwd=APPS, env=clean_env(TRACE_RUN_TEST_PG_DSN=PG_DSN, **self.rx.env(OTEL_SERVICE_NAME=name)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_port(self.port, self.proc, timeout=30)

    def get(self, path: str, trace_id: str, headers=()):
        return get("http://127.0.0.1:%d%s" % (self.port, path),
                   [("traceparent", "00-%s-%s-01" % (trace_id, PARENT))] + list(headers))

    def trace(self, trace_id: str, want: int) -> list:
        """The spans of `trace_id`, once `want` arrived (and a moment for any extra one to show up)."""
        self.rx.wait_for(lambda spans: len([s for s in spans if s.trace_id == trace_id]) >= want, timeout=20)
        time.sleep(0.3)
        with self.rx._lock:
            return [s for s in self.rx.spans if s.trace_id == trace_id]

    def stop(self) -> str:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        self.rx.stop()
        return err


PARENT = "00f067aa0ba902b7"


def new_trace() -> str:
    return "%032x" % random.getrandbits(128)


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request):
    s = Server(request.param)
    yield s
    err = s.stop()
    assert "instrumentation error" not in err and "Traceback" not in err, err
    # lifespan startup and shutdown made no span: every root is a request sent without a valid traceparent
    roots = [x for x in s.rx.spans if x.parent_id is None]
    assert all(x.kind == "SERVER" and "bad=" in x.attributes.get("url.query", "") for x in roots), roots


def server_span(spans: list, name: str):
    (span,) = [s for s in spans if s.kind == "SERVER"]
    assert span.name == name and span.parent_id == PARENT, span
    assert span.scope == "trace_run.instrumentors.starlette"
    return span


def db_children(spans: list, parent, count: int) -> list:
    clients = [s for s in spans if s.kind == "CLIENT"]
    assert len(clients) == count, spans
    for s in clients:
        assert s.parent_id == parent.span_id and s.name == "SELECT", s
        assert s.attributes["db.system.name"] == "postgresql" and s.attributes["db.namespace"] == "test"
    return clients


def test_async_endpoint_asyncpg(server):
    tid = new_trace()
    status, body = server.get("/db/async/41?x=1", tid)
    assert status == 200 and body == '{"value":42}'
    spans = server.trace(tid, 2)
    span = server_span(spans, "GET /db/async/{n:int}")
    a = span.attributes
    assert a["http.route"] == "/db/async/{n:int}" and a["url.path"] == "/db/async/41" and a["url.query"] == "x=1"
    assert a["http.response.status_code"] == 200 and a["server.port"] == server.port
    assert a["url.scheme"] == "http" and a["network.protocol.version"] == "1.1"
    (db,) = db_children(spans, span, 1)
    assert db.attributes["db.query.text"] == "SELECT $1::int + ?" and db.scope == "trace_run.instrumentors.asyncpg"
    assert span.status == db.status == "UNSET"


@pytest.mark.parametrize("route,name", [("/db/sync/21", "GET /db/sync/{n:int}"),
                                        ("/db/threadpool/21", "GET /db/threadpool/{n:int}")])
def test_thread_pool_psycopg(server, route, name):
    """A sync endpoint and run_in_threadpool run in worker threads: the query is still the request's child."""
    tid = new_trace()
    status, body = server.get(route, tid)
    assert status == 200 and body == '{"value":42}'
    spans = server.trace(tid, 2)
    (db,) = db_children(spans, server_span(spans, name), 1)
    assert db.attributes["db.query.text"] == "SELECT %s::int * ?" and db.scope == "trace_run.instrumentors.psycopg"


def test_background_tasks(server):
    """Background tasks run after the response is sent: their queries are children of the request span
    (which ended with the response, so they outlive it)."""
    tid = new_trace()
    assert server.get("/background", tid) == (200, "queued")
    spans = server.trace(tid, 3)
    span = server_span(spans, "GET /background")
    db = sorted(db_children(spans, span, 2), key=lambda s: s.start)
    assert [s.scope.rsplit(".", 1)[1] for s in db] == ["asyncpg", "psycopg"]
    assert db[0].start >= span.end - 1_000_000  # after the body was sent (1 ms slack for clock rounding)


def test_websocket_one_span_per_connection(server):
    tid = new_trace()
    replies = websocket_session(server.port, "/ws?room=1", ["1", "2", "3"],
                                [("traceparent", "00-%s-%s-01" % (tid, PARENT))])
    assert replies == ["2", "3", "4"]
    spans = server.trace(tid, 4)
    span = server_span(spans, "GET /ws")
    a = span.attributes
    assert a["url.scheme"] == "ws" and a["url.path"] == "/ws" and a["url.query"] == "room=1"
    assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 101
    assert a["http.route"] == "/ws" and span.status == "UNSET"
    db = db_children(spans, span, 3)
    assert all(span.start <= s.start and s.end <= span.end for s in db)


def test_client_disconnect_mid_stream_ends_the_span(server):
    tid = new_trace()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(("GET /stream HTTP/1.1\r\nHost: x\r\ntraceparent: 00-%s-%s-01\r\n\r\n" % (tid, PARENT)).encode())
        got = b""
        while b"chunk 1\n" not in got:
            got += sock.recv(4096)
    started = time.monotonic()
    (span,) = server.trace(tid, 1)
    assert time.monotonic() - started < 8  # the stream had 10 s to go
    assert span.name == "GET /stream" and span.kind == "SERVER" and span.parent_id == PARENT
    assert span.attributes["http.response.status_code"] == 200 and span.status == "UNSET"
    assert [e[0] for e in span.events] == ["http.client_disconnected"]


BAD_HEADERS = [
    [("traceparent", "00-%s-%s-01" % ("0" * 32, PARENT))],
    [("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-%s-01" % PARENT)],
    [("traceparent", "garbage\x7f\xff"), ("tracestate", "===,,,")],
    [("traceparent", "x" * 5000)],
    [("tracestate", "a=" + "b" * 600), ("baggage", "k=%zz;;;=,,")],
    [("baggage", ",".join("k%d=v" % i for i in range(500)))],
    [("traceparent", "00-%s-%s-01" % ("a" * 32, PARENT)), ("traceparent", "00-%s-%s-01" % ("b" * 32, PARENT))],
]


def test_malformed_propagation_headers_never_fail_a_request(server):
    for i, headers in enumerate(BAD_HEADERS):
        status, body = get("http://127.0.0.1:%d/db/async/%d?bad=%d" % (server.port, i, i), headers)
        assert status == 200 and body == '{"value":%d}' % (i + 1), headers
    spans = server.rx.wait_for(lambda ss: len([s for s in ss if "bad=" in s.attributes.get("url.query", "")])
                               >= len(BAD_HEADERS), timeout=20)
    for span in [s for s in spans if "bad=" in s.attributes.get("url.query", "")]:
        assert span.parent_id is None and span.name == "GET /db/async/{n:int}", span  # a new trace each


def websocket_session(port: int, target: str, texts: list, headers=()) -> list:
    """Open a WebSocket, send each text and read its reply, send "bye" and wait for the server's close."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

    ws = WSConnection(ConnectionType.CLIENT)
    replies: list = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(ws.send(Request(host="127.0.0.1", target=target,
                                     extra_headers=[(k.encode(), v.encode()) for k, v in headers])))

        def events():
            while True:
                data = sock.recv(65536)
                ws.receive_data(data or None)
                yield from ws.events()
                if not data:
                    return

        stream = events()
        assert isinstance(next(stream), AcceptConnection)
        for text in texts:
            sock.sendall(ws.send(TextMessage(data=text)))
            event = next(stream)
            assert isinstance(event, Message), event
            replies.append(event.data)
        sock.sendall(ws.send(TextMessage(data="bye")))
        for event in stream:
            if isinstance(event, CloseConnection):
                sock.sendall(ws.send(event.response()))
                break
    return replies
