"""An ASGI middleware making one SERVER span per HTTP request or WebSocket connection.

Usable by hand for any ASGI app (it imports no framework):

    app = TraceMiddleware(app)

The span ends when the response body is complete (`more_body` false), when the
client disconnects, or when the app raises or returns, whichever comes first.
A client that leaves before the response is complete is not the server's error:
the status stays UNSET and the span gets a `http.client_disconnected` event
(an `http.disconnect` received, or `send` raising OSError as ASGI 2.4 servers do).
A WebSocket connection is one span for its whole life, from the handshake (an
HTTP GET: `GET /ws`, `url.scheme` ws/wss) to its close: `http.response.status_code`
is 101 once accepted, 403 (or the denial response's status) when refused.
Lifespan scopes pass through untraced. A scope already traced by an outer
TraceMiddleware is passed through, so wrapping twice never gives two spans.
Attributes, exclusions, header capture and propagation are the WSGI middleware's:
the scope is read through a WSGI-style view of it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from trace_run.core.guard import Guard

from . import http_common, wsgi
from .base import is_instrumentation_enabled

SCOPE_KEY = "trace_run.request"  # the request's wsgi._Request, for frameworks (see set_route)
DISCONNECTED = "http.client_disconnected"  # the event of a client gone before the response was complete
_guard = Guard("asgi")
# (message type -> status it stands for) for WebSocket handshakes
_WS_STATUS = {"websocket.accept": "101", "websocket.close": "403"}


def _disconnected(request: wsgi._Request) -> None:
    """The client went away first: not an error of the server's; noted as an event, the span ended."""
    if not request.ended:
        if request.span.is_recording():
            request.span.add_event(DISCONNECTED)
        request.end()


def _latin1(text: str) -> str:
    """ASGI paths are decoded text; WSGI's are UTF-8 bytes seen as latin-1."""
    try:
        return text.encode("utf-8").decode("latin-1")
    except (UnicodeError, AttributeError):
        return ""


def _query(raw) -> str:
    """The spec says bytes; some senders (Django's AsyncRequestFactory) put a str."""
    if isinstance(raw, str):
        return _latin1(raw)
    return bytes(raw or b"").decode("latin-1")


def environ_view(scope: dict) -> dict:
    """The scope as the WSGI environ keys wsgi.server_attributes and the exclusions read."""
    environ = {
        "REQUEST_METHOD": scope.get("method", "GET") if scope.get("type") == "http" else "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": _latin1(scope.get("root_path", "") + scope.get("path", "")),
        "QUERY_STRING": _query(scope.get("query_string")),
        "wsgi.url_scheme": scope.get("scheme") or ("ws" if scope.get("type") == "websocket" else "http"),
        "SERVER_PROTOCOL": "HTTP/" + str(scope.get("http_version", "1.1")),
    }
    server = scope.get("server")
    if server and server[0] is not None:
        environ["SERVER_NAME"] = str(server[0])
        if len(server) > 1 and server[1] is not None:
            environ["SERVER_PORT"] = str(server[1])
    client = scope.get("client")
    if client and client[0]:
        environ["REMOTE_ADDR"] = str(client[0])
    for name, value in scope.get("headers") or ():
        name = name.decode("latin-1").lower() if isinstance(name, bytes) else str(name).lower()
        value = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if name == "content-type" or name == "content-length":
            key = name.upper().replace("-", "_")
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = environ[key] + "," + value if key in environ else value
    return environ


def set_route(scope: dict, route: str) -> None:
    """Name the scope's span `METHOD route-template` and set http.route: the hook frameworks call."""
    with _guard:
        request = scope.get(SCOPE_KEY)
        if request is not None:
            wsgi.set_route(request.span, scope.get("method", "GET"), route)


def _start(tracer: trace.Tracer, scope: dict, excluded) -> Optional[wsgi._Request]:
    if scope.get("type") not in ("http", "websocket") or SCOPE_KEY in scope:
        return None
    if not is_instrumentation_enabled():
        return None
    environ = environ_view(scope)
    if excluded is not None and excluded.search(wsgi._request_url(environ)):
        return None
    # On top of the current context, not an empty one: what an outer layer put there (FastAPI's request
    # telemetry when its own tracing is off, baggage) stays visible to the app.
    parent = wsgi.extract(environ, otel_context.get_current())
    span = wsgi.start_server_span(tracer, environ, parent)
    return wsgi._Request(span, trace.set_span_in_context(span, parent))


async def handle(tracer: trace.Tracer, scope: dict, receive: Callable, send: Callable, app: Callable,
                 excluded=None) -> Any:
    """Run one ASGI connection through `app` inside a SERVER span (frameworks call this)."""
    request = None
    with _guard:
        request = _start(tracer, scope, excluded)
    if request is None:
        return await app(scope, receive, send)
    scope = dict(scope)
    scope[SCOPE_KEY] = request

    async def traced_receive():
        message = await receive()
        with _guard:
            kind = message.get("type")
            if kind == "http.disconnect":
                _disconnected(request)
            elif kind == "websocket.disconnect":  # the client closed: the connection's normal end
                request.end()
        return message

    async def traced_send(message):
        kind = None
        with _guard:
            kind = message.get("type")
            if kind in ("http.response.start", "websocket.http.response.start"):
                request._response(str(message.get("status")), _text_headers(message))
            elif kind in _WS_STATUS and request.status is None:
                request._response(_WS_STATUS[kind], _text_headers(message))
        try:
            await send(message)
        except OSError:
            with _guard:
                _disconnected(request)
            raise
        except BaseException as exc:
            with _guard:
                request.end(exc)
            raise
        with _guard:
            if (kind in ("http.response.body", "websocket.http.response.body")
                    and not message.get("more_body", False)) or kind == "websocket.close":
                request.end()

    token = otel_context.attach(request.ctx)
    try:
        await app(scope, traced_receive, traced_send)
    except BaseException as exc:
        with _guard:
            request.end(exc)
        raise
    finally:
        otel_context.detach(token)
        with _guard:
            request.end()


def _text_headers(message: dict) -> list:
    return [(k.decode("latin-1") if isinstance(k, bytes) else k, v.decode("latin-1") if isinstance(v, bytes) else v)
            for k, v in message.get("headers") or ()]


class TraceMiddleware:
    """ASGI middleware: `app = TraceMiddleware(app)`."""

    def __init__(self, app: Callable, tracer_provider=None, excluded_urls: Optional[str] = None):
        self.app = app
        self._tracer, self._excluded = http_common.middleware_setup(__name__, "asgi", tracer_provider, excluded_urls)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        return await handle(self._tracer, scope, receive, send, self.app, self._excluded)
