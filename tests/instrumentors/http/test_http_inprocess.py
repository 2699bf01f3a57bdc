"""HTTP instrumentors in-process, with the in-memory exporter and a real local server."""

from __future__ import annotations

import asyncio
import threading
import time

import inline_values
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import propagate
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from trace_run.agent.tracecontext import W3CTraceContextPropagator
from trace_run.core import config
from trace_run.instrumentors import http_common
from trace_run.instrumentors.flask import FlaskInstrumentor
from trace_run.instrumentors.http_client import HttpClientInstrumentor
from trace_run.instrumentors.httpx import HttpxInstrumentor
from trace_run.instrumentors.requests import RequestsInstrumentor
from trace_run.instrumentors.urllib3 import Urllib3Instrumentor
from trace_run.instrumentors.wsgi import TraceMiddleware

ALL = (FlaskInstrumentor, RequestsInstrumentor, Urllib3Instrumentor, HttpClientInstrumentor, HttpxInstrumentor)


def make_app():
    import flask

    app = flask.Flask("inprocess")
    bp = flask.Blueprint("bp", __name__, url_prefix="/bp")

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return {"item": item_id}

    @app.route("/headers")
    def headers():
        return {k.lower(): v for k, v in flask.request.headers.items()}

    @app.route("/redirect")
    def redirect_view():
        return flask.redirect("/headers")

    @app.route("/login")
    def login():
        response = flask.redirect("/headers")
        response.set_cookie("sid", "s-1")
        return response

    @app.route("/boom")
    def boom():
        raise KeyError("boom")

    @bp.route("/things/<name>")
    def thing(name):
        return name

    app.register_blueprint(bp)
    return app


@pytest.fixture(scope="module")
def server():
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, make_app(), threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % srv.server_port
    srv.shutdown()


@pytest.fixture
def traced(memory, monkeypatch):
    """Everything instrumented into `memory`; returns the exporter."""
    provider, exporter = memory
    old = propagate.get_global_textmap()
    propagate.set_global_textmap(W3CTraceContextPropagator())
    config.reset()
    http_common.reset()
    for cls in ALL:
        cls().instrument(tracer_provider=provider, skip_dep_check=True)
    yield exporter
    for cls in ALL:
        cls().uninstrument()
    propagate.set_global_textmap(old)
    config.reset()
    http_common.reset()


def reinstrument(provider, **env):
    for cls in ALL:
        cls().uninstrument()
    config.reset()
    http_common.reset()
    for cls in ALL:
        cls().instrument(tracer_provider=provider, skip_dep_check=True)


def clients(spans):
    return [s for s in spans if s.kind == SpanKind.CLIENT]


