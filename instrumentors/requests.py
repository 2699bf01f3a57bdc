"""requests: one CLIENT span per HTTP exchange, made in `HTTPAdapter.send`.

The adapter is the level where each redirect is its own request, so every
redirect gets its own span and its own `traceparent`. The span marks the
context so urllib3 and http.client below make no spans of their own.
The PreparedRequest is copied before headers are added: the caller's object
(which it may send again) is never changed.
"""

from __future__ import annotations

from typing import Any

from . import http_common
from .base import TraceRunInstrumentor

_PLAIN: tuple = (None, None)  # (PreparedRequest, CaseInsensitiveDict): the types _copy copies itself


class RequestsInstrumentor(TraceRunInstrumentor):
    library = "requests"

    def _patch(self, **kwargs: Any) -> None:
        global _PLAIN
        from requests.adapters import HTTPAdapter
        from requests.models import PreparedRequest
        from requests.structures import CaseInsensitiveDict

        _PLAIN = (PreparedRequest, CaseInsensitiveDict)

        self.wrap(HTTPAdapter, "send", http_common.client_wrapper(self, _read, _with_headers, _end))


def _read(adapter: Any, args: tuple, kwargs: dict) -> tuple:
    request = args[0] if args else kwargs["request"]
    return request.method, request.url, http_common.FROM_URL, None, request.headers, request


def _with_headers(request: Any, span: Any, args: tuple, kwargs: dict) -> tuple:
    request = _copy(request)
    http_common.inject(request.headers, span)
    return http_common.replace_argument(args, kwargs, 0, "request", request)


def _copy(request: Any) -> Any:
    """`request.copy()`, but the cookie jar is shared, not copied (half of copy()'s ~5 us): this copy is
    only sent, and requests copies a jar before it changes one (redirects, digest auth)."""
    prepared, headers = _PLAIN
    if type(request) is not prepared or type(getattr(request, "headers", None)) is not headers:
        return request.copy()
    new = prepared.__new__(prepared)
    new.__dict__.update(request.__dict__)
    new.headers = request.headers.copy()
    return new


def _end(span, response) -> None:
    raw = getattr(response, "raw", None)
    http_common.end_client(span, response.status_code, version=getattr(raw, "version", None),
                           response_headers=response.headers)
