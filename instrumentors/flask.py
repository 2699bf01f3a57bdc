"""Flask: one SERVER span per request, named `METHOD route-template`.

The class is patched (`Flask.wsgi_app`), never the `flask.Flask` name, so
apps made before the agent started, by factories, or from a name bound with
`from flask import Flask` are all traced. The route template is known once
Flask has matched the URL; `full_dispatch_request` names the span then.
Unhandled exceptions are recorded in `handle_exception`, after which Flask's
own error handling runs unchanged.

The methods below are the reference; where _wsgi_native was built and the C call path is on
(OTEL_TRACE_RUN_NATIVE_CALLS), `_wsgi_app` and `_full_dispatch_request` (with `_held_whole`) are
given to wrap() as C callables doing the same steps (instrumentors/_wsgi_native.c): no Python frame
of theirs on every request.
"""

from __future__ import annotations

from typing import Any, Optional

from opentelemetry.trace import NonRecordingSpan as _NonRecordingSpan
from trace_run.core import runtime_context

from . import http_common, wsgi
from .base import TraceRunInstrumentor


class FlaskInstrumentor(TraceRunInstrumentor):
    library = "flask"

    def _patch(self, **kwargs: Any) -> None:
        import flask

        http_common.reset()
        self._excluded = http_common.excluded_urls(self.library)
        self._request = flask.request
        self._response_class = flask.Response  # (exactly: a subclass may make its body as it is iterated)
        wsgi_app, full_dispatch_request = _native_hooks(self, flask) or (self._wsgi_app, self._full_dispatch_request)
        self.wrap(flask.Flask, "wsgi_app", wsgi_app)
        self.wrap(flask.Flask, "full_dispatch_request", full_dispatch_request)
        self.wrap(flask.Flask, "handle_exception", self._handle_exception)

    def _wsgi_app(self, wrapped, instance, args, kwargs):
        # (servers pass both by position: the helper call only for other ways of calling)
        environ, start_response = args if len(args) == 2 and not kwargs else _environ_args(*args, **kwargs)
        return wsgi.handle(self._tracer or self.tracer, environ, start_response, wrapped, self._excluded)

    def _full_dispatch_request(self, wrapped, instance, args, kwargs):
        span = runtime_context.current_span()
        if type(span) is _NonRecordingSpan or not span.is_recording():  # no span of ours records: nothing to name
            return self._held_whole(wrapped(*args, **kwargs))
        state = None
        try:  # `with self.guard:` (Guard.failed says why not)
            req = self._request._get_current_object()  # one context lookup, not one per attribute
            environ = req.environ
            state = environ.get(wsgi.ENVIRON_KEY)
            rule = req.url_rule
            if state is not None and rule is not None:
                wsgi.set_route(state.span, environ.get("REQUEST_METHOD", ""), rule.rule)
        except Exception as exc:
            self.guard.failed(exc)
        return self._held_whole(wrapped(*args, **kwargs), state)

    def _held_whole(self, response: Any, state: Any = None) -> Any:
        """Flask's own Response class whose body is a list (what Flask makes of str, bytes, dict...) runs no
        code of the app while the server iterates it: the request's state says so, and wsgi.handle iterates it
        without making the context current, or, unsampled, hands it back unwrapped (telling it apart costs
        less than a wrapper's two context changes a chunk, ~1k instructions each). A streamed one (a
        generator), or another response class, keeps its context."""
        try:  # `with self.guard:` (Guard.failed says why not)
            if type(response) is self._response_class and type(response.response) is list:
                if state is None:
                    state = self._request._get_current_object().environ.get(wsgi.ENVIRON_KEY)
                if state is not None:
                    state.held_whole = True
        except Exception as exc:
            self.guard.failed(exc)
        return response

    def _handle_exception(self, wrapped, instance, args, kwargs):
        with self.guard:
            exc = args[0] if args else kwargs.get("e")
            state = self._request.environ.get(wsgi.ENVIRON_KEY)
            if state is not None and isinstance(exc, BaseException):
                state.record(exc)
        return wrapped(*args, **kwargs)


def _environ_args(environ, start_response):
    return environ, start_response


def _request_layout(flask: Any) -> Optional[tuple]:
    """(flask.request, its _get_current_object, the ContextVar it reads) where the proxy is werkzeug's LocalProxy
    of flask.globals._cv_request's `.request` (Flask >= 2.3): the C hooks read the request from the ContextVar,
    as that function does, without its frame. None (another layout): they call _get_current_object."""
    try:
        from contextvars import ContextVar
        from operator import attrgetter
        from types import SimpleNamespace

        from werkzeug.local import LocalProxy

        proxy, var = flask.request, flask.globals._cv_request
        getter = proxy._get_current_object
        code = getter.__code__
        cells = dict(zip(code.co_freevars, [cell.cell_contents for cell in getter.__closure__]))
        name, marker = cells.get("get_name"), object()
        if (type(proxy) is LocalProxy and type(var) is ContextVar and cells.get("local") is var
                and code.co_names == ("get", "LookupError", "RuntimeError") and type(name) is attrgetter
                and name(SimpleNamespace(request=marker)) is marker):
            return proxy, getter, var
    except Exception:
        pass
    return None


def _native_hooks(instrumentor: FlaskInstrumentor, flask: Any) -> Optional[tuple]:
    """(_wsgi_app, _full_dispatch_request) of `instrumentor` in C, where _wsgi_native was built and the C call
    path is on, and its class has FlaskInstrumentor's methods; None: the bound methods."""
    kind = type(instrumentor)
    if wsgi._NATIVE_PARTS is None or (kind._wsgi_app, kind._full_dispatch_request) != (
            FlaskInstrumentor._wsgi_app, FlaskInstrumentor._full_dispatch_request):
        return None
    native = wsgi._native("configure_flask", {
        "wsgi_app": FlaskInstrumentor._wsgi_app, "full_dispatch_request": FlaskInstrumentor._full_dispatch_request,
        "held_whole": FlaskInstrumentor._held_whole, "environ_args": _environ_args, "wsgi": vars(wsgi),
        "runtime": vars(runtime_context), "non_recording": _NonRecordingSpan}, "Flask's hooks run")
    return native and native.flask_hooks(instrumentor, _request_layout(flask))