def server_of(exporter, client):
    """The SERVER span under `client` (it ends on the server thread, maybe a moment later)."""
    deadline = time.monotonic() + 5
    while True:
        found = [s for s in exporter.get_finished_spans()
                 if s.kind == SpanKind.SERVER and s.parent and s.parent.span_id == client.context.span_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(found) == 1, found
    return found[0]


def server_spans(exporter, count):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
        if len(found) >= count:
            break
        time.sleep(0.01)
    time.sleep(0.05)
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


def test_requests_one_span_no_caller_mutation_and_redirects(traced, server):
    import requests

    headers = {"X-Mine": "1"}
    r = requests.get(server + "/items/3?X-Amz-Signature=secret", headers=headers)
    assert r.status_code == 200 and headers == {"X-Mine": "1"}
    spans = traced.get_finished_spans()
    (client,) = clients(spans)  # urllib3 and http.client below made none
    assert client.name == "GET" and client.instrumentation_scope.name.endswith(".requests")
    assert client.attributes["url.full"] == server + "/items/3?X-Amz-Signature=REDACTED"
    assert (client.attributes["server.address"], client.attributes["server.port"]) == (
        "127.0.0.1", int(server.rsplit(":", 1)[1]))  # read from the URL, the span being sampled
    assert server_of(traced, client).name == "GET /items/<int:item_id>"
    traced.clear()
    r = requests.get(server + "/redirect")
    seen = r.json()
    first, second = clients(traced.get_finished_spans())
    assert first.attributes["http.response.status_code"] == 302
    assert first.status.status_code == StatusCode.UNSET  # a redirect is not an error
    assert second.attributes["http.response.status_code"] == 200 and second.status.status_code == StatusCode.UNSET
    assert seen["traceparent"].split("-")[2] == "%016x" % second.context.span_id  # its own traceparent


@pytest.mark.parametrize("url, address", [
    ("https://user:pw@Example.COM/x", ("example.com", 443)),
    ("http://[::1]:8080/x?q=1", ("::1", 8080)),
    ("http://h/x", ("h", 80)),
    ("ftp://h/x", ("h", None)),
])
def test_client_address_read_from_the_url(url, address):
    from trace_run.instrumentors import http_common

    name, attrs = http_common.client_attributes("GET", url, http_common.FROM_URL, None)
    assert name == "GET" and (attrs.get("server.address"), attrs.get("server.port")) == address
    assert "pw" not in attrs["url.full"]


def test_kept_client_attributes_follow_the_settings_and_the_call(monkeypatch):
    """A CLIENT span's name and attributes are kept by method, URL, host and port for the value bound read now
    (config.reset() forgets them); each caller gets its own dict; a URL with userinfo or a query is redacted
    on every call, under the redaction settings read now; another method, host or port gets its own."""
    from trace_run.instrumentors.url_redaction import REDACTED

    def attrs(method, url, host=http_common.FROM_URL, port=None):
        return http_common.client_attributes(method, url, host, port)

    url = "http://h.example/" + "p" * 40
    first = attrs("GET", url)
    first[1]["mine"] = True
    assert attrs("GET", url) == ("GET", {"http.request.method": "GET", "url.full": url,
                                         "server.address": "h.example", "server.port": 80})
    assert attrs("get", url)[0] == "HTTP" and attrs("get", url)[1]["http.request.method_original"] == "get"
    assert attrs("GET", url, "a", 81)[1]["server.address"] == "a" and attrs("GET", url, "b", 82)[1]["server.port"] == 82
    monkeypatch.setenv("OTEL_TRACE_RUN_MAX_VALUE_LENGTH", "16")
    config.reset()
    for _ in range(2):
        assert attrs("GET", url)[1]["url.full"] == "http://h.exam..."
        assert attrs("GET", url)[1]["trace_run.truncated"] == ["url.full"]
    monkeypatch.delenv("OTEL_TRACE_RUN_MAX_VALUE_LENGTH")
    config.reset()
    assert attrs("GET", url)[1]["url.full"] == url and "trace_run.truncated" not in attrs("GET", url)[1]
    secret = "http://u:pw@h.example/x?token=abc"
    for _ in range(2):
        assert attrs("GET", secret)[1]["url.full"] == "http://%s:%s@h.example/x?token=%s" % ((REDACTED,) * 3)
    monkeypatch.setenv("OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS", "none")
    config.reset()
    http_common.reset()
    assert attrs("GET", secret)[1]["url.full"] == "http://%s:%s@h.example/x?token=abc" % ((REDACTED,) * 2)
    config.reset()
    http_common.reset()


def test_requests_prepared_request_sent_twice_is_unchanged(traced, server):
    import requests

    session = requests.Session()
    prepared = requests.Request("GET", server + "/headers").prepare()
    a = session.send(prepared).json()["traceparent"]
    b = session.send(prepared).json()["traceparent"]
    assert "traceparent" not in prepared.headers and a != b


def test_requests_headers_are_copied_as_their_copy_would_copy_them(traced):
    """The sent request's headers: a CaseInsensitiveDict equal to `headers.copy()` (the same items, the
    same store), independent of the caller's; a subclass goes through its own copy()."""
    from requests.structures import CaseInsensitiveDict
    from trace_run.instrumentors import requests as ours

    assert ours._STORE_COPY  # this release's layout was recognised: the fast copy is the one tested here
    headers = CaseInsensitiveDict({"Accept": "a", "X-Y": "b", "content-TYPE": "c"})
    mine, theirs = ours.copy_headers(headers), headers.copy()
    assert type(mine) is type(theirs) and list(mine.items()) == list(theirs.items())
    assert list(mine._store.items()) == list(theirs._store.items()) and vars(mine).keys() == vars(theirs).keys()
    mine["traceparent"], mine["accept"] = "t", "z"
    assert "traceparent" not in headers and headers["Accept"] == "a" and mine["ACCEPT"] == "z"

    class Sub(CaseInsensitiveDict):
        copied = 0

        def copy(self):
            Sub.copied += 1
            return super().copy()

    assert type(ours.copy_headers(Sub({"a": "1"}))) is CaseInsensitiveDict and Sub.copied == 1


def test_requests_cookies_and_the_callers_request_survive_the_sent_copy(traced, server):
    """The request sent is a copy sharing the caller's cookie jar (requests copies a jar before it changes
    one): a cookie set on a redirect reaches the next request and the session, the caller's object and
    jar stay as they were, and a PreparedRequest subclass is copied by its own copy()."""
    import requests

    session = requests.Session()
    r = session.get(server + "/login")
    assert r.json()["cookie"] == "sid=s-1" and session.cookies.get("sid") == "s-1"
    first, second = clients(traced.get_finished_spans())
    assert r.json()["traceparent"].split("-")[2] == "%016x" % second.context.span_id
    assert r.history[0].request.headers["traceparent"].split("-")[2] == "%016x" % first.context.span_id

    prepared = session.prepare_request(requests.Request("GET", server + "/headers", cookies={"k": "v"}))
    prepared.note = "the caller's"
    jar, cookies_before = prepared._cookies, dict(prepared._cookies)
    sent = session.send(prepared)
    assert sent.json()["cookie"] == "sid=s-1; k=v" and "traceparent" not in prepared.headers
    assert sent.request is not prepared and sent.request.note == "the caller's"
    assert "traceparent" in sent.request.headers
    assert prepared._cookies is jar and dict(jar) == cookies_before

    copies = []

    class Counted(requests.PreparedRequest):
        def copy(self):
            copies.append(self)
            return super().copy()

    own = Counted()
    own.prepare(method="GET", url=server + "/headers")
    assert "traceparent" in session.send(own).json() and copies == [own]


def test_urllib3_headers_copy_and_retries(traced, server):
    import urllib3

    headers = {"X-Mine": "1"}
    pool = urllib3.PoolManager()
    r = pool.request("GET", server + "/headers", headers=headers)
    assert headers == {"X-Mine": "1"} and "traceparent" in r.json()
    (client,) = clients(traced.get_finished_spans())
    assert client.instrumentation_scope.name.endswith(".urllib3")
    traced.clear()
    with pytest.raises(urllib3.exceptions.MaxRetryError) as info:
        pool.request("GET", "http://user:pw@127.0.0.1:1/x", retries=urllib3.Retry(connect=2, backoff_factor=0))
    (client,) = clients(traced.get_finished_spans())  # retries stay inside the one span
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes["error.type"] == "urllib3.exceptions.MaxRetryError"
    assert client.events[0].attributes["exception.message"] == str(info.value)
    assert client.attributes["url.full"] == "http://127.0.0.1:1/x"


def test_http_client_keep_alive_two_requests_two_spans(traced, server):
    import http.client
    import urllib.request

    host, port = server.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    for path in ("/items/1", "/items/2"):
        conn.request("GET", path)
        conn.getresponse().read()
    conn.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server + "/boom")
    assert info.value.code == 500
    spans = traced.get_finished_spans()
    a, b, c = clients(spans)
    assert [s.attributes["url.full"] for s in (a, b, c)] == [server + "/items/1", server + "/items/2", server + "/boom"]
    assert c.status.status_code == StatusCode.ERROR and c.attributes["error.type"] == "500"
    boom = server_of(traced, c)
    assert boom.name == "GET /boom" and boom.attributes["error.type"] == "KeyError"
    assert boom.status.status_code == StatusCode.ERROR and boom.events[0].name == "exception"


