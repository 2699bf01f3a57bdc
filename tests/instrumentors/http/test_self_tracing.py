"""Libraries that trace themselves: exactly one SERVER span per request, whoever makes it.

Real uvicorn servers under trace-run with FastAPI's own telemetry on and off, and
with Starlette's OpenTelemetryMiddleware in and around the app; in process, the
detectors of instrumentors/self_tracing.py on the real classes. The upstream
instrumentors and a FastAPI release that predates its telemetry are tested in a
virtualenv: tests/test_thirdparty.py.
"""

from __future__ import annotations

from support.asgi_server import serve, servers
from trace_run.instrumentors import self_tracing

PARENT_TRACE, PARENT_SPAN = "%032x" % 0xABC, "%016x" % 0xDEF
TRACEPARENT = "00-%s-%s-01" % (PARENT_TRACE, PARENT_SPAN)


FASTAPI_APP = '''
import http.client
import sqlite3

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

app = FastAPI(%s)
app.mount("/sub", Starlette(routes=[Route("/deep/{name}", lambda request: PlainTextResponse("deep"))]))


@app.get("/items/{item_id}")
def item(item_id: int):
    db = sqlite3.connect(":memory:")
    db.execute("SELECT 1").fetchall()
    conn = http.client.HTTPConnection("127.0.0.1", APP_PORT)  # a call to itself: the peer's SERVER span
    conn.request("GET", "/peer")
    peer = conn.getresponse().read().decode()
    return {"item": item_id, "peer": peer}


@app.get("/peer")
def peer():
    return PlainTextResponse("peer", headers={"x-answer": "42"})


@app.get("/health")
def health():
    return PlainTextResponse("ok")
'''


def serve_fastapi(tmp_path, telemetry: str, requests: list, expect: int, **env):
    return serve(tmp_path, FASTAPI_APP % telemetry, requests, expect=expect, **env)


CAPTURE = dict(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-req,authorization",
               OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE="x-answer")


def test_fastapi_own_spans_with_trace_run_propagation_exclusions_and_redaction(tmp_path):
    """FastAPI 0.142+ traces itself: its SERVER span is the request's only one, continuing the caller's b3
    headers (trace-run's propagators), with trace-run's client spans under it and its outgoing call carrying
    the context on; the excluded URL has no span at all; trace-run's query redaction and header capture are on
    FastAPI's span."""
    b3 = [("X-B3-TraceId", PARENT_TRACE), ("X-B3-SpanId", PARENT_SPAN), ("X-B3-Sampled", "1"),
          ("x-req", "r1"), ("Authorization", "Bearer secret")]
    answers, spans, _ = serve_fastapi(
        tmp_path, "", [("/items/7?token=abc123&q=1", b3), ("/health", []), ("/sub/deep/x", [])], expect=3,
        OTEL_PROPAGATORS="b3multi", OTEL_PYTHON_FASTAPI_EXCLUDED_URLS="/health", **CAPTURE)
    assert answers == [(200, '{"item":7,"peer":"peer"}'), (200, "ok"), (200, "deep")]
    by_name = {s.name: s for s in servers(spans)}
    assert len(servers(spans)) == 3, servers(spans)  # one for the Starlette app mounted in it too, FastAPI's
    assert sorted(by_name) == ["GET /items/{item_id}", "GET /peer", "GET /sub/{path}"], servers(spans)
    assert by_name["GET /sub/{path}"].scope.startswith("fastapi")
    item, peer = by_name["GET /items/{item_id}"], by_name["GET /peer"]
    assert item.scope.startswith("fastapi") and peer.scope.startswith("fastapi")
    assert item.trace_id == PARENT_TRACE and item.parent_id == PARENT_SPAN
    assert item.attributes["url.query"] == "token=REDACTED&q=1"  # FastAPI itself leaves `token` as it is
    assert item.attributes["http.request.header.x-req"] == ["r1"]
    assert item.attributes["http.request.header.authorization"] == ["[REDACTED]"]
    assert peer.attributes["http.response.header.x-answer"] == ["42"]
    ids = {s.span_id: s for s in spans}
    (db,) = [s for s in spans if s.attributes.get("db.system.name") == "sqlite"]
    (client,) = [s for s in spans if s.kind == "CLIENT" and s.attributes.get("http.request.method")]
    for child in (db, client):  # trace-run's spans sit under FastAPI's (its endpoint span is their parent)
        assert child.trace_id == PARENT_TRACE
        parent = ids[child.parent_id]
        while parent.kind != "SERVER":
            parent = ids[parent.parent_id]
        assert parent is item
    assert peer.parent_id == client.span_id and peer.trace_id == PARENT_TRACE  # b3 out, FastAPI's b3 in
    assert not [s for s in spans if "/health" in str(s.attributes.get("url.path"))]


