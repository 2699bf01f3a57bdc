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
from .base import TraceRunInstrumentor, call_in_span, is_http_instrumentation_enabled


class RequestsInstrumentor(TraceRunInstrumentor):
    library = "requests"

    def _patch(self, **kwargs: Any) -> None:
        from requests.adapters import HTTPAdapter

        http_common.reset()
        excluded = http_common.excluded_urls("requests")
        instrumentor = self

        def send(wrapped, instance, args, kwargs):
            if not is_http_instrumentation_enabled():
                return wrapped(*args, **kwargs)
            span = token = None
            with instrumentor.guard:
                request = args[0] if args else kwargs["request"]
                url = request.url
                if excluded is None or not excluded.search(url):
                    parts = urlsplit(url)
                    span = http_common.start_client(instrumentor.tracer, request.method, url, parts.hostname,
                                                    parts.port or _default_port(parts.scheme), request.headers)
                    request = request.copy()  # copies the headers too
                    http_common.inject(request.headers, span)
                    if args:
                        args = (request,) + tuple(args[1:])
                    else:
                        kwargs = dict(kwargs, request=request)
                    token = http_common.enter_client(span)
            if span is None:
                return http_common.call_excluded(wrapped, args, kwargs)
            return call_in_span(instrumentor.guard, span, token, wrapped, args, kwargs, http_common.end_with_error,
                                _end)

        self.wrap(HTTPAdapter, "send", send)


def _end(span, response) -> None:
    raw = getattr(response, "raw", None)
    http_common.end_client(span, response.status_code, version=getattr(raw, "version", None),
                           response_headers=response.headers)


def _default_port(scheme: str):
    return {"http": 80, "https": 443}.get(scheme)