def test_httpx_sync_and_async_request_object_unchanged(traced, server):
    import httpx

    with httpx.Client() as c:
        req = c.build_request("GET", server + "/headers")
        first = c.send(req).json()["traceparent"]
        second = c.send(req).json()["traceparent"]
    assert "traceparent" not in req.headers and first != second

    async def go():
        async with httpx.AsyncClient() as c:
            return await c.get(server + "/items/9", headers={"X-Mine": "1"})

    assert asyncio.run(go()).status_code == 200
    spans = traced.get_finished_spans()
    assert len(clients(spans)) == 3
    assert server_of(traced, clients(spans)[-1]).name == "GET /items/<int:item_id>"


def test_httpx_transport_error_recorded_and_reraised(traced):
    import httpx

    with pytest.raises(httpx.ConnectError):
        httpx.get("http://127.0.0.1:1/")
    (client,) = clients(traced.get_finished_spans())
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes["error.type"] == "httpx.ConnectError"


def test_suppressed_and_excluded(traced, server, memory, monkeypatch):
    import requests

    with suppress_instrumentation():
        requests.get(server + "/items/1")
    server_spans(traced, 1)  # the server thread is not suppressed
    assert not clients(traced.get_finished_spans())
    traced.clear()
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/items/1$")
    monkeypatch.setenv("OTEL_PYTHON_REQUESTS_EXCLUDED_URLS", "/items/2$,[bad")  # replaces the general one
    reinstrument(memory[0])
    requests.get(server + "/items/1")  # not excluded for requests, excluded for Flask
    requests.get(server + "/items/2")  # excluded for requests, traced by Flask
    spans = traced.get_finished_spans()
    assert [s.attributes["url.full"] for s in clients(spans)] == [server + "/items/1"]
    assert [s.attributes["url.path"] for s in server_spans(traced, 1)] == ["/items/2"]
    assert any("[bad" in w for w in config.WARNINGS)


def test_clients_inside_an_unsampled_trace_make_no_span_and_propagate_its_context(traced, server):
    import http.client

    import httpx
    import requests
    import urllib3
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    parent = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                         trace_flags=TraceFlags(0))
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        seen = [requests.get(server + "/headers").json()["traceparent"],
                urllib3.PoolManager().request("GET", server + "/headers").json()["traceparent"],
                httpx.get(server + "/headers").json()["traceparent"]]
        conn = http.client.HTTPConnection(server.split("//")[1])
        conn.request("GET", "/headers")
        seen.append(__import__("json").loads(conn.getresponse().read())["traceparent"])
    finally:
        context.detach(token)
    assert seen == ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"] * 4
    spans = traced.get_finished_spans()
    assert not clients(spans)  # and the servers, children of an unsampled parent, record nothing either
    assert not spans


