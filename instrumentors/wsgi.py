"""A WSGI middleware making one SERVER span per request; Flask builds on it.

Usable by hand for frameworks we do not cover:

    app.wsgi_app = TraceMiddleware(app.wsgi_app)

The span ends when the server closes the response iterable, so a streamed
body is measured whole. An environ already traced by an outer middleware is
passed through, so wrapping twice never gives two spans.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, Callable, Optional

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_PATH, URL_QUERY, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from opentelemetry.trace import SpanKind, Status, StatusCode
from trace_run.core import config, runtime_context
from trace_run.core.guard import Guard

from . import bounds, errors, http_common, propagation
from .base import instrumentation_enabled_in
from .bounds import TRUNCATED

_NonRecordingSpan = trace.NonRecordingSpan
ENVIRON_KEY = "trace_run.request"  # the request's _Request (span and state), for frameworks


class WSGIGetter(Getter):
    """Reads propagation headers from a WSGI environ (HTTP_TRACEPARENT, ...)."""

    def get(self, carrier: dict, key: str) -> Optional[list]:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        if value is None:
            return None
        return [value]

    def keys(self, carrier: dict) -> list:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


getter = WSGIGetter()


def _native(configure: str, names: dict, what: str) -> Any:
    """_wsgi_native (instrumentors/_wsgi_native.c) with `configure`(names) done; None where it was not built
    or not as it was written for (a debug line says why): `what` is then done in Python."""
    try:
        from . import _wsgi_native

        getattr(_wsgi_native, configure)(names)
    except Exception as exc:
        from trace_run.core import log

        log.debug("%s in Python (%s: %s)" % (what, type(exc).__name__, exc))
        return None
    return _wsgi_native


_guard = Guard("wsgi")
_EMPTY = otel_context.Context()
def extract(environ: dict, context=None):
    """`propagate.extract(environ, context, getter)`; with the default propagators and neither a
    traceparent nor a baggage header (most requests), its answer without running them (~1.5 us)."""
    if "HTTP_TRACEPARENT" not in environ and "HTTP_BAGGAGE" not in environ and propagation.default_pair():
        return _EMPTY if context is None else context
    return propagate.extract(environ, context=context, getter=getter)


def _environ_headers(environ: dict):
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-").lower(), value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            yield key.replace("_", "-").lower(), value


def _text(value: str) -> str:
    """WSGI strings are latin-1 decoded bytes; most paths are UTF-8."""
    try:
        if value.isascii():  # the same either way
            return value
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeError, AttributeError):
        return value


_KNOWN_METHODS = http_common.KNOWN_METHODS
_PEERS: dict = {}  # what the request's peers give its span (host, port, client, agent, protocol): few per process


def _peer_attributes(get: Callable, bound: Optional[int]) -> dict:
    """The attributes a request's host, client, user agent and protocol give, kept by those values (a
    server sees the same few again and again: ~150 bytecodes a sampled request); never change the answer."""
    key = (get("HTTP_HOST"), get("SERVER_NAME"), get("SERVER_PORT"), get("HTTP_X_FORWARDED_FOR"),
           get("REMOTE_ADDR"), get("HTTP_USER_AGENT"), get("SERVER_PROTOCOL"), bound)
    try:
        found = _PEERS.get(key)
    except TypeError:  # a value that cannot be a key (not what a server puts there): worked out every time
        return _peer_attributes_of(get, bound)
    if found is None:
        found = _peer_attributes_of(get, bound)
        if TRUNCATED not in found:  # a cut user agent is noted in the request's own attributes
            if len(_PEERS) >= 256:
                _PEERS.clear()
            _PEERS[key] = found
    return found


def _peer_attributes_of(get: Callable, bound: Optional[int]) -> dict:
    peer: dict = {}
    host = get("HTTP_HOST")
    port = None
    if host:
        if host[0] == "[":  # [::1]:8080
            end = host.find("]")
            name, rest = host[1:end], host[end + 1:]
            port = rest[1:] if rest.startswith(":") else None
            host = name
        else:
            host, colon, after = host.partition(":")
            if colon:
                if ":" in after:  # an IPv6 address without brackets: kept whole, no port
                    host, port = host + ":" + after, None
                else:
                    port = after
    else:
        host = get("SERVER_NAME")
        port = get("SERVER_PORT")
    if host:
        peer[SERVER_ADDRESS] = host
    if port:
        try:
            peer[SERVER_PORT] = int(port)
        except ValueError:
            pass
    forwarded = get("HTTP_X_FORWARDED_FOR")
    client = forwarded.split(",")[0].strip() if forwarded else get("REMOTE_ADDR")
    if client:
        peer[CLIENT_ADDRESS] = client
    agent = get("HTTP_USER_AGENT")
    if agent:
        if bound is not None and len(agent) > bound:
            bounds.put(peer, USER_AGENT_ORIGINAL, agent, bound)
        else:
            peer[USER_AGENT_ORIGINAL] = agent
    version = http_common.protocol_version(get("SERVER_PROTOCOL"))
    if version:
        peer[NETWORK_PROTOCOL_VERSION] = version
    return peer


def server_attributes(environ: dict) -> tuple:
    """(span name, attributes) of the SERVER span for one request."""
    get = environ.get
    method = get("REQUEST_METHOD", "")
    if type(method) is str and method in _KNOWN_METHODS:  # normalize_method's common case; its own name
        name = method
        attrs: dict = {HTTP_REQUEST_METHOD: method, URL_SCHEME: get("wsgi.url_scheme", "http")}
    else:
        method, original = http_common.normalize_method(method)
        name = http_common.span_name(method)
        attrs = {HTTP_REQUEST_METHOD: method}
        if original is not None:
            attrs[HTTP_REQUEST_METHOD_ORIGINAL] = original
        attrs[URL_SCHEME] = get("wsgi.url_scheme", "http")
    bound = bounds.limit()  # once per request
    path = get("SCRIPT_NAME", "") + get("PATH_INFO", "")
    if not path.isascii():
        path = _text(path)
    if not path:
        path = "/"
    if bound is not None and len(path) > bound:
        bounds.put(attrs, URL_PATH, path, bound)
    else:
        attrs[URL_PATH] = path
    query = get("QUERY_STRING")
    if query:
        _query_into(attrs, query, bound)
    _peer_into(attrs, environ, bound)
    cap = http_common.capture("SERVER_REQUEST")
    if cap is not None:
        _capture_into(attrs, cap, environ)
    return name, attrs


# server_attributes' steps that _wsgi_native.c calls (the same steps, in the same order)

def _query_into(attrs: dict, query: Any, bound: Optional[int]) -> None:
    attrs[URL_QUERY], was_cut = http_common.bounded_query(_text(query), bound)
    if was_cut:
        bounds.note(attrs, URL_QUERY)


def _peer_into(attrs: dict, environ: dict, bound: Optional[int]) -> None:
    peer = _peer_attributes(environ.get, bound)
    if TRUNCATED in peer:
        bounds.update(attrs, peer)  # the cut keys of both listed
    else:
        attrs.update(peer)


def _capture_into(attrs: dict, cap: Any, environ: dict) -> None:
    bounds.update(attrs, cap.attributes(_environ_headers(environ)))


def _native_server_attributes() -> Optional[Callable[[dict], tuple]]:
    """server_attributes in C (instrumentors/_wsgi_native.c) where it was built and the C call path is on
    (OTEL_TRACE_RUN_NATIVE_CALLS); None: the Python function."""
    if runtime_context.NATIVE is None:
        return None
    native = _native("configure", {
        "known": _KNOWN_METHODS, "peers": _PEERS, "limit": bounds.limit, "capture": http_common.capture,
        "python": python_server_attributes, "query_into": _query_into, "peer_into": _peer_into,
        "capture_into": _capture_into, "method_key": HTTP_REQUEST_METHOD, "scheme_key": URL_SCHEME,
        "path_key": URL_PATH, "truncated": TRUNCATED, "config_cache": config._cache, "limit_key": bounds._LIMIT,
        "settings": http_common._settings, "capture_key": "capture:SERVER_REQUEST"},
        "the WSGI attributes are made")
    return native and native.server_attributes


python_server_attributes = server_attributes
server_attributes = _native_server_attributes() or python_server_attributes


def start_server_span(tracer: trace.Tracer, environ: dict, parent) -> trace.Span:
    """The request's SERVER span. With trace-run's span class and a sampler that reads neither, its name and
    attributes are made only when the span records (an unsampled request skips ~5 us of work)."""
    deferred = getattr(tracer, "start_span_deferred", None)
    if deferred is None:
        name, attrs = server_attributes(environ)
        return tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs)
    return deferred(parent, SpanKind.SERVER, partial(server_attributes, environ))


def _request_url(environ: dict) -> str:
    host = environ.get("HTTP_HOST") or "%s:%s" % (environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT", ""))
    url = "%s://%s%s%s" % (environ.get("wsgi.url_scheme", "http"), host, environ.get("SCRIPT_NAME", ""),
                           environ.get("PATH_INFO", ""))
    if environ.get("QUERY_STRING"):
        url += "?" + environ["QUERY_STRING"]
    return url


def set_route(span: trace.Span, method: str, route: str) -> None:
    """Name the span `METHOD route-template` and set http.route (frameworks call this)."""
    if route and span.is_recording():
        if type(method) is not str or method not in http_common.KNOWN_METHODS:
            method = http_common.span_name(http_common.normalize_method(method)[0])
        span.update_name("%s %s" % (method, route))
        span.set_attribute(HTTP_ROUTE, route)


class _RequestMethods:
    """_Request's methods in Python (where _wsgi_native's Request has end, start_response and _response in C,
    those are its; record is always this one)."""

    __slots__ = ()

    def record(self, exc: BaseException) -> None:
        """An exception the framework handled (e.g. turned into a 500): recorded once."""
        if exc is not self.recorded:
            self.recorded = exc
            errors.record(self.span, exc)

    def start_response(self, start_response: Callable) -> Callable:
        def traced_start_response(status, headers, exc_info=None):
            try:  # `with _guard:` (Guard.failed says why not)
                self._response(status, headers)
            except Exception as exc:
                _guard.failed(exc)
            return start_response(status, headers, exc_info) if exc_info is not None \
                else start_response(status, headers)

        return traced_start_response

    def _response(self, status, headers) -> None:
        try:
            code = int(str(status).split(" ", 1)[0])
        except ValueError:
            return
        self.status = code
        span = self.span
        if span.is_recording():
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, code)
            cap = http_common.capture("SERVER_RESPONSE")
            if cap is not None:
                _capture_response(span, cap, headers)

    def end(self, exc: Optional[BaseException] = None) -> None:
        if self.ended:
            return
        self.ended = True
        span = self.span
        if exc is not None:
            self.record(exc)
        elif self.status is not None:
            _end_error(self)
        span.end()


def _capture_response(span: trace.Span, cap: Any, headers: Any) -> None:
    bounds.set_on_span(span, cap.attributes(headers))


def _end_error(request: Any) -> None:
    """A request ending with a 5xx status: an error (error.type names the exception behind it, if one was)."""
    span = request.span
    if http_common.server_error(request.status) and span.is_recording():
        if request.recorded is None:
            errors.record_status(span, request.status)
        else:
            span.set_status(Status(StatusCode.ERROR))


class _PythonRequest(_RequestMethods):
    """_Request in Python: the fields of _wsgi_native's Request, and the methods."""

    __slots__ = ("span", "ctx", "status", "ended", "recorded", "held_whole")

    def __init__(self, span: trace.Span, ctx):
        self.span = span
        self.ctx = ctx
        self.status = None
        self.ended = False
        self.recorded = None
        self.held_whole = False


