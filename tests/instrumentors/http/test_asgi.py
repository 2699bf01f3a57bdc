"""The ASGI TraceMiddleware: in process with hand-written scope/receive/send, and under a real uvicorn."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind, StatusCode
from support import free_port
from support.asgi_server import serve, servers
from trace_run.core import config
from trace_run.instrumentors import http_common
from trace_run.instrumentors.asgi import TraceMiddleware, set_route

PARENT = "00-%032x-%016x-01" % (7, 9)


def http_scope(path="/items/3", query=b"q=1", headers=(), method="GET"):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": query, "headers": [(b"host", b"example.test:8000"), (b"user-agent", b"t/1")]
            + list(headers), "client": ("10.0.0.5", 5555), "server": ("127.0.0.1", 8000)}


class Driver:
    """Feeds `incoming` messages to the app and records what it sends, with the spans ended at each send."""

    def __init__(self, exporter, incoming=()):
        self.exporter = exporter
        self.incoming = list(incoming) or [{"type": "http.request", "body": b"", "more_body": False}]
        self.sent = []

    async def receive(self):
        if self.incoming:
            return self.incoming.pop(0)
        await asyncio.sleep(3600)

    async def send(self, message):
        self.sent.append((message["type"], len(self.exporter.get_finished_spans())))


def fresh_settings() -> None:
    """Variables are read once and kept: forget them (before and after a test that sets some)."""
    config.reset()
    http_common.reset()


def run(app, scope, driver):
    asyncio.run(app(scope, driver.receive, driver.send))


def simple_app(status=200, chunks=(b"hello",)):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain")]})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
    return app


def test_one_server_span_per_request_with_http_attributes(memory):
    provider, exporter = memory
    run(TraceMiddleware(simple_app(), tracer_provider=provider), http_scope(), Driver(exporter))
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET" and span.kind == SpanKind.SERVER
    a = span.attributes
    assert a["http.request.method"] == "GET" and a["url.path"] == "/items/3" and a["url.query"] == "q=1"
    assert a["url.scheme"] == "http" and a["server.address"] == "example.test" and a["server.port"] == 8000
    assert a["client.address"] == "10.0.0.5" and a["user_agent.original"] == "t/1"
    assert a["http.response.status_code"] == 200 and a["network.protocol.version"] == "1.1"
    assert span.status.status_code == StatusCode.UNSET


def test_query_string_given_as_str_is_read_as_bytes_would_be(memory, capfd):
    """The spec says bytes; Django's AsyncRequestFactory sends a str: same span, no error line."""
    provider, exporter = memory
    run(TraceMiddleware(simple_app(), tracer_provider=provider), http_scope(query="q=1&n=2"), Driver(exporter))
    (span,) = exporter.get_finished_spans()
    assert span.attributes["url.query"] == "q=1&n=2" and span.attributes["http.response.status_code"] == 200
    assert "instrumentation error" not in capfd.readouterr().err


def test_incoming_traceparent_is_the_parent(memory):
    provider, exporter = memory
    run(TraceMiddleware(simple_app(), tracer_provider=provider),
        http_scope(headers=[(b"traceparent", PARENT.encode())]), Driver(exporter))
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == 7 and span.parent.span_id == 9 and span.parent.is_remote


def test_garbage_traceparent_starts_a_new_trace(memory):
    provider, exporter = memory
    run(TraceMiddleware(simple_app(), tracer_provider=provider),
        http_scope(headers=[(b"traceparent", b"\xff-zz-\x00")]), Driver(exporter))
    (span,) = exporter.get_finished_spans()
    assert span.parent is None


def test_streamed_response_is_measured_whole(memory):
    """The span ends after the last chunk (more_body false), not at http.response.start."""
    provider, exporter = memory
    driver = Driver(exporter)
    run(TraceMiddleware(simple_app(chunks=(b"a", b"b", b"c")), tracer_provider=provider), http_scope(), driver)
    assert driver.sent == [("http.response.start", 0), ("http.response.body", 0), ("http.response.body", 0),
                           ("http.response.body", 0)]
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 200


