"""Starlette: every app gets the ASGI TraceMiddleware, spans named by route templates through Mounts."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import SpanKind, StatusCode
from test_asgi import PARENT, Driver, http_scope, serve_uvicorn
from trace_run.instrumentors.starlette import StarletteInstrumentor


def make_app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route, WebSocketRoute

    async def item(request):
        return PlainTextResponse("item %d" % request.path_params["item_id"])

    async def boom(request):
        raise KeyError("boom")

    async def echo(websocket):
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    sub = Starlette(routes=[Route("/deep/{name}", lambda request: PlainTextResponse("deep"))])
    return Starlette(routes=[
        Mount("/api", routes=[Route("/items/{item_id:int}", item), Mount("/sub", app=sub)]),
        Route("/boom", boom),
        WebSocketRoute("/ws", echo),
    ])


@pytest.fixture
def traced(instrumented):
    return instrumented(StarletteInstrumentor)


def call(app, scope, driver):
    asyncio.run(app(scope, driver.receive, driver.send))


def test_route_template_through_mounts_and_sub_apps(traced):
    provider, exporter = traced
    app = make_app()
    call(app, http_scope(path="/api/items/3", headers=[(b"traceparent", PARENT.encode())]), Driver(exporter))
    call(app, http_scope(path="/api/sub/deep/x"), Driver(exporter))
    call(app, http_scope(path="/nowhere"), Driver(exporter))
    first, second, third = exporter.get_finished_spans()
    assert first.name == "GET /api/items/{item_id:int}" and first.kind == SpanKind.SERVER
    assert first.attributes["http.route"] == "/api/items/{item_id:int}"
    assert first.attributes["http.response.status_code"] == 200 and first.parent.span_id == 9
    assert second.name == "GET /api/sub/deep/{name}"  # one span although two Starlette apps ran
    assert third.name == "GET" and third.attributes["http.response.status_code"] == 404
    assert "http.route" not in third.attributes


def test_unhandled_exception_is_a_500_error_and_propagates(traced):
    provider, exporter = traced
    driver = Driver(exporter)
    with pytest.raises(KeyError):
        call(make_app(), http_scope(path="/boom"), driver)
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /boom" and span.attributes["http.response.status_code"] == 500
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == "KeyError"


def test_websocket_route_and_lifespan(traced):
    provider, exporter = traced
    app = make_app()
    call(app, {"type": "lifespan", "asgi": {"version": "3.0"}},
         Driver(exporter, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]))
    assert exporter.get_finished_spans() == ()
    scope = dict(http_scope(path="/ws"), type="websocket", scheme="ws")
    del scope["method"]
    driver = Driver(exporter, [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}])
    call(app, scope, driver)
    assert [kind for kind, _ in driver.sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /ws" and span.attributes["url.scheme"] == "ws"


STARLETTE_APP = '''
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route


def item(request):  # a sync endpoint: Starlette runs it in its thread pool
    ctx = trace.get_current_span().get_span_context()
    return PlainTextResponse("%032x" % ctx.trace_id)


app = Starlette(routes=[Mount("/api", routes=[Route("/items/{item_id}", item)])])
'''


def test_starlette_app_under_trace_run_uvicorn(tmp_path):
    status, body, servers, _ = serve_uvicorn(tmp_path, STARLETTE_APP, "/api/items/42?mark=s1",
                                             [("traceparent", PARENT)])
    assert status == 200 and body == "%032x" % 7  # context reached the thread-pool endpoint
    (span,) = servers
    assert span.name == "GET /api/items/{item_id}" and span.attributes["http.route"] == "/api/items/{item_id}"
    assert span.trace_id == "%032x" % 7 and span.parent_id == "%016x" % 9
    assert span.attributes["url.path"] == "/api/items/42" and span.attributes["http.response.status_code"] == 200


FASTAPI_APP = '''
from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
def item(item_id: int):
    return {"item": item_id}
'''


def test_fastapi_app_gets_one_server_span_its_own(tmp_path):
    """FastAPI is built on Starlette but traces itself (0.142.0+): Starlette's built-in tracing steps
    aside for FastAPI apps, so a request has exactly one SERVER span, FastAPI's, continuing the caller,
    exported once."""
    status, body, servers, _ = serve_uvicorn(tmp_path, FASTAPI_APP, "/items/42", [("traceparent", PARENT)])
    assert status == 200 and body == '{"item":42}'
    # one SERVER span, sent once: FastAPI also adds an OTLP exporter for the same OTEL_* endpoint to the
    # provider it finds (trace-run's), which trace-run leaves out
    (span,) = servers
    assert span.trace_id == "%032x" % 7 and span.parent_id == "%016x" % 9
    assert span.scope.startswith("fastapi"), span.scope
