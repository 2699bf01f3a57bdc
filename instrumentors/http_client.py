"""http.client (and so urllib.request): one CLIENT span per request on a connection.

A request on an `HTTPConnection` spans several calls: the span starts in
`putrequest` (where the propagation headers are added with `putheader`),
and ends in `getresponse`, or when `endheaders`/`getresponse` raise (refused
connection, timeout), or when the connection is closed or reused without a
response. Inside a requests or urllib3 span this layer only calls through.
"""

from __future__ import annotations

import weakref
from typing import Any

from trace_run.core import runtime_context
from trace_run.core.compat import SUPPRESS_HTTP_INSTRUMENTATION_KEY

from . import errors, http_common, propagation, spans
from .base import TraceRunInstrumentor, is_http_instrumentation_enabled

# The span a request made here waits in until its response, by the connection's id: never in the connection's
# `__dict__`. On CPython 3.11 and 3.12 reading an instance's `__dict__` turns its inline attribute values into a
# dict for good, and http.client's own reads of that connection's attributes (~60 a request) then take the
# interpreter's slow path: each through the type's attribute lookup, ~2x the time and more type-cache collisions.
# An entry holds a weak reference to its connection whose callback removes it: a connection dropped without an
# answer or close takes its span with it, as before.
_PENDING: dict = {}
_WireLine = propagation.WireLine
_get_current = runtime_context.get_current
# HTTPConnection.putrequest as this instrumentor set it (None: not instrumented). A client above compares it
# with what the class holds: where they are the same, `putrequest` sends a `WireLine` it finds in the context.
wired: Any = None
_output: Any = None  # http.client's HTTPConnection._output: what putheader ends in


def _pop(conn) -> Any:
    """The span pending on `conn` (None: none), removed."""
    if not _PENDING:
        return None
    entry = _PENDING.pop(id(conn), None)
    return entry[1] if entry is not None and entry[0]() is conn else None


def _put(conn, span) -> None:
    key = id(conn)  # (HTTPConnection has __weakref__: every subclass takes weak references)
    _PENDING[key] = (weakref.ref(conn, lambda _ref: _PENDING.pop(key, None)), span)


class HttpClientInstrumentor(TraceRunInstrumentor):
    library = "urllib"

    def _patch(self, **kwargs: Any) -> None:
        import http.client as hc

        http_common.reset()
        self._excluded = http_common.excluded_urls(self.library)
        self._https_class = getattr(hc, "HTTPSConnection", None)
        self.wrap(hc.HTTPConnection, "putrequest", self._putrequest)
        self.wrap(hc.HTTPConnection, "endheaders", self._endheaders)
        self.wrap(hc.HTTPConnection, "getresponse", spans.wrapper(self.guard, _response_start, errors.end_failed, _end))
        self.wrap(hc.HTTPConnection, "close", self._close)
        global wired, _output
        wired, _output = hc.HTTPConnection.__dict__["putrequest"], hc.HTTPConnection._output

    def _unpatch(self, **kwargs: Any) -> None:
        global wired
        wired = None

    def _end_pending(self, conn: Any) -> None:
        """A request left without a response (the connection is reused or closed): its span ends."""
        pending = _pop(conn)
        if pending is not None:
            with self.guard:
                http_common.end_client(pending)

    def _putrequest(self, wrapped, instance, args, kwargs):
        if _PENDING and id(instance) in _PENDING:  # (a call less for the usual connection: nothing pending)
            self._end_pending(instance)
        if not is_http_instrumentation_enabled():
            result = wrapped(*args, **kwargs)
            line = _get_current().get(SUPPRESS_HTTP_INSTRUMENTATION_KEY)
            if type(line) is _WireLine:  # a client above made the span: its traceparent goes out with the request
                if type(instance)._output is _output:  # putheader's last step, http.client's own
                    try:
                        buffer = instance._buffer  # (what _output appends to; read as it reads it)
                    except AttributeError:
                        buffer = None
                    if type(buffer) is list:
                        buffer.append(line)
                        return result
                with self.guard:  # a connection class of its own: through its putheader, its failure not the host's
                    name, _, value = line.partition(b": ")
                    instance.putheader(name.decode("ascii"), value.decode("ascii"))
            return result
        span = None
        with self.guard:
            method = args[0] if args else kwargs.get("method")
            url = args[1] if len(args) > 1 else kwargs.get("url", "/")
            scheme = "https" if self._https_class is not None and isinstance(instance, self._https_class) else "http"
            userinfo, at, host = instance.host.rpartition("@")  # urllib.request leaves `user:pw@` in the host
            full = http_common.full_url(scheme, _host(host), instance.port, url, userinfo + at)
            if self._excluded is None or not self._excluded.search(full):
                span = http_common.start_client(self.tracer, method, full, _host(host), instance.port)
        if span is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            with self.guard:
                errors.end_failed(span, exc)
            raise
        with self.guard:
            carrier: dict = {}
            propagation.inject(carrier, span)
            for key, value in carrier.items():
                instance.putheader(key, value)
            _put(instance, span)
        return result

    def _endheaders(self, wrapped, instance, args, kwargs):
        if not _PENDING or id(instance) not in _PENDING:
            return wrapped(*args, **kwargs)
        try:
            return wrapped(*args, **kwargs)
        except BaseException as exc:
            span = _pop(instance)
            if span is not None:
                with self.guard:
                    errors.end_failed(span, exc)
            raise

    def _close(self, wrapped, instance, args, kwargs):
        self._end_pending(instance)
        return wrapped(*args, **kwargs)


def _response_start(conn: Any, args: tuple, kwargs: dict):
    """The span putrequest left on the connection ends with its response (None: nothing to end)."""
    span = _pop(conn) if _PENDING else None  # (a call less where nothing is pending: every response asks)
    return None if span is None else (span, None, args, kwargs)


def _end(span, response) -> None:
    http_common.end_client(span, response.status, version=response.version, response_headers=response.getheaders())


def _host(host: str) -> str:
    """`server.address`: the host alone, without userinfo or IPv6 brackets."""
    host = host.rpartition("@")[2]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host
