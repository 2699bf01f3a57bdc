"""urllib3 (1.26 and 2.x): one CLIENT span per `HTTPConnectionPool.urlopen`.

Retries inside one urlopen call belong to its span and carry its headers
(the same header dict is passed down to each attempt); redirects followed by
PoolManager call urlopen again, so each gets its own span and `traceparent`.
The caller's header dict is copied before anything is added.
"""

from __future__ import annotations

from typing import Any

from . import http_common
from .base import TraceRunInstrumentor, call_in_span, is_http_instrumentation_enabled

_ARGS = ("method", "url", "body", "headers")


class Urllib3Instrumentor(TraceRunInstrumentor):
    library = "urllib3"

    def _patch(self, **kwargs: Any) -> None:
        from urllib3.connectionpool import HTTPConnectionPool

        http_common.reset()
        excluded = http_common.excluded_urls("urllib3")
        instrumentor = self

        def urlopen(wrapped, instance, args, kwargs):
            if not is_http_instrumentation_enabled():
                return wrapped(*args, **kwargs)
            span = token = None
            with instrumentor.guard:
                bound = dict(zip(_ARGS, args))
                bound.update((k, kwargs[k]) for k in _ARGS if k in kwargs)
                method, url = bound.get("method"), bound.get("url", "")
                full = _full_url(instance, url)
                if excluded is None or not excluded.search(full):
                    headers = bound.get("headers")
                    if headers is None:
                        headers = instance.headers
                    span = http_common.start_client(instrumentor.tracer, method, full, instance.host,
                                                    instance.port or _default_port(instance.scheme), headers)
                    headers = http_common.inject_copy(headers, span)
                    if len(args) > 3:
                        args = tuple(args[:3]) + (headers,) + tuple(args[4:])
                    else:
                        kwargs = dict(kwargs, headers=headers)
                    token = http_common.enter_client(span)
            if span is None:
                return http_common.call_excluded(wrapped, args, kwargs)
            return call_in_span(instrumentor.guard, span, token, wrapped, args, kwargs, http_common.end_with_error,
                                _end)

        self.wrap(HTTPConnectionPool, "urlopen", urlopen)


def _end(span, response) -> None:
    http_common.end_client(span, response.status, version=getattr(response, "version", None),
                           response_headers=response.headers)


def _default_port(scheme: str):
    return {"http": 80, "https": 443}.get(scheme)


def _full_url(pool, url: str) -> str:
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    if "://" in url:
        return url
    host = pool.host
    if host and ":" in host and not host.startswith("["):
        host = "[%s]" % host
    default = _default_port(pool.scheme)
    netloc = host if not pool.port or pool.port == default else "%s:%s" % (host, pool.port)
    return "%s://%s%s" % (pool.scheme, netloc, url)
