"""HTTP end to end: Flask services in separate processes under trace-run.

Service A calls service B with each client library; the spans arrive at the
OTLP receiver and must form one trace: A SERVER -> A CLIENT -> B SERVER.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from support import HERE, TRACE_RUN, clean_env, free_port, http_get, wait_port
from support.otlp_receiver import Receiver

APPS = os.path.join(HERE, "apps")
SERVICE = os.path.join(APPS, "http_service.py")


class Service:
    def __init__(self, receiver: Receiver, name: str, args=None, cwd=APPS, **env):
        self.port = free_port()
        self.name = name
        cmd = [TRACE_RUN] + (args or [sys.executable, SERVICE, str(self.port)])
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=clean_env(**receiver.env(OTEL_SERVICE_NAME=name, **env)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        wait_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return err


get = http_get  # the other HTTP test modules import it from here


_RX: list = []


@pytest.fixture(scope="module")
def rx():
    r = Receiver().start()
    _RX[:] = [r]
    yield r
    r.stop()


@pytest.fixture(scope="module")
def services(rx):
    b = Service(rx, "svc-b")
    a = Service(rx, "svc-a")
    yield a, b
    for s in (a, b):
        err = s.stop()
        assert "instrumentation error" not in err, err


def trace_of(rx: Receiver, marker: str, want: int, timeout: float = 15.0) -> list:
    """Every span of the trace whose SERVER span saw `marker` in url.query (once `want` arrived)."""
    def spans_now(spans):
        roots = [s for s in spans if s.kind == "SERVER" and marker in s.attributes.get("url.query", "")]
        if not roots:
            return []
        return [s for s in spans if s.trace_id == roots[0].trace_id]

    spans = rx.wait_for(lambda all_: len(spans_now(all_)) >= want, timeout=timeout)
    time.sleep(0.3)  # anything extra (a duplicate span) would arrive too
    with rx._lock:
        spans = list(rx.spans)
    return spans_now(spans)


def marked(rx: Receiver, marker: str):
    """The one SERVER span whose url.query holds `marker`."""
    def found(spans):
        return [s for s in spans if s.kind == "SERVER" and marker in s.attributes.get("url.query", "")]

    rx.wait_for(lambda spans: found(spans), timeout=15)
    time.sleep(0.2)
    with rx._lock:
        spans = found(rx.spans)
    assert len(spans) == 1, spans
    return spans[0]


def one(spans, **where):
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, spans, _RX[0].spans if _RX else None)
    return found[0]


CLIENTS = ["requests", "urllib3", "urllib", "httpclient", "httpx", "httpx_async"]
SCOPES = {"requests": "requests", "urllib3": "urllib3", "urllib": "urllib", "httpclient": "urllib",
          "httpx": "httpx", "httpx_async": "httpx"}


@pytest.mark.parametrize("client", CLIENTS)
def test_one_trace_across_two_services(services, rx, client):
    a, b = services
    marker = uuid.uuid4().hex
    target = "%s/items/42?m=%s" % (b.url, marker)
    status, body = get("%s/call/%s?to=%s&m=%s" % (a.url, client, target.replace("?", "%3F").replace("&", "%26"),
                                                  marker))
    assert status == 200 and json.loads(body)["status"] == 200, body
    spans = trace_of(rx, marker, 3)
    a_server = one(spans, service="svc-a", kind="SERVER")
    a_client = one(spans, service="svc-a", kind="CLIENT")  # exactly one: layered clients give one span
    b_server = one(spans, service="svc-b", kind="SERVER")
    assert len(spans) == 3, spans
    assert a_server.parent_id is None
    assert a_client.parent_id == a_server.span_id
    assert b_server.parent_id == a_client.span_id
    assert a_server.name == "GET /call/<client>"
    assert a_server.attributes["http.route"] == "/call/<client>"
    assert b_server.name == "GET /items/<int:item_id>"
    assert a_client.name == "GET"
    assert a_client.scope == "trace_run.instrumentors." + SCOPES[client]
    assert a_client.attributes["http.request.method"] == "GET"
    assert a_client.attributes["url.full"] == target
    assert a_client.attributes["server.address"] == "127.0.0.1"
    assert a_client.attributes["server.port"] == b.port
    assert a_client.attributes["http.response.status_code"] == 200
    assert a_client.attributes["network.protocol.version"] == "1.1"
    battrs = b_server.attributes
    assert battrs["http.request.method"] == "GET"
    assert battrs["url.path"] == "/items/42"
    assert battrs["url.scheme"] == "http"
    assert battrs["http.response.status_code"] == 200
    assert battrs["server.port"] == b.port and battrs["client.address"] == "127.0.0.1"
    assert all(s.status == "UNSET" for s in spans)


@pytest.mark.parametrize("client", ["requests", "urllib", "httpx"])
def test_error_statuses(services, rx, client):
    a, b = services
    for path, code, server_error in (("/nope", 404, False), ("/fail", 500, True), ("/boom", 500, True)):
        marker = uuid.uuid4().hex
        target = "%s%s?m=%s" % (b.url, path, marker)
        status, body = get("%s/call/%s?to=%s&m=%s" % (a.url, client, target.replace("?", "%3F"), marker))
        assert json.loads(body)["status"] == code, body
        spans = trace_of(rx, marker, 3)
        a_client = one(spans, service="svc-a", kind="CLIENT")
        b_server = one(spans, service="svc-b", kind="SERVER")
        assert b_server.parent_id == a_client.span_id
        assert a_client.status == "ERROR" and a_client.attributes["error.type"] == str(code)
        assert a_client.attributes["http.response.status_code"] == code
        assert b_server.attributes["http.response.status_code"] == code
        assert b_server.status == ("ERROR" if server_error else "UNSET"), path
        if path == "/nope":
            assert b_server.name == "GET" and "http.route" not in b_server.attributes
        if path == "/boom":
            assert b_server.name == "GET /boom"
            assert b_server.attributes["error.type"] == "ValueError"
            events = [e for e in b_server.events if e[0] == "exception"]
            assert len(events) == 1 and events[0][1]["exception.message"] == "view failed"
        if path == "/fail":
            assert b_server.attributes["error.type"] == "500" and not b_server.events
        assert one(spans, service="svc-a", kind="SERVER").status == "UNSET"


@pytest.mark.parametrize("client", CLIENTS)
def test_connection_refused_and_timeout(services, rx, client):
    a, b = services
    closed = free_port()
    marker = uuid.uuid4().hex
    status, body = get("%s/call/%s?to=http://127.0.0.1:%d/x&m=%s" % (a.url, client, closed, marker))
    assert "error" in json.loads(body)
    spans = trace_of(rx, marker, 2)
    span = one(spans, kind="CLIENT")
    assert span.status == "ERROR" and "http.response.status_code" not in span.attributes
    assert span.attributes["server.port"] == closed
    assert any(e[0] == "exception" for e in span.events)
    assert "Connect" in span.attributes["error.type"] or "Refused" in span.attributes["error.type"], span.attributes

    marker = uuid.uuid4().hex
    target = "%s/slow?s=1.5%%26m=%s" % (b.url, marker)
    status, body = get("%s/call/%s?timeout=0.3&to=%s&m=%s" % (a.url, client, target, marker))
    assert "error" in json.loads(body), body
    spans = trace_of(rx, marker, 3, timeout=15)
    span = one(spans, service="svc-a", kind="CLIENT")
    assert span.status == "ERROR" and any(e[0] == "exception" for e in span.events)
    assert "imeout" in span.attributes["error.type"] or "timed out" in span.status_message, span.attributes
    # the callee finishes its slow request anyway, in the same trace
    rx.wait_for(lambda s: any(x.service == "svc-b" and x.trace_id == span.trace_id for x in s), timeout=10)
    assert one(list(rx.spans), service="svc-b", trace_id=span.trace_id).parent_id == span.span_id


TID = "4bf92f3577b34da6a3ce929d0e0e4736"
PID = "00f067aa0ba902b7"


@pytest.mark.parametrize("headers,parent,state", [
    ([("traceparent", "00-%s-%s-01" % (TID, PID))], PID, ""),
    ([("traceparent", "00-%s-%s-01" % (TID, PID)), ("tracestate", "foo=1,bar=2"), ("tracestate", "baz=3")],
     PID, "foo=1,bar=2,baz=3"),
    ([("traceparent", "cc-%s-%s-01-future" % (TID, PID)), ("tracestate", "foo=1")], PID, "foo=1"),
    ([("traceparent", "00-%s-%s-01" % (TID, PID)), ("tracestate", "foo=1,foo=2")], PID, "foo=1"),  # first kept
    ([("traceparent", "00-%s-%s-01" % (TID.upper(), PID))], None, ""),
    ([("traceparent", "00-%s-%s-01" % ("0" * 32, PID))], None, ""),
    ([("traceparent", "ff-%s-%s-01" % (TID, PID))], None, ""),
    ([("traceparent", "00-%s-%s-01" % (TID, PID)), ("traceparent", "00-%s-%s-01" % (TID, PID))], None, ""),
    ([("traceparent", "00-%s-%s-01-extra" % (TID, PID))], None, ""),
    ([("traceparent", "garbage\x7f\xff"), ("tracestate", "===,,,")], None, ""),
    ([("traceparent", "x" * 5000)], None, ""),
])
def test_malformed_headers_on_a_real_server(services, rx, headers, parent, state):
    a, b = services
    marker = uuid.uuid4().hex
    status, body = get("%s/items/7?m=%s" % (b.url, marker), headers)
    assert status == 200 and json.loads(body) == {"item": 7}
    span = marked(rx, marker)
    assert span.name == "GET /items/<int:item_id>" and span.status == "UNSET"
    if parent is None:
        assert span.parent_id is None and span.trace_id != TID
    else:
        assert span.parent_id == parent and span.trace_id == TID
    assert span.trace_state == state


def test_streamed_response_measured_whole_and_non_standard_method(services, rx):
    a, b = services
    marker = uuid.uuid4().hex
    status, body = get("%s/stream?m=%s" % (b.url, marker))
    assert body == "chunk0\nchunk1\nchunk2\n"
    span = one(trace_of(rx, marker, 1), kind="SERVER")
    assert span.duration_ms >= 140
    marker = uuid.uuid4().hex
    status, _ = get("%s/shop/orders/9?m=%s" % (b.url, marker), method="PURGE")
    assert status == 405
    span = one(trace_of(rx, marker, 1), kind="SERVER")
    assert span.name == "HTTP"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


@pytest.mark.parametrize("propagator", ["b3", "b3multi"])
def test_b3(rx, propagator):
    svc = Service(rx, "svc-" + propagator, OTEL_PROPAGATORS=propagator)
    try:
        # incoming B3 headers are honoured
        marker = uuid.uuid4().hex
        if propagator == "b3":
            headers = [("b3", "%s-%s-1" % (TID, PID))]
        else:
            headers = [("X-B3-TraceId", TID), ("X-B3-SpanId", PID), ("X-B3-Sampled", "1")]
        status, body = get("%s/items/1?m=%s" % (svc.url, marker), headers)
        assert status == 200
        span = marked(rx, marker)
        assert span.trace_id == TID and span.parent_id == PID
        # outgoing requests carry B3 (and no traceparent)
        marker = uuid.uuid4().hex
        status, body = get("%s/call/requests?to=%s/headers%%3Fm=%s&m=%s" % (svc.url, svc.url, marker, marker))
        seen = json.loads(json.loads(body)["body"])
        assert "traceparent" not in seen
        spans = trace_of(rx, marker, 3)
        client = one(spans, kind="CLIENT")
        if propagator == "b3":
            assert seen["b3"].startswith("%s-%s-" % (client.trace_id, client.span_id))
        else:
            assert (seen["x-b3-traceid"], seen["x-b3-spanid"]) == (client.trace_id, client.span_id)
        callee = [s for s in spans if s.kind == "SERVER" and s.parent_id == client.span_id]
        assert len(callee) == 1
    finally:
        assert "instrumentation error" not in svc.stop()


def _served(rx, svc, path="/items/5"):
    marker = uuid.uuid4().hex
    status, body = get("%s%s?m=%s" % (svc.url, path, marker))
    assert status == 200, body
    return one(trace_of(rx, marker, 1), kind="SERVER")


@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_gunicorn(rx, worker):
    svc = Service(rx, "svc-gunicorn-" + worker, args=[
        os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-w", "2", "-k", worker, "--threads", "2",
        "-b", "127.0.0.1:{port}", "http_service:app"])
    try:
        spans = [_served(rx, svc) for _ in range(4)]
        assert all(s.name == "GET /items/<int:item_id>" for s in spans)
        assert all(s.service == "svc-gunicorn-" + worker for s in spans)
        span = _served(rx, svc, "/shop/orders/abc")
        assert span.name == "GET /shop/orders/<order_id>"
        assert span.attributes["http.route"] == "/shop/orders/<order_id>"
    finally:
        err = svc.stop()
        assert "instrumentation error" not in err, err


@pytest.mark.parametrize("how", ["reloader", "flask_run", "make_server"])
def test_other_ways_of_serving(rx, how, tmp_path):
    if how == "reloader":
        args = [sys.executable, SERVICE, "{port}", "reloader"]
    elif how == "make_server":
        args = [sys.executable, SERVICE, "{port}", "make_server"]
    else:
        args = [os.path.join(os.path.dirname(sys.executable), "flask"), "--app", "http_service", "run",
                "--port", "{port}"]
    svc = Service(rx, "svc-" + how, args=args)
    try:
        span = _served(rx, svc)
        assert span.name == "GET /items/<int:item_id>" and span.service == "svc-" + how
    finally:
        err = svc.stop()
        assert "instrumentation error" not in err, err


def test_excluded_urls_and_header_capture(rx):
    svc = Service(
        rx, "svc-config",
        OTEL_PYTHON_EXCLUDED_URLS="healthz,/items/13",
        OTEL_PYTHON_FLASK_EXCLUDED_URLS="/items/1[0-9]",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-request-id,authorization,x-secret",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE="content-type",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS="x-secret",
    )
    try:
        marker = uuid.uuid4().hex
        assert get("%s/items/12?m=%s" % (svc.url, marker))[0] == 200
        span = _served(rx, svc, "/items/5")  # arrives after the excluded one would have
        time.sleep(0.3)
        assert not [s for s in rx.spans if marker in s.attributes.get("url.query", "")]
        marker = uuid.uuid4().hex
        get("%s/items/3?m=%s&sig=s3cr3t" % (svc.url, marker),
            [("X-Request-Id", "r1"), ("Authorization", "Bearer tok"), ("X-Secret", "hush")])
        span = one(trace_of(rx, marker, 1), kind="SERVER")
        assert span.attributes["http.request.header.x-request-id"] == ["r1"]
        assert span.attributes["http.request.header.authorization"] == ["[REDACTED]"]
        assert span.attributes["http.request.header.x-secret"] == ["[REDACTED]"]
        assert span.attributes["http.response.header.content-type"] == ["application/json"]
        assert span.attributes["url.query"] == "m=%s&sig=REDACTED" % marker
        raw = rx.raw_bytes()
        assert b"s3cr3t" not in raw and b"Bearer tok" not in raw and b"hush" not in raw
    finally:
        svc.stop()
