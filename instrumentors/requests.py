"""requests: one CLIENT span per HTTP exchange, made in `HTTPAdapter.send`.

The adapter is the level where each redirect is its own request, so every
redirect gets its own span and its own `traceparent`. The span marks the
context so urllib3 and http.client below make no spans of their own.
The PreparedRequest is copied before headers are added: the caller's object
(which it may send again) is never changed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from . import http_common
from .base import TraceRunInstrumentor


class RequestsInstrumentor(TraceRunInstrumentor):
    library = "requests"

    def _patch(self, **kwargs: Any) -> None:
        from requests.adapters import HTTPAdapter

        self.wrap(HTTPAdapter, "send", http_common.client_wrapper(self, _read, _with_headers, _end))


def _read(adapter: Any, args: tuple, kwargs: dict) -> tuple:
    request = args[0] if args else kwargs["request"]
    url = request.url
    parts = urlsplit(url)
    port = parts.port or http_common.default_port(parts.scheme)
    return request.method, url, parts.hostname, port, request.headers, request


def _with_headers(request: Any, span: Any, args: tuple, kwargs: dict) -> tuple:
    request = request.copy()  # copies the headers too
    http_common.inject(request.headers, span)
    return http_common.replace_argument(args, kwargs, 0, "request", request)


def _end(span, response) -> None:
    raw = getattr(response, "raw", None)
    http_common.end_client(span, response.status_code, version=getattr(raw, "version", None),
                           response_headers=response.headers)