class _PythonUnrecordedBody:
    """The body of a request whose span does not record: nothing to end, but the request's context is
    current while it yields (a call made by a streamed body keeps the trace and its not-sampled flag)."""

    __slots__ = ("_body", "_iter", "_request")

    def __init__(self, body, request):
        self._body = body
        self._iter = None
        self._request = request

    def __iter__(self):
        return self

    def __next__(self):
        token = runtime_context.attach(self._request.ctx)
        try:
            if self._iter is None:
                self._iter = iter(self._body)
            return next(self._iter)
        finally:
            runtime_context.detach(token)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


class _PythonTracedBody(_PythonUnrecordedBody):
    """The app's response iterable; the span is current while it yields and ends once the body
    is exhausted or closed, whichever comes first."""

    __slots__ = ()

    _step = _PythonUnrecordedBody.__next__  # the next chunk, the request's context current while it is made

    def __next__(self):
        try:
            return self._step()
        except StopIteration:
            # The whole body is out. Servers close() the iterable next, but
            # werkzeug skips close() when the client reset the connection while
            # it drains the request: end here too (end() is idempotent).
            try:  # `with _guard:` (Guard.failed says why not)
                self._request.end()
            except Exception as exc:
                _guard.failed(exc)
            raise
        except BaseException as exc:
            with _guard:
                self._request.end(exc)
            raise

    def __del__(self) -> None:
        # Last resort: a server whose write failed (the client went away) drops
        # the iterable without exhausting or closing it. CPython collects it as
        # the request's handler returns; an open span would never be exported.
        try:
            if not self._request.ended:
                self._request.end()
        except Exception:
            pass

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:  # `with _guard:` (Guard.failed says why not)
                self._request.end()
            except Exception as exc:
                _guard.failed(exc)


