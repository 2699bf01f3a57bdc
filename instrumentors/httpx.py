"""httpx (sync and async): one CLIENT span per request a transport sends.

`HTTPTransport.handle_request` / `AsyncHTTPTransport.handle_async_request`
see every request the client sends, redirects included, each with its own
span and `traceparent`. The request object is copied before headers are
added, so a Request the caller sends again is unchanged.
"""

from __future__ import annotations

from typing import Any

from . import http_common
from .base import TraceRunInstrumentor, call_in_span, call_in_span_async, is_http_instrumentation_enabled


class HttpxInstrumentor(TraceRunInstrumentor):
    library = "httpx"

    def _patch(self, **kwargs: Any) -> None:
        import httpx

        http_common.reset()
        excluded = http_common.excluded_urls("httpx")
        instrumentor = self

        def start(args, kwargs):
            request = args[0] if args else kwargs["request"]
            url = str(request.url)
            if excluded is not None and excluded.search(url):
                return None, args, kwargs
            port = request.url.port or {"http": 80, "https": 443}.get(request.url.scheme)
            span = http_common.start_client(instrumentor.tracer, request.method, url, request.url.host, port,
                                            request.headers)
            original = request
            request = object.__new__(type(original))  # not copy.copy: Request pickling drops the stream
            request.__dict__.update(original.__dict__)
            request.headers = http_common.inject_copy(request.headers, span)
            if args:
                args = (request,) + tuple(args[1:])
            else:
                kwargs = dict(kwargs, request=request)
            return span, args, kwargs

        def handle_request(wrapped, instance, args, kwargs):
            if not is_http_instrumentation_enabled():
                return wrapped(*args, **kwargs)
            span = None
            with instrumentor.guard:
                span, args, kwargs = start(args, kwargs)
                token = http_common.enter_client(span) if span is not None else None
            if span is None:
                return http_common.call_excluded(wrapped, args, kwargs)
            return call_in_span(instrumentor.guard, span, token, wrapped, args, kwargs, http_common.end_with_error,
                                _end)

        async def handle_async_request(wrapped, instance, args, kwargs):
            if not is_http_instrumentation_enabled():
                return await wrapped(*args, **kwargs)
            span = None
            with instrumentor.guard:
                span, args, kwargs = start(args, kwargs)
                token = http_common.enter_client(span) if span is not None else None
            if span is None:
                return await wrapped(*args, **kwargs)
            return await call_in_span_async(instrumentor.guard, span, token, wrapped, args, kwargs,
                                            http_common.end_with_error, _end)

        self.wrap(httpx.HTTPTransport, "handle_request", handle_request)
        self.wrap(httpx.AsyncHTTPTransport, "handle_async_request", handle_async_request)


def _end(span, response) -> None:
    http_common.end_client(span, response.status_code, version=response.extensions.get("http_version"),
                           response_headers=response.headers)