def test_client_disconnect_mid_stream_ends_the_span(memory):
    provider, exporter = memory
    seen = {}

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await receive()  # the client went away
        seen["after_disconnect"] = len(exporter.get_finished_spans())
        await asyncio.sleep(0)

    driver = Driver(exporter, [{"type": "http.request", "body": b"", "more_body": False},
                               {"type": "http.disconnect"}])
    run(TraceMiddleware(app, tracer_provider=provider), http_scope(), driver)
    assert seen["after_disconnect"] == 1
    (span,) = exporter.get_finished_spans()
    # the client's doing, not the server's error: UNSET, with an event saying what happened
    assert span.status.status_code == StatusCode.UNSET and "error.type" not in span.attributes
    assert [e.name for e in span.events] == ["http.client_disconnected"]
    assert span.attributes["http.response.status_code"] == 200


def test_disconnect_after_the_response_is_no_event(memory):
    provider, exporter = memory

    async def app(scope, receive, send):
        await simple_app()(scope, receive, send)
        await receive()  # servers answer http.disconnect once the response is out

    driver = Driver(exporter, [{"type": "http.request", "body": b"", "more_body": False},
                               {"type": "http.disconnect"}])
    run(TraceMiddleware(app, tracer_provider=provider), http_scope(), driver)
    (span,) = exporter.get_finished_spans()
    assert span.events == () and span.status.status_code == StatusCode.UNSET


def test_send_raising_oserror_is_a_disconnect_and_propagates(memory):
    """ASGI 2.4 servers raise an OSError from send() once the client is gone."""
    provider, exporter = memory
    gone = OSError("client gone")

    class Closing(Driver):
        async def send(self, message):
            if message["type"] == "http.response.body":
                raise gone
            await super().send(message)

    with pytest.raises(OSError) as info:
        run(TraceMiddleware(simple_app(), tracer_provider=provider), http_scope(), Closing(exporter))
    assert info.value is gone
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.UNSET and "error.type" not in span.attributes
    assert [e.name for e in span.events] == ["http.client_disconnected"]


def test_exception_propagates_unchanged_and_marks_the_span(memory):
    provider, exporter = memory
    boom = KeyError("boom")

    async def app(scope, receive, send):
        raise boom

    with pytest.raises(KeyError) as info:
        run(TraceMiddleware(app, tracer_provider=provider), http_scope(), Driver(exporter))
    assert info.value is boom
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == "KeyError"


def test_5xx_response_is_an_error(memory):
    provider, exporter = memory
    run(TraceMiddleware(simple_app(status=503), tracer_provider=provider), http_scope(), Driver(exporter))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == "503"
    assert span.attributes["http.response.status_code"] == 503


def test_lifespan_passes_through_without_a_span(memory):
    provider, exporter = memory
    got = []

    async def app(scope, receive, send):
        message = await receive()
        got.append((scope["type"], message["type"]))
        await send({"type": "lifespan.startup.complete"})

    driver = Driver(exporter, [{"type": "lifespan.startup"}])
    run(TraceMiddleware(app, tracer_provider=provider), {"type": "lifespan", "asgi": {"version": "3.0"}}, driver)
    assert got == [("lifespan", "lifespan.startup")] and driver.sent == [("lifespan.startup.complete", 0)]
    assert exporter.get_finished_spans() == ()