class _PythonHeldBody(_PythonTracedBody):
    """A body the framework made already (`held_whole`): no code of the app runs while it is iterated,
    so its chunks are taken without making the context current."""

    __slots__ = ()

    def _step(self):
        if self._iter is None:
            self._iter = iter(self._body)
        return next(self._iter)


def _native_parts() -> Optional[tuple]:
    """(the Request base, the Body base) of _wsgi_native, where it was built and the C call path is on
    (OTEL_TRACE_RUN_NATIVE_CALLS), configured; None: the Python classes."""
    if runtime_context.NATIVE is None:
        return None
    native = _native("configure_bodies", {
        "end_error": _end_error, "py_response": _RequestMethods._response, "capture": http_common.capture,
        "capture_response": _capture_response, "settings": http_common._settings,
        "status_key": HTTP_RESPONSE_STATUS_CODE, "py_set_route": python_set_route,
        "known_methods": http_common.KNOWN_METHODS, "route_key": HTTP_ROUTE},
        "WSGI requests are handled")
    return native and (native.Request, native.Body)


python_set_route = set_route
_NATIVE_PARTS = _native_parts()

if _NATIVE_PARTS is not None:
    class _Request(_NATIVE_PARTS[0], _RequestMethods):
        """Per-request state: the span, its context, and the status once known. `held_whole`: a framework
        saw that the body is already made (no code of the app runs while it is iterated)."""

        __slots__ = ()

    class _UnrecordedBody(_NATIVE_PARTS[1]):
        __doc__ = _PythonUnrecordedBody.__doc__
        __slots__ = ()
        _kind = 0

    class _TracedBody(_UnrecordedBody):
        __doc__ = _PythonTracedBody.__doc__
        __slots__ = ()
        _kind = 1

    class _HeldBody(_TracedBody):
        __doc__ = _PythonHeldBody.__doc__
        __slots__ = ()
        _kind = 2

    from ._wsgi_native import set_route  # noqa: E402, F811
