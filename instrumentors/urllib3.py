"""urllib3 (1.26 and 2.x): one CLIENT span per `HTTPConnectionPool.urlopen`.

Retries inside one urlopen call belong to its span and carry its headers
(the same header dict is passed down to each attempt); redirects followed by
PoolManager call urlopen again, so each gets its own span and `traceparent`.
Where the pool's connections are urllib3's own (over http.client) and the
default propagators would write one `traceparent`, http.client adds that line
to what it sends (see `propagation.WireLine`); otherwise the caller's header
dict is copied before anything is added.
"""

from __future__ import annotations

from typing import Any

from . import http_client, http_common, propagation
from .base import TraceRunInstrumentor

_ARGS = ("method", "url", "body", "headers")
# (urllib3's HTTPConnection, HTTPSConnection, HTTPHeaderDict, http.client's HTTPConnection) once patched
_OWN: tuple = ()


class Urllib3Instrumentor(TraceRunInstrumentor):
    library = "urllib3"

    def _patch(self, **kwargs: Any) -> None:
        global _OWN
        import http.client

        from urllib3._collections import HTTPHeaderDict
        from urllib3.connection import HTTPConnection, HTTPSConnection
        from urllib3.connectionpool import HTTPConnectionPool

        _OWN = (HTTPConnection, HTTPSConnection, HTTPHeaderDict, http.client.HTTPConnection)
        self.wrap(HTTPConnectionPool, "urlopen",
                  http_common.client_wrapper(self, _read, _with_headers, _end, wire=_wire))


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


def _wire(pool: Any, headers: Any, span: Any) -> Any:
    """The `traceparent` line for http.client to send (`propagation.WireLine`), or None: the copy instead.
    The line where the pool makes urllib3's own connections (urllib3.http2, emscripten, botocore and the
    like make others), http.client's `putrequest` is ours, and the headers hold no `traceparent`."""
    own = _OWN
    kind = pool.ConnectionCls
    if (kind is not own[0] and kind is not own[1]) or own[3].putrequest is not http_client.wired:
        return None
    if headers:
        if type(headers) is dict:
            if any(type(k) is not str or k.lower() == "traceparent" for k in headers):
                return None
        elif type(headers) is not own[2] or "traceparent" in headers:  # (HTTPHeaderDict: case-insensitive)
            return None
    return propagation.wire_line(span)


def _end(span, response) -> None:
    http_common.end_client(span, response.status, version=getattr(response, "version", None),
                           response_headers=response.headers)