def test_websocket_gets_one_span_per_connection(memory):
    provider, exporter = memory
    ends = []

    async def app(scope, receive, send):
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        for _ in range(2):
            message = await receive()
            await send({"type": "websocket.send", "text": message["text"]})
        ends.append(len(exporter.get_finished_spans()))
        await send({"type": "websocket.close", "code": 1000})
        ends.append(len(exporter.get_finished_spans()))

    scope = dict(http_scope(path="/ws"), type="websocket", scheme="ws")
    del scope["method"]
    driver = Driver(exporter, [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "a"},
                               {"type": "websocket.receive", "text": "b"}])
    run(TraceMiddleware(app, tracer_provider=provider), scope, driver)
    assert ends == [0, 1]
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.SERVER and span.attributes["url.path"] == "/ws" and span.name == "GET"
    assert span.attributes["url.scheme"] == "ws" and span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.response.status_code"] == 101 and span.status.status_code == StatusCode.UNSET


def ws_scope():
    scope = dict(http_scope(path="/ws"), type="websocket", scheme="ws")
    del scope["method"]
    return scope


def test_websocket_closed_by_the_client_ends_the_span(memory):
    provider, exporter = memory
    seen = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        seen.append((message["type"], len(exporter.get_finished_spans())))

    driver = Driver(exporter, [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1001}])
    run(TraceMiddleware(app, tracer_provider=provider), ws_scope(), driver)
    assert seen == [("websocket.disconnect", 1)]
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 101 and span.status.status_code == StatusCode.UNSET
    assert span.events == ()


@pytest.mark.parametrize("refusal,status", [
    ([{"type": "websocket.close", "code": 1008}], 403),
    ([{"type": "websocket.http.response.start", "status": 401, "headers": []},
      {"type": "websocket.http.response.body", "body": b"no"}], 401),
    ([{"type": "websocket.http.response.start", "status": 503, "headers": []},
      {"type": "websocket.http.response.body", "body": b"x", "more_body": True},
      {"type": "websocket.http.response.body", "body": b"y"}], 503),
])
def test_refused_websocket_has_the_refusal_status(memory, refusal, status):
    """Closed before accept: the server answers the handshake 403; the denial-response extension sends its own."""
    provider, exporter = memory
    ends = []

    async def app(scope, receive, send):
        await receive()
        for message in refusal:
            ends.append(len(exporter.get_finished_spans()))
            await send(message)
        ends.append(len(exporter.get_finished_spans()))

    driver = Driver(exporter, [{"type": "websocket.connect"}])
    run(TraceMiddleware(app, tracer_provider=provider), ws_scope(), driver)
    assert ends == [0] * len(refusal) + [1]  # ended by the last message, not before
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == status
    assert span.status.status_code == (StatusCode.ERROR if status >= 500 else StatusCode.UNSET)


def test_excluded_urls_are_not_traced(memory, monkeypatch):
    provider, exporter = memory
    monkeypatch.setenv("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "/health")
    fresh_settings()
    try:
        app = TraceMiddleware(simple_app(), tracer_provider=provider)
    finally:
        fresh_settings()
    driver = Driver(exporter)
    run(app, http_scope(path="/health", query=b""), driver)
    assert driver.sent[0][0] == "http.response.start"
    run(app, http_scope(path="/items/1"), Driver(exporter))
    assert [s.attributes["url.path"] for s in exporter.get_finished_spans()] == ["/items/1"]


def test_nested_middleware_and_route_hook_give_one_named_span(memory):
    provider, exporter = memory
    inner = simple_app()

    async def framework(scope, receive, send):
        set_route(scope, "/items/{item_id}")
        await inner(scope, receive, send)

    app = TraceMiddleware(TraceMiddleware(framework, tracer_provider=provider), tracer_provider=provider)
    run(app, http_scope(), Driver(exporter))
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{item_id}" and span.attributes["http.route"] == "/items/{item_id}"


APP = '''
from opentelemetry import trace
from trace_run.instrumentors.asgi import TraceMiddleware


async def raw(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await receive()
    ctx = trace.get_current_span().get_span_context()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": ("%032x" % ctx.trace_id).encode()})


app = TraceMiddleware(raw)
'''


def serve_uvicorn(tmp_path, source: str, path: str, headers=()):
    """Run `asgiapp:app` from `source` under `trace-run uvicorn`, GET `path`: (status, body, SERVER spans, port)."""
    port = free_port()
    [(status, body)], spans, _err = serve(tmp_path, source, [(path, headers)], expect=1, port=port)
    return status, body, servers(spans), port


def test_plain_asgi_app_under_trace_run_uvicorn(tmp_path):
    status, body, servers, port = serve_uvicorn(tmp_path, APP, "/things/5?mark=asgi1", [("traceparent", PARENT)])
    assert status == 200 and body == "%032x" % 7  # the app ran inside the span
    (span,) = servers
    assert span.name == "GET" and span.trace_id == "%032x" % 7 and span.parent_id == "%016x" % 9, span
    assert span.attributes["url.path"] == "/things/5" and span.attributes["url.query"] == "mark=asgi1"
    assert span.attributes["http.response.status_code"] == 200 and span.attributes["server.port"] == port


def test_header_capture_and_redaction_as_for_wsgi(memory, monkeypatch):
    provider, exporter = memory
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-.*,authorization")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-type")
    fresh_settings()
    try:
        run(TraceMiddleware(simple_app(), tracer_provider=provider),
            http_scope(headers=[(b"X-Tenant", b"acme"), (b"x-tenant", b"two"), (b"authorization", b"Bearer s")]),
            Driver(exporter))
    finally:
        fresh_settings()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.request.header.x-tenant"] == ("acme,two",)
    assert span.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    assert span.attributes["http.response.header.content-type"] == ("text/plain",)