else:
    _Request, _UnrecordedBody, _TracedBody, _HeldBody = (
        _PythonRequest, _PythonUnrecordedBody, _PythonTracedBody, _PythonHeldBody)

# what the C replaces, by the names handle reads (tests put these back to compare the two)
PYTHON_CLASSES = {"_Request": _PythonRequest, "_UnrecordedBody": _PythonUnrecordedBody,
                  "_TracedBody": _PythonTracedBody, "_HeldBody": _PythonHeldBody}


def handle(tracer: trace.Tracer, environ: dict, start_response: Callable, app: Callable,
           excluded=None, body: Optional[Callable[[Any, _Request], Any]] = None) -> Any:
    """Run one WSGI request through `app` inside a SERVER span; `body(result, request)` is what goes
    back to the server and ends the span when the server is done with it (a framework may keep its own
    response object instead of the _TracedBody wrapper, the default)."""
    request = None
    try:  # `with _guard:`, which costs two Python calls a request (Guard.failed says why not)
        if ENVIRON_KEY not in environ and instrumentation_enabled_in(runtime_context.get_current()):
            if excluded is None or not _excluded(excluded, environ):
                parent = extract(environ)
                span = start_server_span(tracer, environ, parent)
                request = _Request(span, runtime_context.with_span(span, parent))
                environ[ENVIRON_KEY] = request
    except Exception as exc:
        _guard.failed(exc)
    if request is None:
        return app(environ, start_response)
    span = request.span
    recording = type(span) is not _NonRecordingSpan and span.is_recording()  # (a dropped request: no call)
    if recording:  # else no status to keep: the server's start_response as it is
        start_response = request.start_response(start_response)
    token = runtime_context.attach(request.ctx)
    try:
        result = app(environ, start_response)
    except BaseException as exc:
        _end_failed(request, exc)
        raise
    finally:
        runtime_context.detach(token)
    if body is None or body is _TracedBody:
        if not recording:  # nothing to end; the context is needed only while code of the app runs (a streamed body)
            return result if request.held_whole else _UnrecordedBody(result, request)
        if request.held_whole:
            return _HeldBody(result, request)
        return _TracedBody(result, request)
    return body(result, request)


