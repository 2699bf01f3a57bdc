"""Starlette (and apps built on it): the ASGI TraceMiddleware applied to every app, routes named.

`Starlette.__call__` is patched on the class, so apps made before the agent
started, subclasses and mounted sub-apps are all covered; the outermost call
makes the span (asgi.handle passes an already traced scope through). The span
wraps Starlette's own error middleware: an unhandled exception is the 500 it
sends, with the endpoint's exception as error.type. The route template is the matched route's
`path` behind the `path` of every Mount it was reached through
(`GET /api/items/{item_id}`).

A request someone else traces already (FastAPI's own telemetry, Starlette's
OpenTelemetryMiddleware, an upstream instrumentor's middleware) gets no span of
ours: self_tracing.py holds that rule and the list.
"""

from __future__ import annotations

import importlib
from typing import Any

from trace_run.core import config

from . import asgi, http_common, self_tracing, wsgi
from .base import TraceRunInstrumentor

PREFIX_KEY = "trace_run.route_prefix"  # the Mount paths matched so far, in the scope Starlette hands down


class StarletteInstrumentor(TraceRunInstrumentor):
    library = "starlette"

    def _patch(self, **kwargs: Any) -> None:
        # Patched from the hook on starlette.applications, whose import has not yet bound it on the package.
        applications = importlib.import_module("starlette.applications")
        routing = importlib.import_module("starlette.routing")

        http_common.reset()
        self._excluded = http_common.excluded_urls("asgi")
        self._excluded_fastapi = (http_common.excluded_urls("fastapi")
                                  if config.is_set("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") else self._excluded)
        self.wrap(applications.Starlette, "__call__", self._call)
        self.wrap(routing.Mount, "handle", self._mount)
        self.wrap(routing.Route, "handle", self._route)
        self.wrap(routing.WebSocketRoute, "handle", self._route)

    def _call(self, wrapped, instance, args, kwargs):
        scope, receive, send = _app_args(*args, **kwargs)
        owner = None
        fastapi = False
        with self.guard:
            if isinstance(scope, dict) and scope.get("type") in ("http", "websocket"):
                owner = self_tracing.asgi_owner(instance, scope)
                fastapi = self_tracing.is_fastapi(type(instance))
        if owner == self_tracing.FASTAPI and fastapi:  # (an app mounted in it: passed through, below)
            return self._fastapi_traced(wrapped, instance, scope, receive, send)
        if owner is not None:
            return wrapped(*args, **kwargs)
        excluded = self._excluded_fastapi if fastapi else self._excluded
        return asgi.handle(self.tracer, scope, receive, send, wrapped, excluded)

    async def _fastapi_traced(self, wrapped, instance, scope, receive, send) -> Any:
        """A request FastAPI traces itself: trace-run's redaction and header capture on its span."""
        marked = False
        with self.guard:
            span = self_tracing.fastapi_span(scope)
            self_tracing.adjust_request(span, scope)
            send = self_tracing.capturing_send(span, send)
            marked = self_tracing.starlette_mark_off(instance, scope)
        try:
            return await wrapped(scope, receive, send)
        finally:
            if marked:
                self_tracing.unmark(scope)

    def patch_fastapi(self, module) -> None:
        """FastAPI 0.142.0+ (registry submodule): trace-run's excluded URLs go in as its telemetry `exclude`."""
        if self._excluded_fastapi is not None and self_tracing.fastapi_has_telemetry(module):
            self.wrap(module.FastAPI, "__init__", self._fastapi_init)

    def _fastapi_init(self, wrapped, instance, args, kwargs):
        with self.guard:
            telemetry = kwargs.get("telemetry")
            if telemetry is None or isinstance(telemetry, dict):
                telemetry = dict(telemetry or {})
                telemetry["exclude"] = self_tracing.fastapi_exclude(telemetry.get("exclude"), self._excluded_fastapi,
                                                                    _request_url)
                kwargs = dict(kwargs, telemetry=telemetry)
        return wrapped(*args, **kwargs)

    def _mount(self, wrapped, instance, args, kwargs):
        with self.guard:
            scope = args[0] if args else kwargs.get("scope")
            if isinstance(scope, dict) and asgi.SCOPE_KEY in scope:
                scope[PREFIX_KEY] = scope.get(PREFIX_KEY, "") + (getattr(instance, "path", "") or "")
        return wrapped(*args, **kwargs)

    def _route(self, wrapped, instance, args, kwargs):
        request = None
        with self.guard:
            scope = args[0] if args else kwargs.get("scope")
            if isinstance(scope, dict):
                request = scope.get(asgi.SCOPE_KEY)
                if request is not None:
                    asgi.set_route(scope, scope.get(PREFIX_KEY, "") + (getattr(instance, "path", "") or ""))
        if request is None:
            return wrapped(*args, **kwargs)
        return self._recording(wrapped(*args, **kwargs), request)

    async def _recording(self, handled, request) -> Any:
        """The endpoint's exception, recorded before Starlette's error middleware sends the 500 (which ends
        the span); the exception itself propagates unchanged."""
        try:
            return await handled
        except Exception as exc:
            with self.guard:
                request.record(exc)
            raise


def _request_url(scope: dict) -> str:
    return wsgi._request_url(asgi.environ_view(scope))


def _app_args(scope, receive, send):
    return scope, receive, send