# -- fuzzed propagation headers: the request is served, one span, no instrumentation error ------------

PROPAGATION = ["traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
               "x-b3-flags", "x-b3-parentspanid", "host", "x-forwarded-for", "content-length", "user-agent"]
HEXISH = st.text(alphabet="0123456789abcdefABCDEF-xz=,;: \t\x00\x7f", max_size=80)
NEAR_TRACEPARENT = st.builds(lambda v, t, s, f, tail: "%s-%s-%s-%s%s" % (v, t, s, f, tail),
                             HEXISH, HEXISH, HEXISH, HEXISH, st.sampled_from(["", "-", "-x", "\x00"]))
VALUES = st.one_of(st.binary(max_size=300), HEXISH.map(str.encode),
                   NEAR_TRACEPARENT.map(lambda s: s.encode("latin-1")))
HEADERS = st.lists(st.tuples(st.one_of(st.sampled_from(PROPAGATION).map(str.encode), st.binary(max_size=20)),
                             VALUES), max_size=8)


@pytest.fixture
def every_propagator(monkeypatch):
    """tracecontext, baggage and both B3 forms at once, trace-run's instrumentation errors raised."""
    from opentelemetry import propagate
    from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
    from opentelemetry.propagators.composite import CompositePropagator
    from trace_run.core import guard

    monkeypatch.setattr(guard, "RAISE", True)
    old = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([old, B3SingleFormat(), B3MultiFormat()]))
    yield
    propagate.set_global_textmap(old)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=HEADERS, path=st.text(max_size=30), query=st.binary(max_size=40),
       websocket=st.booleans())
def test_fuzzed_headers_never_fail_a_request(memory, every_propagator, headers, path, query, websocket):
    provider, exporter = memory
    exporter.clear()
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["headers"][2:])
        await receive()
        if websocket:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    scope = http_scope(path="/" + path, query=query, headers=headers)
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]
    if websocket:
        scope = dict(scope, type="websocket", scheme="ws")
        del scope["method"]
        incoming = [{"type": "websocket.connect"}]
    driver = Driver(exporter, incoming)
    run(TraceMiddleware(app, tracer_provider=provider), scope, driver)
    assert calls == [headers]  # the app saw the headers it was sent, once
    assert [kind for kind, _ in driver.sent] == (["websocket.accept", "websocket.close"] if websocket
                                                 else ["http.response.start", "http.response.body"])
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.SERVER and span.status.status_code == StatusCode.UNSET