def _excluded(excluded, environ: dict) -> bool:
    return bool(excluded.search(_request_url(environ)))


def _end_failed(request: _Request, exc: BaseException) -> None:
    with _guard:  # (a failing request: not the path to save calls on)
        request.end(exc)


def _is_deferred(function: Any) -> bool:
    """Whether `function` is trace-run's Tracer.start_span_deferred (read, not imported: instrumentors never
    import the agent), whose call handle's C makes itself."""
    fastspan = sys.modules.get("trace_run.agent.fastspan")
    tracer = getattr(fastspan, "Tracer", None)
    return tracer is not None and function is tracer.__dict__.get("start_span_deferred")


def _native_handle() -> Optional[Callable]:
    """handle in C (instrumentors/_wsgi_native.c), as server_attributes; None: the Python function."""
    if _NATIVE_PARTS is None:
        return None
    from opentelemetry import propagate as propagate_module

    native = _native("configure_handle", {
        "python": python_handle, "environ_key": ENVIRON_KEY, "enabled_in": instrumentation_enabled_in,
        "runtime": vars(runtime_context), "globals": globals(), "extract": extract,
        "start_server_span": start_server_span, "default_pair": propagation.default_pair,
        "propagation": vars(propagation), "propagate": vars(propagate_module),
        "get_global_textmap": propagate_module.get_global_textmap, "empty": _EMPTY, "is_deferred": _is_deferred,
        "server_kind": SpanKind.SERVER, "non_recording": _NonRecordingSpan,
        "request": _Request, "guard_failed": _guard.failed, "end_failed": _end_failed,
        "traced_body": _TracedBody, "unrecorded_body": _UnrecordedBody, "held_body": _HeldBody},
        "WSGI requests are handled")
    return native and native.handle


python_handle = handle
handle = _native_handle() or python_handle


class TraceMiddleware:
    """WSGI middleware: `app.wsgi_app = TraceMiddleware(app.wsgi_app)`."""

    def __init__(self, app: Callable, tracer_provider=None, excluded_urls: Optional[str] = None):
        self.app = app
        self._tracer, self._excluded = http_common.middleware_setup(__name__, "flask", tracer_provider, excluded_urls)

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        return handle(self._tracer, environ, start_response, self.app, self._excluded)
