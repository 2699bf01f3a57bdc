"""httpx (sync and async): one CLIENT span per request a transport sends.

`HTTPTransport.handle_request` / `AsyncHTTPTransport.handle_async_request`
see every request the client sends, redirects included, each with its own
span and `traceparent`. The request object is copied before headers are
added, so a Request the caller sends again is unchanged.
"""

from __future__ import annotations

from typing import Any

from . import http_common
from .base import TraceRunInstrumentor


class HttpxInstrumentor(TraceRunInstrumentor):
    library = "httpx"

    def _patch(self, **kwargs: Any) -> None:
        import httpx

        self.wrap(httpx.HTTPTransport, "handle_request", http_common.client_wrapper(self, _read, _with_headers, _end))
        self.wrap(httpx.AsyncHTTPTransport, "handle_async_request",
                  http_common.client_wrapper(self, _read, _with_headers, _end, is_async=True))


def _read(transport: Any, args: tuple, kwargs: dict) -> tuple:
    request = args[0] if args else kwargs["request"]
    url = request.url
    return request.method, str(url), url.host, url.port or http_common.default_port(url.scheme), request.headers, \
        request


def _with_headers(original: Any, span: Any, args: tuple, kwargs: dict) -> tuple:
    request = object.__new__(type(original))  # not copy.copy: Request pickling drops the stream
    request.__dict__.update(original.__dict__)
    request.headers = http_common.inject_copy(request.headers, span)
    return http_common.replace_argument(args, kwargs, 0, "request", request)


def _end(span, response) -> None:
    http_common.end_client(span, response.status_code, version=response.extensions.get("http_version"),
                           response_headers=response.headers)