def test_fastapi_with_its_tracing_off_gets_trace_runs_span(tmp_path):
    answers, spans, _ = serve_fastapi(
        tmp_path, 'telemetry={"tracing": False}', [("/items/7?token=abc", [("traceparent", TRACEPARENT)]),
                                                   ("/health", []), ("/sub/deep/x", [])],
        expect=3, OTEL_PYTHON_EXCLUDED_URLS="/health")
    assert answers[0] == (200, '{"item":7,"peer":"peer"}')
    by_name = {s.name: s for s in servers(spans)}
    assert len(servers(spans)) == 3, servers(spans)
    assert sorted(by_name) == ["GET /items/{item_id}", "GET /peer", "GET /sub/deep/{name}"], servers(spans)
    item = by_name["GET /items/{item_id}"]
    assert item.scope == "trace_run.instrumentors.starlette", item.scope
    assert item.trace_id == PARENT_TRACE and item.parent_id == PARENT_SPAN
    assert item.attributes["http.route"] == "/items/{item_id}" and item.attributes["url.query"] == "token=REDACTED"
    assert not [s for s in spans if s.scope.startswith("fastapi")]  # no fastapi.* operation spans either


STARLETTE_MIDDLEWARE_APP = '''
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.opentelemetry import OpenTelemetryMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def item(request):
    return PlainTextResponse("item")


inner = Starlette(routes=[Route("/items/{item_id}", item)], middleware=[Middleware(OpenTelemetryMiddleware)])
outer = OpenTelemetryMiddleware(Starlette(routes=[Route("/items/{item_id}", item)]))


async def app(scope, receive, send):  # /out/... reaches an app wrapped from outside
    if scope["type"] == "http" and scope["path"].startswith("/out/"):
        scope = dict(scope, path=scope["path"][4:])
        return await outer(scope, receive, send)
    return await inner(scope, receive, send)
'''

FASTAPI_WITH_STARLETTE_MIDDLEWARE = '''
from fastapi import FastAPI
from starlette.middleware.opentelemetry import OpenTelemetryMiddleware

app = FastAPI()
app.add_middleware(OpenTelemetryMiddleware)


@app.get("/items/{item_id}")
def item(item_id: int):
    return {"item": item_id}
'''


def test_starlette_opentelemetry_middleware_makes_the_one_span(tmp_path):
    answers, spans, _ = serve(tmp_path, STARLETTE_MIDDLEWARE_APP, [("/items/1", [("traceparent", TRACEPARENT)]),
                                                                   ("/out/items/2", [])], expect=2)
    assert answers == [(200, "item"), (200, "item")]
    first, second = sorted(servers(spans), key=lambda s: s.start)
    assert first.scope == second.scope == "starlette", (first, second)
    assert first.name == "GET /items/{item_id}" and first.parent_id == PARENT_SPAN
    assert second.attributes["url.path"] == "/items/2"


def test_fastapi_that_traces_itself_and_added_starlettes_middleware_has_one_span(tmp_path):
    answers, spans, _ = serve(tmp_path, FASTAPI_WITH_STARLETTE_MIDDLEWARE, [("/items/3", [])], expect=1)
    assert answers == [(200, '{"item":3}')]
    (span,) = servers(spans)
    assert span.scope.startswith("fastapi") and span.name == "GET /items/{item_id}"


# -- in process: the detectors on the real classes ----------------------------------------------------


