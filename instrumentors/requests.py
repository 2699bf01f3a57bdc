"""requests: one CLIENT span per HTTP exchange, made in `HTTPAdapter.send`.

The adapter is the level where each redirect is its own request, so every
redirect gets its own span and its own `traceparent`. The span marks the
context so urllib3 and http.client below make no spans of their own.
Where the request goes out through urllib3's own connections over http.client
(the default adapter and pools) and the default propagators would write one
`traceparent`, http.client adds that line to the request it sends (see
`propagation.WireLine`): the request object is not copied, and urllib3 and
http.client do no per-header work for it. Otherwise the PreparedRequest is
copied before headers are added: the caller's object (which it may send
again) is never changed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from opentelemetry.trace import NonRecordingSpan as _NonRecordingSpan

from . import http_client, http_common, propagation
from .base import TraceRunInstrumentor

_PLAIN: tuple = (None, None)  # (PreparedRequest, CaseInsensitiveDict): the types _copy copies itself
_STORE_COPY = False  # CaseInsensitiveDict.copy() is a copy of its `_store` (checked once, see _store_copies)
# What _wire compares against, as _remember_defaults found them: HTTPAdapter (None: a layout not recognised),
# urllib3's pool classes by scheme, HTTPConnectionPool, HTTPSConnectionPool and their connection classes,
# http.client's HTTPConnection
_ADAPTER: Any = None
_POOLS = _HTTP_POOL = _HTTPS_POOL = _HTTP_CONNECTION = _HTTPS_CONNECTION = _CLIENT_CONNECTION = None


class RequestsInstrumentor(TraceRunInstrumentor):
    library = "requests"

    def _patch(self, **kwargs: Any) -> None:
        global _PLAIN, _STORE_COPY
        from requests.adapters import HTTPAdapter
        from requests.models import PreparedRequest
        from requests.structures import CaseInsensitiveDict

        _PLAIN = (PreparedRequest, CaseInsensitiveDict)
        _STORE_COPY = _store_copies(CaseInsensitiveDict)
        _remember_defaults(HTTPAdapter)

        self.wrap(HTTPAdapter, "send", http_common.client_wrapper(self, _read, _with_headers, _end, wire=_wire))


def _remember_defaults(adapter: type) -> None:
    global _ADAPTER, _POOLS, _HTTP_POOL, _HTTPS_POOL, _HTTP_CONNECTION, _HTTPS_CONNECTION, _CLIENT_CONNECTION
    _ADAPTER = None
    try:
        import http.client

        from urllib3 import connection, connectionpool, poolmanager

        pools = poolmanager.pool_classes_by_scheme
        plain, tls = connectionpool.HTTPConnectionPool, connectionpool.HTTPSConnectionPool
        if (pools.get("http") is plain and pools.get("https") is tls
                and plain.ConnectionCls is connection.HTTPConnection
                and tls.ConnectionCls is connection.HTTPSConnection):
            _POOLS, _HTTP_POOL, _HTTPS_POOL = pools, plain, tls
            _HTTP_CONNECTION, _HTTPS_CONNECTION = plain.ConnectionCls, tls.ConnectionCls
            _CLIENT_CONNECTION, _ADAPTER = http.client.HTTPConnection, adapter
    except Exception:
        pass  # every request takes the copy


def _wire(adapter: Any, request: Any, span: Any) -> Any:
    """The `traceparent` line for http.client to send (`propagation.WireLine`), or None: the copy instead.
    The line where the request goes through urllib3's own pools and connections over http.client, whose
    `putrequest` is ours: an HTTPAdapter exactly (a subclass may send otherwise), its pool manager's classes
    and the pools' connection classes urllib3's (urllib3.http2 and emscripten replace them); and where the
    request holds no `traceparent` of its own (the copy replaces it, as always)."""
    if (type(adapter) is not _ADAPTER or _CLIENT_CONNECTION.putrequest is not http_client.wired
            or _HTTP_POOL.ConnectionCls is not _HTTP_CONNECTION or _HTTPS_POOL.ConnectionCls is not _HTTPS_CONNECTION):
        return None
    # (attribute reads, not getattr() nor the adapter's __dict__: the interpreter serves these from the inline
    # values it specialized for, with no lookup through the type nor an entry of the type attribute cache)
    try:
        if adapter.poolmanager.pool_classes_by_scheme is not _POOLS:
            return None
    except AttributeError:
        return None
    headers = request.headers
    if type(headers) is _PLAIN[1] and _STORE_COPY:
        if "traceparent" in headers._store:  # (its keys lower-cased)
            return None
    elif "traceparent" in headers:
        return None
    return propagation.wire_line(span)


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
    new.headers = copy_headers(request.headers)
    return new


def copy_headers(headers: Any) -> Any:
    """`headers.copy()` for requests' CaseInsensitiveDict: its `_store` copied as it is (copy() rebuilds
    it through `update` and a Python `__setitem__` per header, ~140 bytecodes a request)."""
    store = getattr(headers, "_store", None) if _STORE_COPY and type(headers) is _PLAIN[1] else None
    if type(store) is not OrderedDict:
        return headers.copy()
    new = _PLAIN[1].__new__(_PLAIN[1])
    new._store = OrderedDict(store)
    return new


def _store_copies(kind: type) -> bool:
    """Does `kind().copy()` hold nothing but a `_store` equal to the original's (its release's layout)?"""
    try:
        sample = kind({"Accept": "*/*", "X-Two": "2"})
        copied = sample.copy()
        return (type(copied) is kind and list(vars(copied)) == ["_store"] == list(vars(sample))
                and type(sample._store) is OrderedDict and list(copied._store.items()) == list(sample._store.items()))
    except Exception:
        return False


def _end(span, response) -> None:
    if type(span) is _NonRecordingSpan:  # a trace not sampled: the caller's span, whose end does nothing
        return
    raw = getattr(response, "raw", None)
    http_common.end_client(span, response.status_code, version=getattr(raw, "version", None),
                           response_headers=response.headers)