def test_a_client_call_under_an_ended_sampled_parent_still_makes_its_span(traced, server, memory):
    import requests
    from opentelemetry import context, trace

    parent = memory[0].get_tracer("t").start_span("parent")
    parent.end()  # not recording any more, but its trace is sampled
    token = context.attach(trace.set_span_in_context(parent))
    try:
        requests.get(server + "/items/3")
    finally:
        context.detach(token)
    spans = traced.get_finished_spans()
    (client,) = clients(spans)
    assert client.parent.span_id == parent.get_span_context().span_id
    assert client.context.trace_id == parent.get_span_context().trace_id


def test_client_header_capture_redacts(traced, server, memory, monkeypatch):
    import requests

    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "x-.*,authorization,cookie")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "content-type")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "x-token")
    reinstrument(memory[0])
    requests.get(server + "/items/1", headers={"X-Token": "t", "X-Plain": "p", "Authorization": "Basic x",
                                               "Cookie": "c=1", "X-Api-Key": "k"})
    (client,) = clients(traced.get_finished_spans())
    a = client.attributes
    assert a["http.request.header.x-plain"] == ("p",)
    for name in ("x-token", "authorization", "cookie", "x-api-key"):
        assert a["http.request.header." + name] == ("[REDACTED]",)
    assert a["http.response.header.content-type"] == ("application/json",)


def test_flask_in_process_routes_methods_and_exceptions(traced):
    app = make_app()
    app.testing = True  # exceptions propagate: the same object must reach the caller
    c = app.test_client()
    r = c.get("/bp/things/x")
    assert r.status_code == 200
    r.close()  # the span ends when the server closes the body
    # Werkzeug upper-cases the method for the app; methods are case-sensitive to semconv
    r = c.open("/items/1", environ_overrides={"REQUEST_METHOD": "get"})
    assert r.status_code == 200
    r.close()
    with pytest.raises(KeyError) as info:
        c.get("/boom")
    spans = traced.get_finished_spans()
    assert [s.name for s in spans] == ["GET /bp/things/<name>", "HTTP /items/<int:item_id>", "GET /boom"]
    assert spans[1].attributes["http.request.method"] == "_OTHER"
    assert spans[1].attributes["http.request.method_original"] == "get"
    boom = spans[2]
    assert boom.status.status_code == StatusCode.ERROR
    assert [e.name for e in boom.events] == ["exception"]  # recorded once, not twice
    assert boom.events[0].attributes["exception.message"] == str(info.value)


def test_trace_middleware_by_hand_and_no_double_span(memory):
    provider, exporter = memory
    closed = []

    class Body:
        def __iter__(self):
            yield b"a"
            yield b"b"

        def close(self):
            closed.append(True)

    def plain(environ, start_response):
        start_response("503 Busy", [("Content-Type", "text/plain")])
        return Body()

    app = TraceMiddleware(TraceMiddleware(plain, tracer_provider=provider), tracer_provider=provider)
    from werkzeug.test import Client

    r = Client(app).get("/x?sig=1", headers={"traceparent": "00-%032x-%016x-01" % (5, 6)})
    assert r.status_code == 503 and r.data == b"ab"
    r.close()
    assert closed
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET" and span.kind == SpanKind.SERVER
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == "503"
    assert span.context.trace_id == 5 and span.parent.span_id == 6
    assert span.attributes["url.query"] == "sig=REDACTED"