def test_stack_owner_finds_tracing_middleware_anywhere_in_the_stack():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.middleware.opentelemetry import OpenTelemetryMiddleware

    plain = Starlette()
    assert self_tracing.asgi_owner(plain, {"type": "http"}) is None
    assert plain.middleware_stack is not None  # built as Starlette.__call__ builds it
    traced = Starlette(middleware=[Middleware(GZipMiddleware), Middleware(OpenTelemetryMiddleware)])
    assert self_tracing.asgi_owner(traced, {"type": "http"}) == "starlette"
    assert self_tracing.asgi_owner(plain, {"type": "http", "starlette.opentelemetry": True}) == "starlette"

    class Loop:  # a stack whose .app chain never ends is walked a bounded number of steps
        pass

    loop = Loop()
    loop.app = loop
    assert self_tracing.stack_owner(loop) is None


def test_fastapi_request_telemetry_is_read_from_the_scope():
    from fastapi import FastAPI
    from starlette.applications import Starlette

    class Telemetry:
        def __init__(self, span):
            self.span = span

    app = FastAPI()
    assert self_tracing.asgi_owner(app, {"type": "http", "fastapi.telemetry": Telemetry(object())}) == "fastapi"
    assert self_tracing.asgi_owner(app, {"type": "http", "fastapi.telemetry": Telemetry(None)}) is None
    assert self_tracing.asgi_owner(app, {"type": "http", "fastapi.telemetry": None}) == "fastapi-excluded"
    assert self_tracing.asgi_owner(app, {"type": "http"}) is None
    # an app mounted in a FastAPI app that traces the request: FastAPI's key is in the scope it is handed
    assert self_tracing.asgi_owner(Starlette(), {"type": "http", "fastapi.telemetry": Telemetry(object())}) == "fastapi"


def test_fastapi_exclude_keeps_the_programs_own():
    import re

    excluded = re.compile("/health")
    mine = self_tracing.fastapi_exclude(lambda scope: scope["path"] == "/mine", excluded, lambda s: s["path"])
    assert mine({"type": "http", "path": "/mine"}) and mine({"type": "http", "path": "/health"})
    assert not mine({"type": "http", "path": "/items"})
    user = object()
    assert self_tracing.fastapi_exclude(user, None, str) is user  # nothing to exclude: the program's as it was


def test_query_redaction_never_undoes_what_the_library_redacted(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from trace_run.core import config
    from trace_run.instrumentors import http_common

    def fresh():
        config.reset()
        http_common.reset()

    span = TracerProvider().get_tracer("t").start_span("s", attributes={"url.query": "sig=REDACTED"})
    monkeypatch.setenv("OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS", "none")
    fresh()
    try:
        self_tracing.adjust_request(span, {"query_string": b"sig=abc"})
        assert span.attributes["url.query"] == "sig=REDACTED"
        monkeypatch.delenv("OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS")
        fresh()
        self_tracing.adjust_request(span, {"query_string": b"password=x&a=1"})
        assert span.attributes["url.query"] == "password=REDACTED&a=1"
    finally:
        monkeypatch.delenv("OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS", raising=False)
        fresh()


def _call_asgi(app, path: str, headers=()) -> list:
    """One GET through `app` in process: the messages it sent."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"t:80")] + list(headers), "client": ("127.0.0.1", 1), "server": ("t", 80)}
    sent = []
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_fastapi_with_tracing_off_keeps_its_request_telemetry_under_trace_runs_span(instrumented):
    """trace-run's span takes over but keeps FastAPI's request data (its logs and `get_telemetry_data` read it)
    visible to the endpoint: the span's context is built on the current one, and still continues the caller."""
    from fastapi import FastAPI
    from fastapi.telemetry import get_telemetry_data
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.trace import SpanKind
    from trace_run.instrumentors.starlette import StarletteInstrumentor

    provider, exporter = instrumented(StarletteInstrumentor)
    app = FastAPI(telemetry={"tracing": False, "logger_provider": LoggerProvider(shutdown_on_exit=False)})
    seen = []

    @app.get("/items/{item_id}")
    def item(item_id: int):
        data = get_telemetry_data()
        seen.append(data is not None and data.request is not None and data.request.url.path == "/items/3")
        return {"item": item_id}

    sent = _call_asgi(app, "/items/3", [(b"traceparent", TRACEPARENT.encode())])
    assert sent[0]["status"] == 200 and seen == [True]
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.SERVER and span.name == "GET /items/{item_id}"
    assert span.context.trace_id == int(PARENT_TRACE, 16) and span.parent.span_id == int(PARENT_SPAN, 16)
