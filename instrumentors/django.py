"""Django: one SERVER span per request, named `METHOD route` from the URL resolver.

The handler classes are patched, never settings: `WSGIHandler.__call__` runs the
request through the WSGI middleware's `handle` and `ASGIHandler.__call__` through
the ASGI one's, so attributes, exclusions (`OTEL_PYTHON_DJANGO_EXCLUDED_URLS`),
header capture and propagation are theirs, and a streamed body is measured
whole. `BaseHandler.resolve_request` names the span from the match
(`GET users/<int:id>/`), and `response_for_exception` records an exception
Django turns into a 5xx. Settings are read only after Django's own
`load_middleware` has read them, so `settings.configure()` in the program and
any MIDDLEWARE (or none) work as bare.

Each part is patched when its module is imported (registry `submodules`): a
program that never serves HTTP imports no handler module because of us.
Management commands' system checks and runserver's migrations check run as
chatter: their queries make no root traces.

A program that uses the upstream instrumentor (its middleware in MIDDLEWARE,
put there by hand or by `DjangoInstrumentor().instrument()`) keeps its spans:
`self_tracing.django_owner(handler)` tells (from the MIDDLEWARE the handler loaded), and that
handler then makes none of its own.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, Iterator

from opentelemetry import context as otel_context

from . import asgi, chatter, http_common, registry, self_tracing, wsgi
from .base import TraceRunInstrumentor
from .self_tracing import DJANGO_UPSTREAM_MARK, django_settings_have_upstream_middleware

__all__ = ["DjangoInstrumentor"]

def _request_state(request: Any):
    """The wsgi._Request of a Django request (WSGIRequest.environ, ASGIRequest.scope), or None."""
    environ = getattr(request, "environ", None)
    if isinstance(environ, dict):
        return environ.get(wsgi.ENVIRON_KEY)
    scope = getattr(request, "scope", None)
    return scope.get(asgi.SCOPE_KEY) if isinstance(scope, dict) else None


class DjangoInstrumentor(TraceRunInstrumentor):
    library = "django"

    def _patch(self, **kwargs: Any) -> None:
        http_common.reset()
        self._excluded = http_common.excluded_urls(self.library)
        for module, method in registry.BUILTIN[self.library].submodules:  # parts imported already; the rest later
            loaded = sys.modules.get(module)
            if loaded is not None:
                getattr(self, method)(loaded)

    # -- the parts ------------------------------------------------------------------
    def patch_base(self, module: Any) -> None:
        import django.core.handlers.exception as exception  # imported by base itself

        self.wrap(module.BaseHandler, "load_middleware", self._load_middleware)
        self.wrap(module.BaseHandler, "resolve_request", self._resolve_request)
        self.wrap(exception, "response_for_exception", self._response_for_exception)

    def patch_wsgi(self, module: Any) -> None:
        self.wrap(module.WSGIHandler, "__call__", self._wsgi_call)

    def patch_asgi(self, module: Any) -> None:
        self.wrap(module.ASGIHandler, "__call__", self._asgi_call)

    def patch_management(self, module: Any) -> None:
        self.wrap(module.BaseCommand, "check", _as_chatter)
        self.wrap(module.BaseCommand, "check_migrations", _as_chatter)

    # -- wrappers -------------------------------------------------------------------
    def _load_middleware(self, wrapped, instance, args, kwargs):
        result = wrapped(*args, **kwargs)
        with self.guard:  # settings were read just now by Django: reading them again configures nothing
            setattr(instance, DJANGO_UPSTREAM_MARK, django_settings_have_upstream_middleware())
        return result

    def _traced_elsewhere(self, handler: Any) -> bool:
        """Upstream's Django instrumentation owns this handler (or the check failed): we step aside."""
        aside = True
        with self.guard:
            aside = self_tracing.django_owner(handler) is not None
        return aside

    def _wsgi_call(self, wrapped, instance, args, kwargs):
        if self._traced_elsewhere(instance):
            return wrapped(*args, **kwargs)
        environ, start_response = _wsgi_args(*args, **kwargs)
        return wsgi.handle(self.tracer, environ, start_response, wrapped, self._excluded, self._keep_response)

    def _keep_response(self, result: Any, request: Any) -> Any:
        """Django's own response goes back to the server, unchanged (code that calls the handler reads
        `status_code`, servers look for their file wrapper): the span ends when the server closes it,
        through Django's resource closers, and a streamed body is iterated in the request's context."""
        with self.guard:
            response = _django_response(result)
            if response is None:  # a server's file wrapper that keeps no `filelike`: ends here, unmeasured
                request.end()
            else:
                response._resource_closers.append(partial(self._end, request))
                if response.streaming and not getattr(response, "is_async", False):
                    response._iterator = _in_context(response._iterator, request, self.guard)
        return result

    def _end(self, request: Any) -> None:
        with self.guard:
            request.end()

    def _asgi_call(self, wrapped, instance, args, kwargs):
        if self._traced_elsewhere(instance):
            return wrapped(*args, **kwargs)
        scope, receive, send = _asgi_args(*args, **kwargs)
        return asgi.handle(self.tracer, scope, receive, send, wrapped, self._excluded)

    def _resolve_request(self, wrapped, instance, args, kwargs):
        match = wrapped(*args, **kwargs)  # Resolver404 propagates: the span keeps the bare method
        with self.guard:
            request = args[0] if args else kwargs.get("request")
            state = _request_state(request)
            if state is not None:
                route = getattr(match, "route", None)
                if isinstance(route, str):
                    wsgi.set_route(state.span, getattr(request, "method", None) or "", route or "/")
        return match

    def _response_for_exception(self, wrapped, instance, args, kwargs):
        response = wrapped(*args, **kwargs)
        with self.guard:
            request, exc = _exception_args(*args, **kwargs)
            state = _request_state(request)
            status = getattr(response, "status_code", None)
            if state is not None and isinstance(status, int) and http_common.server_error(status):
                state.record(exc)  # a 404 or 403 is the client's: not recorded
        return response


def _django_response(result: Any) -> Any:
    """The HttpResponse behind what WSGIHandler returned: the response itself, or for a FileResponse
    the `wsgi.file_wrapper` around its file, whose close() Django made the response's close()."""
    if hasattr(result, "_resource_closers"):
        return result
    close = getattr(getattr(result, "filelike", None), "close", None)
    owner = getattr(close, "__self__", None)
    return owner if hasattr(owner, "_resource_closers") else None


def _in_context(iterator: Iterator, request: Any, guard: Any) -> Iterator:
    """A streamed body's chunks made with the request's span current (the server iterates outside it)."""
    while True:
        token = otel_context.attach(request.ctx)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except BaseException as exc:
            with guard:
                request.end(exc)
            raise
        finally:
            otel_context.detach(token)
        yield chunk


def _as_chatter(wrapped, instance, args, kwargs):
    """System checks and the migrations check: what a command runs before its work is chatter."""
    with chatter.suppress_chatter():
        return wrapped(*args, **kwargs)


def _wsgi_args(environ, start_response):
    return environ, start_response


def _asgi_args(scope, receive, send):
    return scope, receive, send


def _exception_args(request, exc):
    return request, exc
