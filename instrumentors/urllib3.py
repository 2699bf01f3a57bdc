"""urllib3 (1.26 and 2.x): one CLIENT span per `HTTPConnectionPool.urlopen`.

Retries inside one urlopen call belong to its span and carry its headers
(the same header dict is passed down to each attempt); redirects followed by
PoolManager call urlopen again, so each gets its own span and `traceparent`.
The caller's header dict is copied before anything is added.
"""

from __future__ import annotations

from typing import Any

from . import http_common
from .base import TraceRunInstrumentor

_ARGS = ("method", "url", "body", "headers")


class Urllib3Instrumentor(TraceRunInstrumentor):
    library = "urllib3"

    def _patch(self, **kwargs: Any) -> None:
        from urllib3.connectionpool import HTTPConnectionPool

        self.wrap(HTTPConnectionPool, "urlopen", http_common.client_wrapper(self, _read, _with_headers, _end))


def _read(pool: Any, args: tuple, kwargs: dict) -> tuple:
    bound = dict(zip(_ARGS, args))
    bound.update((k, kwargs[k]) for k in _ARGS if k in kwargs)
    url = http_common.full_url(pool.scheme, pool.host, pool.port, bound.get("url", ""))
    headers = bound.get("headers")
    if headers is None:
        headers = pool.headers
    return bound.get("method"), url, pool.host, pool.port or http_common.default_port(pool.scheme), headers, headers


def _with_headers(headers: Any, span: Any, args: tuple, kwargs: dict) -> tuple:
    return http_common.replace_argument(args, kwargs, 3, "headers", http_common.inject_copy(headers, span))


def _end(span, response) -> None:
    http_common.end_client(span, response.status, version=getattr(response, "version", None),
                           response_headers=response.headers)
