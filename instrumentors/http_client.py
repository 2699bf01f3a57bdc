"""http.client (and so urllib.request): one CLIENT span per request on a connection.

A request on an `HTTPConnection` spans several calls: the span starts in
`putrequest` (where the propagation headers are added with `putheader`),
and ends in `getresponse`, or when `endheaders`/`getresponse` raise (refused
connection, timeout), or when the connection is closed or reused without a
response. Inside a requests or urllib3 span this layer only calls through.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace

from . import http_common
from .base import TraceRunInstrumentor, call_in_span, is_http_instrumentation_enabled

_SPAN = "_trace_run_span"


def _pop(conn) -> Any:
    try:
        return conn.__dict__.pop(_SPAN, None)
    except AttributeError:
        return None


class HttpClientInstrumentor(TraceRunInstrumentor):
    library = "urllib"

    def _patch(self, **kwargs: Any) -> None:
        import http.client as hc

        http_common.reset()
        excluded = http_common.excluded_urls("urllib")
        instrumentor = self
        https_class = getattr(hc, "HTTPSConnection", None)

        def putrequest(wrapped, instance, args, kwargs):
            pending = _pop(instance)
            if pending is not None:
                with instrumentor.guard:
                    http_common.end_client(pending)
            if not is_http_instrumentation_enabled():
                return wrapped(*args, **kwargs)
            span = None
            with instrumentor.guard:
                method = args[0] if args else kwargs.get("method")
                url = args[1] if len(args) > 1 else kwargs.get("url", "/")
                full = _full_url(instance, url, https_class)
                if excluded is None or not excluded.search(full):
                    span = http_common.start_client(instrumentor.tracer, method, full, instance.host,
                                                    instance.port)
            if span is None:
                return wrapped(*args, **kwargs)
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as exc:
                with instrumentor.guard:
                    http_common.end_client(span, exc=exc)
                raise
            with instrumentor.guard:
                carrier: dict = {}
                propagate.inject(carrier, context=trace.set_span_in_context(span))
                for key, value in carrier.items():
                    instance.putheader(key, value)
                instance.__dict__[_SPAN] = span
            return result

        def endheaders(wrapped, instance, args, kwargs):
            if _SPAN not in instance.__dict__:
                return wrapped(*args, **kwargs)
            try:
                return wrapped(*args, **kwargs)
            except BaseException as exc:
                span = _pop(instance)
                if span is not None:
                    with instrumentor.guard:
                        http_common.end_client(span, exc=exc)
                raise

        def getresponse(wrapped, instance, args, kwargs):
            span = _pop(instance)
            if span is None:
                return wrapped(*args, **kwargs)
            return call_in_span(instrumentor.guard, span, None, wrapped, args, kwargs, http_common.end_with_error,
                                _end)

        def close(wrapped, instance, args, kwargs):
            span = _pop(instance)
            if span is not None:
                with instrumentor.guard:
                    http_common.end_client(span)
            return wrapped(*args, **kwargs)

        self.wrap(hc.HTTPConnection, "putrequest", putrequest)
        self.wrap(hc.HTTPConnection, "endheaders", endheaders)
        self.wrap(hc.HTTPConnection, "getresponse", getresponse)
        self.wrap(hc.HTTPConnection, "close", close)


def _end(span, response) -> None:
    http_common.end_client(span, response.status, version=response.version, response_headers=response.getheaders())


def _full_url(conn, url: Any, https_class) -> str:
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    url = str(url)
    if "://" in url:
        return url
    scheme = "https" if https_class is not None and isinstance(conn, https_class) else "http"
    host = conn.host
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    default = 443 if scheme == "https" else 80
    netloc = host if conn.port == default else "%s:%s" % (host, conn.port)
    return "%s://%s%s" % (scheme, netloc, url)