def _streamed_body(provider):
    """A two-chunk streaming WSGI response through TraceMiddleware, as a server would get it."""

    def streaming(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one", b"two"])

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/s", "SERVER_NAME": "h", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    return TraceMiddleware(streaming, tracer_provider=provider)(environ, lambda status, headers, exc_info=None: None)


def test_streamed_body_measured_whole_and_ended_without_close(memory):
    """The span lasts until the last chunk is out, and ends even when the server never
    calls close() (werkzeug skips it when the client resets the connection)."""
    provider, exporter = memory

    body = _streamed_body(provider)
    assert next(body) == b"one"
    assert not exporter.get_finished_spans()  # still streaming
    assert next(body) == b"two"
    assert not exporter.get_finished_spans()
    with pytest.raises(StopIteration):
        next(body)
    (span,) = exporter.get_finished_spans()  # no close() was called
    assert span.kind == SpanKind.SERVER and span.attributes["http.response.status_code"] == 200
    body.close()
    assert len(exporter.get_finished_spans()) == 1  # close() after the end ends nothing twice


def test_body_dropped_by_a_failing_server_still_ends_the_span(memory):
    """A server whose write fails (client gone) drops the body unexhausted and unclosed."""
    provider, exporter = memory

    body = _streamed_body(provider)
    assert next(body) == b"one"
    assert not exporter.get_finished_spans()
    del body  # what the server does when writing b"one" raised BrokenPipeError
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.SERVER and span.name == "GET"


@pytest.mark.parametrize("url,expected", [
    ("http://user:pw@h:1/p?q=1", "http://REDACTED:REDACTED@h:1/p?q=1"),
    ("https://token@h/p", "https://REDACTED@h/p"),
    ("https://h/p?a=1&X-Amz-Signature=abc&x-goog-signature=d#f", "https://h/p?a=1&X-Amz-Signature=REDACTED&"
     "x-goog-signature=REDACTED#f"),
    ("https://h/p?sig=s&Signature=t&AWSAccessKeyId=k&design=ok", "https://h/p?sig=REDACTED&Signature=REDACTED&"
     "AWSAccessKeyId=REDACTED&design=ok"),
    ("https://h/p/a@b?x=1", "https://h/p/a@b?x=1"),
    ("/relative?sig=1", "/relative?sig=REDACTED"),
])
def test_redact_url(url, expected):
    assert http_common.redact_url(url) == expected


def test_app_created_before_instrumenting_is_traced(memory):
    from flask import Flask  # bound before instrumenting, as in a program started without the agent

    app = Flask("early")
    app.add_url_rule("/early/<x>", "early", lambda x: x)
    provider, exporter = memory
    FlaskInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    try:
        r = app.test_client().get("/early/1")
        r.close()
    finally:
        FlaskInstrumentor().uninstrument()
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /early/<x>"]
    r = app.test_client().get("/early/2")
    r.close()
    assert len(exporter.get_finished_spans()) == 1  # uninstrumented: nothing more


def test_an_unsampled_request_streams_in_its_context_and_keeps_the_servers_start_response(monkeypatch):
    """A span that does not record gets neither the status wrapper nor the span-ending body: the app's
    start_response is the server's own, and a streamed body still runs in the request's context, so a
    call it makes carries the trace and its not-sampled flag."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    seen, closed = [], []

    def server_start_response(status, headers, exc_info=None):
        seen.append(status)

    def streaming(environ, start_response):
        seen.append(start_response is server_start_response)

        def chunks():
            carrier = {}
            propagate.inject(carrier)
            yield carrier.get("traceparent", "none").encode()

        start_response("200 OK", [("Content-Type", "text/plain")])
        body = chunks()
        return type("Body", (), {"__iter__": lambda self: body, "close": lambda self: closed.append(True)})()

    old = propagate.get_global_textmap()
    propagate.set_global_textmap(W3CTraceContextPropagator())
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/s", "SERVER_NAME": "h", "SERVER_PORT": "80",
                   "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
                   "HTTP_TRACEPARENT": "00-%032x-%016x-00" % (0xAB, 0xCD)}
        body = TraceMiddleware(streaming, tracer_provider=provider)(environ, server_start_response)
        chunks = list(body)
        body.close()
    finally:
        propagate.set_global_textmap(old)
    assert seen == [True, "200 OK"] and closed == [True]
    (header,) = chunks
    trace_id, span_id, flags = header.decode().split("-")[1:]
    assert int(trace_id, 16) == 0xAB and flags == "00" and int(span_id, 16) not in (0, 0xCD)
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached


@pytest.mark.parametrize("sampled", [False, True], ids=["unsampled", "sampled"])
@pytest.mark.parametrize("streamed", [False, True, "own-class"], ids=["held-whole", "streamed", "own-class"])
def test_a_flask_body_is_iterated_in_the_requests_context_only_when_it_runs_app_code(streamed, sampled):
    """Flask's body made already (a list) runs no code of the app while the server iterates it: an
    unsampled request's goes back to the server as Flask made it, a sampled one's is iterated without
    making the context current (its span still ends with the body). A streamed body runs in the
    request's context, so a call it makes carries the trace (and, unsampled, its not-sampled flag).
    Nothing is left attached."""
    from flask import Flask, Response
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
    from trace_run.instrumentors import wsgi
    from werkzeug.test import EnvironBuilder

    def traceparent() -> bytes:
        carrier = {}
        propagate.inject(carrier)
        return carrier.get("traceparent", "none").encode()

    class LazyResponse(Response):  # an app's own class: its body made as the server iterates it
        def iter_encoded(self):
            for chunk in super().iter_encoded():
                yield chunk + b"|" + traceparent()

    app = Flask("bodies")

    @app.route("/r")
    def route():
        if streamed == "own-class":
            return LazyResponse(traceparent())
        if streamed:
            return Response(traceparent() for _ in range(2))
        return traceparent()

    seen = []
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    old = propagate.get_global_textmap()
    propagate.set_global_textmap(W3CTraceContextPropagator())
    FlaskInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    flag = "01" if sampled else "00"
    try:
        environ = EnvironBuilder(path="/r", headers={"traceparent": "00-%032x-%016x-%s" % (0xAB, 0xCD, flag)}
                                 ).get_environ()
        body = app(environ, lambda status, headers, exc_info=None: seen.append(status))
        kind = type(body)
        chunks = list(body)
        ended_with_the_body = len(exporter.get_finished_spans())
        body.close()
    finally:
        FlaskInstrumentor().uninstrument()
        propagate.set_global_textmap(old)
    held = streamed is False
    if sampled:
        expected = wsgi._HeldBody if held else wsgi._TracedBody
    else:
        expected = None if held else wsgi._UnrecordedBody
    ours = kind if kind in (wsgi._UnrecordedBody, wsgi._HeldBody, wsgi._TracedBody) else None  # None: werkzeug's own
    assert seen == ["200 OK"] and ours is expected
    assert environ[wsgi.ENVIRON_KEY].held_whole is held
    assert len(chunks) == (2 if streamed is True else 1)
    if streamed == "own-class":  # made in the view, then while the server iterated the body
        chunks = chunks[0].split(b"|")
    span_ids = set()
    for chunk in chunks:
        trace_id, span_id, flags = chunk.decode().split("-")[1:]
        assert int(trace_id, 16) == 0xAB and flags == flag and int(span_id, 16) not in (0, 0xCD)
        span_ids.add(int(span_id, 16))
    assert len(span_ids) == 1  # the request's own (server) span, current while each chunk was made
    if sampled:
        (span,) = exporter.get_finished_spans()
        assert ended_with_the_body == 1  # ended as the body ran out, before the server's close()
        assert span.name == "GET /r" and span.kind is SpanKind.SERVER and span.context.span_id in span_ids
        assert span.parent.span_id == 0xCD and span.attributes["http.response.status_code"] == 200
    else:
        assert exporter.get_finished_spans() == ()
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.parametrize("headers", [{}, {"HTTP_TRACEPARENT": "00-%032x-%016x-01" % (7, 8)},
                                     {"HTTP_BAGGAGE": "k=v"}, {"HTTP_TRACESTATE": "a=b"}, {"HTTP_TRACEPARENT": ""}],
                         ids=["none", "traceparent", "baggage", "tracestate-alone", "empty-traceparent"])
@pytest.mark.parametrize("outer", [False, True], ids=["no-context", "current-context"])
@pytest.mark.parametrize("propagators", ["tracecontext,baggage", "baggage,tracecontext", "tracecontext,baggage,b3"])
def test_the_server_side_extract_answers_as_the_propagators_do(headers, outer, propagators):
    """wsgi.extract skips the propagators only where they would change nothing (the default pair, none
    of their headers); everywhere its answer is propagate.extract's."""
    from opentelemetry import baggage, trace
    from trace_run.agent.sdk import build_propagator
    from trace_run.instrumentors import propagation, wsgi

    old = propagate.get_global_textmap()
    propagate.set_global_textmap(build_propagator(propagators.split(",")))
    environ = {"REQUEST_METHOD": "GET", **headers}
    try:
        outer_ctx = baggage.set_baggage("outer", "1") if outer else None
        ours = wsgi.extract(environ, outer_ctx)
        theirs = propagate.extract(environ, context=outer_ctx, getter=wsgi.getter)
        assert propagation.default_pair() is (propagators == "tracecontext,baggage")  # where it may skip them
    finally:
        propagate.set_global_textmap(old)
    assert set(ours) == set(theirs)  # the same keys; the span and baggage under them compared below
    assert trace.get_current_span(ours).get_span_context() == trace.get_current_span(theirs).get_span_context()
    assert baggage.get_all(ours) == baggage.get_all(theirs)


def _sdk_pair():
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


@pytest.mark.parametrize("span_context", [
    dict(trace_id=0xA1, span_id=0xB2, trace_flags=1), dict(trace_id=0xA1, span_id=0xB2, trace_flags=0),
    dict(trace_id=0xA1, span_id=0xB2, trace_flags=3), dict(trace_id=0xA1, span_id=0xB2, trace_flags=2),
    dict(trace_id=0xA1, span_id=0xB2, trace_flags=1, trace_state=[("vendor", "v1"), ("other", "o")]),
    dict(trace_id=0, span_id=0xB2, trace_flags=1), dict(trace_id=0, span_id=0, trace_flags=0)],
    ids=["sampled", "unsampled", "random-bit-sampled", "random-bit", "tracestate", "zero-trace-id", "invalid"])
@pytest.mark.parametrize("with_baggage", [False, True], ids=["no-baggage", "baggage"])
@pytest.mark.parametrize("propagators", ["tracecontext,baggage", "sdk-pair", "baggage,tracecontext",
                                         "tracecontext,baggage,b3", "tracecontext"])
def test_the_client_side_inject_writes_what_the_propagators_write(span_context, with_baggage, propagators):
    """propagation.inject skips the propagators only where their answer is known (the default pair, the
    agent's or the SDK's, no trace state, no baggage, a valid context); its headers are
    propagate.inject's everywhere, into a plain dict and into requests' case-insensitive one."""
    from opentelemetry import baggage, context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
    from requests.structures import CaseInsensitiveDict
    from trace_run.agent.sdk import build_propagator
    from trace_run.instrumentors import propagation

    fields = dict(span_context)
    fields["trace_flags"] = TraceFlags(fields["trace_flags"])
    fields["trace_state"] = TraceState(fields.get("trace_state", []))
    span = NonRecordingSpan(SpanContext(is_remote=False, **fields))
    old = propagate.get_global_textmap()
    textmap = _sdk_pair() if propagators == "sdk-pair" else build_propagator(propagators.split(","))
    propagate.set_global_textmap(textmap)
    token = context.attach(baggage.set_baggage("tenant", "t-1")) if with_baggage else None
    try:
        for make in (dict, CaseInsensitiveDict):
            ours, theirs = make(accept="*/*"), make(accept="*/*")
            propagation.inject(ours, span)
            propagate.inject(theirs, context=trace.set_span_in_context(span))
            assert dict(ours) == dict(theirs)
            if fields["trace_id"] and fields["span_id"]:
                assert ours["traceparent"].startswith("00-%032x-%016x-" % (fields["trace_id"], fields["span_id"]))
        assert propagation.default_pair() is (propagators in ("tracecontext,baggage", "sdk-pair"))
        line = propagation.wire_line(span)  # the same header as a line for http.client, where nothing else goes
        if line is not None:
            theirs = {}
            propagate.inject(theirs, context=trace.set_span_in_context(span))
            assert theirs == {"traceparent": line[len(b"traceparent: "):].decode()}
        plain = fields["trace_id"] and fields["span_id"] and "trace_state" not in span_context and not with_baggage
        assert (line is not None) == bool(plain and propagation.default_pair())
    finally:
        if token is not None:
            context.detach(token)
        propagate.set_global_textmap(old)


@pytest.mark.parametrize("held", [{}, {"tenant": "t-1"}, None, 0, "not a dict", ["x"]], ids=repr)
def test_inject_reads_baggage_held_in_a_context_as_get_all_does(held):
    """Whatever a context holds under baggage's key (a program may set anything there), inject writes what the
    propagators write: a baggage header only for a dict with entries."""
    from opentelemetry import baggage, context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    from trace_run.instrumentors import propagation

    span = NonRecordingSpan(SpanContext(0xA1, 0xB2, False, TraceFlags(1)))
    old = propagate.get_global_textmap()
    propagate.set_global_textmap(_sdk_pair())
    token = context.attach(context.set_value(baggage._BAGGAGE_KEY, held))
    try:
        ours, theirs = {}, {}
        propagation.inject(ours, span)
        propagate.inject(theirs, context=trace.set_span_in_context(span))
        assert ours == theirs and ours["traceparent"] == "00-%032x-%016x-01" % (0xA1, 0xB2)
        assert ("baggage" in ours) is (held == {"tenant": "t-1"})
    finally:
        context.detach(token)
        propagate.set_global_textmap(old)


_BASE = {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "wsgi.url_scheme": "http", "SERVER_NAME": "srv",
         "SERVER_PORT": "8000", "REMOTE_ADDR": "10.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1"}


@pytest.mark.parametrize("extra, expected", [
    ({}, {"server.address": "srv", "server.port": 8000}),
    ({"HTTP_HOST": "example.com"}, {"server.address": "example.com"}),
    ({"HTTP_HOST": "example.com:8443"}, {"server.address": "example.com", "server.port": 8443}),
    ({"HTTP_HOST": "[::1]:9000"}, {"server.address": "::1", "server.port": 9000}),
    ({"HTTP_HOST": "[::1]"}, {"server.address": "::1"}),
    ({"HTTP_HOST": "fe80::1"}, {"server.address": "fe80::1"}),
    ({"HTTP_HOST": "h:notaport"}, {"server.address": "h"}),
    ({"REQUEST_METHOD": "get"}, {"http.request.method": "_OTHER", "http.request.method_original": "get"}),
    ({"REQUEST_METHOD": "PURGE"}, {"http.request.method": "_OTHER", "http.request.method_original": "PURGE"}),
    ({"PATH_INFO": "/caf\xc3\xa9", "SCRIPT_NAME": "/app"}, {"url.path": "/app/caf\xe9"}),
    ({"PATH_INFO": ""}, {"url.path": "/"}),
    ({"PATH_INFO": "/\xff"}, {"url.path": "/\xff"}),
    ({"HTTP_X_FORWARDED_FOR": " 1.2.3.4 , 10.0.0.9"}, {"client.address": "1.2.3.4"}),
    ({"SERVER_PROTOCOL": "HTTP/2"}, {"network.protocol.version": "2"}),
    ({"SERVER_PROTOCOL": "HTTP/3.0"}, {"network.protocol.version": "3.0"}),
    ({"HTTP_USER_AGENT": "curl/8"}, {"user_agent.original": "curl/8"}),
], ids=lambda v: repr(v)[:40])
def test_server_attributes_of_one_request(extra, expected):
    """The SERVER span's attributes, case by case (method, host and port, path decoding, client,
    protocol): the name is the method, or HTTP for one outside the known set."""
    from trace_run.instrumentors.wsgi import server_attributes

    name, attrs = server_attributes({**_BASE, **extra})
    want = {"http.request.method": "GET", "url.scheme": "http", "url.path": "/p", "server.address": "srv",
            "server.port": 8000, "client.address": "10.0.0.1", "network.protocol.version": "1.1"}
    if "HTTP_HOST" in extra:
        del want["server.port"]
    want.update(expected)
    assert attrs == want
    assert name == ("HTTP" if attrs["http.request.method"] == "_OTHER" else "GET")


_URL_PIECES = st.sampled_from(["http", "https", "ftp", "HTTP", "h", "", "://", ":", "//", "/", "?", "#", "@", "[",
                               "]", "::1", "user:pw", "Example.COM", "8080", "99999", "x", "\t", " ", "%40", "é", "a=b",
                               ";"])


@given(st.lists(_URL_PIECES, max_size=12).map("".join))
@settings(max_examples=600, deadline=None)
def test_server_address_and_port_of_a_url_are_urlsplits_whatever_the_url(url):
    """http_common._address keeps (host, port) by the URL's scheme and authority: for any URL (odd ones
    too), what it answers, or raises, is what urlsplit's hostname and port give for the whole URL, on
    the first call and on the next (kept) one; an authority with userinfo is never kept."""
    from trace_run.instrumentors import http_common

    def outcome(f):
        try:
            return f(url)
        except ValueError as exc:
            return ("ValueError", str(exc))

    expected = outcome(http_common._parse_address)
    assert outcome(http_common._address) == expected
    assert outcome(http_common._address) == expected
    assert not any("@" in key for key in http_common._ADDRESSES)


@given(st.lists(_URL_PIECES, max_size=12).map("".join))
@settings(max_examples=300, deadline=None)
def test_a_url_without_userinfo_or_query_is_its_own_redaction(url):
    """redact_url skips the redaction of a URL with neither `@` nor `?`: the redaction itself leaves
    every such URL as it is, and redacts as before where either is present."""
    from trace_run.instrumentors import url_redaction

    if "@" not in url and "?" not in url:
        assert url_redaction._redact(url) == url and url_redaction.redact_url(url) is url
    else:
        assert url_redaction.redact_url(url) == url_redaction._redact(url)



@pytest.mark.skipif(not inline_values.observable(),
                    reason="this interpreter has no inline attribute values a __dict__ read replaces (3.11, 3.12 do)")
def test_the_programs_connections_and_adapters_keep_their_inline_attributes(traced, server):
    """The instrumentors never read the `__dict__` of the program's connections, adapters or headers: doing so
    made http.client's own attribute reads of a pooled connection take the interpreter's slow path for good."""
    import http.client

    import requests

    host, port = server.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("GET", "/items/1")
    conn.getresponse().read()  # a span of this layer: pending on the connection from putrequest to the answer
    session = requests.Session()
    with session:
        for path in ("/items/2", "/headers"):  # the wire path: the pooled connection's putrequest sends the line
            response = session.get(server + path)
        adapter = session.get_adapter(server)
        (pooled,) = [c for pool in adapter.poolmanager.pools._container.values() for c in pool.pool.queue if c]
        assert inline_values.dict_made(pooled, "sock") is False
        assert inline_values.dict_made(adapter, "max_retries") is False
        assert inline_values.dict_made(response.request.headers, "_store") is False
    assert inline_values.dict_made(conn, "sock") is False
    conn.close()
    a, b, c = clients(traced.get_finished_spans())
    assert [s.attributes["url.full"] for s in (a, b, c)] == [server + p for p in ("/items/1", "/items/2", "/headers")]
    assert response.json()["traceparent"] == "00-%032x-%016x-01" % (c.context.trace_id, c.context.span_id)
    assert server_of(traced, a).parent.span_id == a.context.span_id


def test_a_connection_dropped_before_its_answer_takes_its_pending_span_along(traced, server):
    import gc
    import http.client

    from trace_run.instrumentors import http_client

    host, port = server.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("GET", "/items/3")
    assert id(conn) in http_client._PENDING
    conn.sock.close()
    del conn
    gc.collect()
    assert http_client._PENDING == {}
    assert clients(traced.get_finished_spans()) == []  # never answered nor closed: not ended, as before
    again = http.client.HTTPConnection(host, int(port))  # the next connection's span is its own
    again.request("GET", "/items/4")
    again.getresponse().read()
    again.close()
    (span,) = clients(traced.get_finished_spans())
    assert span.attributes["url.full"] == server + "/items/4" and span.attributes["http.response.status_code"] == 200
