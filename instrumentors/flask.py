"""Flask: one SERVER span per request, named `METHOD route-template`.

The class is patched (`Flask.wsgi_app`), never the `flask.Flask` name, so
apps made before the agent started, by factories, or from a name bound with
`from flask import Flask` are all traced. The route template is known once
Flask has matched the URL; `full_dispatch_request` names the span then.
Unhandled exceptions are recorded in `handle_exception`, after which Flask's
own error handling runs unchanged.
"""

from __future__ import annotations

from typing import Any

from . import http_common, wsgi
from .base import TraceRunInstrumentor


class FlaskInstrumentor(TraceRunInstrumentor):
    library = "flask"

    def _patch(self, **kwargs: Any) -> None:
        import flask

        http_common.reset()
        excluded = http_common.excluded_urls("flask")
        instrumentor = self
        request = flask.request

        def wsgi_app(wrapped, instance, args, kwargs):
            environ, start_response = _environ_args(*args, **kwargs)
            return wsgi.handle(instrumentor.tracer, environ, start_response, wrapped, excluded)

        def full_dispatch_request(wrapped, instance, args, kwargs):
            with instrumentor.guard:
                req = request._get_current_object()  # one context lookup, not one per attribute
                environ = req.environ
                state = environ.get(wsgi.ENVIRON_KEY)
                rule = req.url_rule
                if state is not None and rule is not None:
                    wsgi.set_route(state.span, environ.get("REQUEST_METHOD", ""), rule.rule)
            return wrapped(*args, **kwargs)

        def handle_exception(wrapped, instance, args, kwargs):
            with instrumentor.guard:
                exc = args[0] if args else kwargs.get("e")
                state = request.environ.get(wsgi.ENVIRON_KEY)
                if state is not None and isinstance(exc, BaseException):
                    state.record(exc)
            return wrapped(*args, **kwargs)

        self.wrap(flask.Flask, "wsgi_app", wsgi_app)
        self.wrap(flask.Flask, "full_dispatch_request", full_dispatch_request)
        self.wrap(flask.Flask, "handle_exception", handle_exception)


def _environ_args(environ, start_response):
    return environ, start_response
