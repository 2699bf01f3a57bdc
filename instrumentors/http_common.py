"""What every HTTP instrumentor shares, so the rules live in one place.

URL redaction, excluded URLs, header capture, method normalisation, the
status rules, and "one CLIENT span per HTTP request" for layered clients
(requests over urllib3 over http.client): the outermost client layer marks
the context while its span is active and the inner layers see the mark and
only call through. The mark is the API's "suppress HTTP instrumentation" key,
so upstream instrumentors honour it too.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

from opentelemetry import context as otel_context

# opentelemetry.trace before opentelemetry.propagate (imported by .propagation): the agent builds the SDK
# when opentelemetry.trace is imported, and the propagate module (which imports it half-way through)
# must not be half-built then.
from opentelemetry import trace
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import SpanKind
from trace_run.core import config, runtime_context
from trace_run.core.compat import SUPPRESS_HTTP_INSTRUMENTATION_KEY

from . import bounds, errors, propagation, spans, url_redaction
from .base import is_http_instrumentation_enabled
from .url_redaction import REDACTED, redact_query, redact_url

__all__ = [
    "KNOWN_METHODS", "normalize_method", "redact_url", "redact_query", "bounded_url", "bounded_query",
    "excluded_urls", "capture",
    "client_attributes", "start_client", "end_client", "client_wrapper", "enter_client",
    "FROM_URL", "default_port", "full_url", "inject", "inject_copy", "reset", "ALWAYS_REDACTED", "REDACTED",
]

KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
OTHER = "_OTHER"
ALWAYS_REDACTED = frozenset(("authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"))

# -- methods --------------------------------------------------------------------------


def normalize_method(method: Any) -> tuple:
    """(semconv method, original or None): unknown or non-upper-case methods become `_OTHER`."""
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    method = str(method)
    if method in KNOWN_METHODS:
        return method, None
    return OTHER, method


def span_name(method: str) -> str:
    """`GET`; `HTTP` for methods outside the known set (low cardinality)."""
    return "HTTP" if method == OTHER else method


# -- redaction: url_redaction holds it (redact_url, redact_query are re-exported) ---------


_AUTHORITY_END = re.compile(r"[/?#]")


def bounded_url(url: Any) -> tuple:
    """(redact_url(url) within the value bound, whether it was cut). A huge URL is cut before it is
    redacted, so redacting costs the bound, not the URL; the authority (where user:password sits) is
    always redacted whole, and a query value cut short is still redacted."""
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    url = str(url)
    bound = bounds.limit()
    if bound is None or len(url) <= bound:
        return bounds.cut(redact_url(url), bound)
    scheme_end = url.find("://")
    keep = bound
    if scheme_end >= 0:
        m = _AUTHORITY_END.search(url, scheme_end + 3)
        keep = max(bound, m.start() if m else len(url))
    return bounds.cut(redact_url(url[:keep]), bound, force=True)


def bounded_query(query: str, bound: Optional[int] = None) -> tuple:
    """(redact_query(query) within the value bound, whether it was cut), as bounded_url."""
    if bound is None:
        bound = bounds.limit()
    if bound is None or len(query) <= bound:
        return bounds.cut(redact_query(query), bound)
    return bounds.cut(redact_query(query[:bound]), bound, force=True)


# -- settings (read once from the environment) -----------------------------------------

_settings: dict = {}


def reset() -> None:
    """Forget settings read from the environment (tests; a new instrument())."""
    _settings.clear()
    url_redaction.reset()


def compile_patterns(name: str, patterns: list, flags: int = 0, full: bool = False):
    """One regex for a list of patterns (None if empty); a bad pattern is warned about and left out."""
    good = []
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            config.warn(name, p, "the other patterns", "not a regular expression: %s" % exc)
            continue
        good.append("(?:%s)" % p)
    if not good:
        return None
    joined = "|".join(good)
    return re.compile(("(?:%s)\\Z" % joined) if full else joined, flags)


def middleware_setup(module: str, library: str, tracer_provider=None, excluded: Optional[str] = None) -> tuple:
    """(tracer, excluded-URL matcher) of a server middleware applied by hand (WSGI or ASGI TraceMiddleware):
    `excluded`, a comma list, replaces the variables of `library` when given."""
    from opentelemetry import trace
    from trace_run.core.version import SCHEMA_URL, VERSION

    tracer = trace.get_tracer(module, VERSION, tracer_provider=tracer_provider, schema_url=SCHEMA_URL)
    if excluded is None:
        return tracer, excluded_urls(library)
    patterns = [p.strip() for p in excluded.split(",") if p.strip()]
    return tracer, compile_patterns("TraceMiddleware(excluded_urls=...)", patterns)


def excluded_urls(library: str):
    """A compiled regex searched in the full URL, or None. The per-library variable
    `OTEL_PYTHON_<LIB>_EXCLUDED_URLS`, when set, replaces `OTEL_PYTHON_EXCLUDED_URLS` (as upstream)."""
    key = "excluded:" + library
    try:
        return _settings[key]
    except KeyError:
        pass
    specific = "OTEL_PYTHON_%s_EXCLUDED_URLS" % library.upper()
    name = specific if config.is_set(specific) else "OTEL_PYTHON_EXCLUDED_URLS"
    value = compile_patterns(name, config.get(name))
    _settings[key] = value
    return value


class HeaderCapture:
    """Which headers to record for one direction, and which values to redact."""

    __slots__ = ("match", "sanitize", "prefix")

    def __init__(self, match, sanitize, prefix: str):
        self.match = match
        self.sanitize = sanitize
        self.prefix = prefix

    def attributes(self, items: Iterable) -> dict:
        """items: (name, value) pairs; several values for a name become a list."""
        out: dict = {}
        match = self.match.fullmatch
        bound = bounds.limit()
        for name, value in items:
            if isinstance(name, bytes):
                name = name.decode("latin-1")
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            low = name.lower()
            if not match(low):
                continue
            if low in ALWAYS_REDACTED or (self.sanitize is not None and self.sanitize.fullmatch(low)):
                value = "[REDACTED]"
            value, was_cut = bounds.cut(str(value), bound)
            out.setdefault(self.prefix + low, []).append(value)
            if was_cut and self.prefix + low not in out.get(bounds.TRUNCATED, ()):
                bounds.note(out, self.prefix + low)
        return out


def capture(direction: str) -> Optional[HeaderCapture]:
    """SERVER_REQUEST, SERVER_RESPONSE, CLIENT_REQUEST or CLIENT_RESPONSE; None if nothing is captured."""
    key = "capture:" + direction
    try:
        return _settings[key]
    except KeyError:
        pass
    name = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_" + direction
    match = compile_patterns(name, [p.lower() for p in config.get(name)], re.IGNORECASE, full=True)
    result = None
    if match is not None:
        if "sanitize" not in _settings:
            sname = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"
            _settings["sanitize"] = compile_patterns(sname, [p.lower() for p in config.get(sname)],
                                                  re.IGNORECASE, full=True)
        prefix = "http.request.header." if direction.endswith("REQUEST") else "http.response.header."
        result = HeaderCapture(match, _settings["sanitize"], prefix)
    _settings[key] = result
    return result


# -- URLs ---------------------------------------------------------------------------


def default_port(scheme: str) -> Optional[int]:
    return {"http": 80, "https": 443}.get(scheme)


# a client's `read` gives this as the host where server.address and server.port are to be read from the URL:
# parsed only for a span that records (an unsampled request makes none)
FROM_URL = object()


def _parse_address(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.hostname, parts.port or default_port(parts.scheme)


_ADDRESSES: dict = {}  # "scheme://authority" (no userinfo) -> (host, port): a client talks to a few servers
_ADDRESSES_MAX = 256
# the URL up to its first "://" and on to the end of the authority (the first "/", "?" or "#" after it)
_TO_AUTHORITY_END = re.compile(r"(?s).*?://[^/?#]*").match


def _address(url: str) -> tuple:
    """(server.address, server.port) of `url`: urlsplit's hostname and port, which depend only on the
    scheme and the authority, kept by those (reading them is ~80 bytecodes a span). An authority with
    userinfo is never kept (no credentials held here)."""
    found = _TO_AUTHORITY_END(url)
    if found is None:
        return _parse_address(url)
    key = found.group()
    hit = _ADDRESSES.get(key)
    if hit is None:
        hit = _parse_address(key)
        if "@" not in key:
            if len(_ADDRESSES) >= _ADDRESSES_MAX:
                _ADDRESSES.clear()
            _ADDRESSES[key] = hit
    return hit


def full_url(scheme: str, host: str, port: Optional[int], target: Any, userinfo: str = "") -> str:
    """The URL a client asks for, from its connection and request target (`target` may be absolute)."""
    if isinstance(target, bytes):
        target = target.decode("utf-8", "replace")
    target = str(target)
    if "://" in target:
        return target
    if host and ":" in host and not host.startswith("["):
        host = "[%s]" % host
    netloc = host if not port or port == default_port(scheme) else "%s:%s" % (host, port)
    return "%s://%s%s%s" % (scheme, userinfo, netloc, target)  # start_client redacts the userinfo


# -- status ---------------------------------------------------------------------------


_PROTOCOLS = {"HTTP/1.1": "1.1", "HTTP/1.0": "1.0", "HTTP/2": "2", "HTTP/2.0": "2.0"}
_INT_PROTOCOLS = {9: "0.9", 10: "1.0", 11: "1.1", 20: "2", 2: "2", 30: "3", 3: "3"}  # http.client's, httplib2's


def protocol_version(raw: Any) -> Optional[str]:
    """'1.1' from 11, 'HTTP/1.1', b'HTTP/2' ..."""
    if type(raw) is str:
        known = _PROTOCOLS.get(raw)
        if known is not None:
            return known
    if raw is None:
        return None
    if isinstance(raw, int):
        return _INT_PROTOCOLS.get(raw)
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    raw = str(raw)
    if raw.upper().startswith("HTTP/"):
        raw = raw[5:]
    return raw or None


# -- client spans ------------------------------------------------------------------


_CLIENT = SpanKind.CLIENT
_KEPT = "http_common.clients"  # config.derived's key: {(method, url, host, port): (span name, attributes)}
_KEPT_MAX = 256
_KEPT_URL_MAX = 2048


def client_attributes(method: Any, url: str, host: Optional[str], port: Optional[int]) -> tuple:
    """(span name, attributes) for a CLIENT span; `host` FROM_URL: address and port from `url`.

    Kept by the call's values for the value bound read now (config.reset() forgets them) where they depend on
    nothing else: a str URL with nothing redact_url would change (no userinfo, no query), not cut, so no
    credential is held here and no `trace_run.truncated` list is shared. The caller gets its own dict."""
    kept = config.derived(_KEPT, dict)
    try:
        name, attrs = kept[method, url, host, port]
        return name, dict(attrs)
    except (KeyError, TypeError):  # TypeError: a value that cannot be a key
        pass
    name, attrs = _client_attributes(method, url, host, port)
    if (type(method) is str and type(url) is str and "@" not in url and "?" not in url and len(url) <= _KEPT_URL_MAX
            and bounds.TRUNCATED not in attrs and (host is FROM_URL or host is None or type(host) is str)
            and (port is None or type(port) is int)):
        if len(kept) >= _KEPT_MAX:
            kept.clear()
        kept[method, url, host, port] = (name, dict(attrs))
    return name, attrs


def _client_attributes(method: Any, url: str, host: Optional[str], port: Optional[int]) -> tuple:
    if host is FROM_URL:
        host, port = _address(url)
    norm, original = normalize_method(method)
    full, was_cut = bounded_url(url)
    attrs = {HTTP_REQUEST_METHOD: norm, URL_FULL: full}
    if was_cut:
        bounds.note(attrs, URL_FULL)
    if original is not None:
        attrs[HTTP_REQUEST_METHOD_ORIGINAL] = original
    if host:
        attrs[SERVER_ADDRESS] = host
    if port:
        attrs[SERVER_PORT] = int(port)
    return span_name(norm), attrs


def start_client(tracer: trace.Tracer, method: Any, url: str, host: Optional[str], port: Optional[int],
                 headers: Any = None) -> trace.Span:
    """The CLIENT span; inside a trace that is not sampled, the current (non-recording) span itself:
    as for database clients, no span is made there, and its context is what gets propagated."""
    current = runtime_context.get_current()
    if runtime_context.unsampled_in(current):
        return runtime_context.span_in(current)
    name, attrs = client_attributes(method, url, host, port)
    cap = capture("CLIENT_REQUEST") if headers is not None else None
    if cap is not None:
        bounds.update(attrs, cap.attributes(_items(headers)))
    return tracer.start_span(name, kind=_CLIENT, attributes=attrs)


def _items(headers: Any) -> Iterable:
    if headers is None:
        return ()
    if hasattr(headers, "multi_items"):  # httpx.Headers
        return headers.multi_items()
    if hasattr(headers, "iteritems"):  # urllib3 HTTPHeaderDict
        return headers.iteritems()
    if hasattr(headers, "items"):
        return headers.items()
    return headers


def enter_client(span: trace.Span, mark: object = True) -> object:
    """Make `span` current and mark the context so inner HTTP layers make no span of their own (the mark
    a `propagation.WireLine` where http.client below is to send the span's `traceparent`)."""
    return runtime_context.attach(runtime_context.with_span(span, None, SUPPRESS_HTTP_INSTRUMENTATION_KEY, mark))


def suppress_below() -> object:
    """An excluded URL: no span here, and none from the HTTP layers below either (detach the token)."""
    return otel_context.attach(otel_context.set_value(SUPPRESS_HTTP_INSTRUMENTATION_KEY, True))


def inject(headers: Any, span: trace.Span) -> None:
    """Add the propagation headers of `span` to `headers` (a dict-like we own)."""
    propagation.inject(headers, span)


def inject_copy(headers: Any, span: trace.Span) -> Any:
    """A copy of `headers` (dict-like or None) with the propagation headers of `span` added."""
    if headers is None:
        new: Any = {}
    else:
        copy = getattr(headers, "copy", None)
        new = copy() if copy is not None else dict(headers)
    propagation.inject(new, span)
    if type(new) is dict and len(new) > 1:
        _replace_case_variants(new)
    return new


def _replace_case_variants(carrier: dict) -> None:
    """A plain dict's keys are case-sensitive: a caller's `TraceParent` would stay beside the `traceparent`
    just written, and both go out (two traceparents: the receiver may drop both). The one written
    replaces it, as it does in a case-insensitive carrier."""
    fields = None
    for key in [k for k in carrier if type(k) is str and not k.islower() and k.lower() in carrier]:
        if fields is None:
            from opentelemetry import propagate

            fields = {f.lower() for f in propagate.get_global_textmap().fields}
        if key.lower() in fields:
            del carrier[key]


def end_client(span: trace.Span, status_code: Optional[int] = None, exc: Optional[BaseException] = None,
               version: Any = None, response_headers: Any = None) -> None:
    """Status rules for clients: ERROR for a transport exception or status >= 400."""
    if span.is_recording():
        if status_code is not None:
            try:
                status_code = int(status_code)
            except (TypeError, ValueError):
                status_code = None
        if status_code is not None:
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status_code)
        v = _INT_PROTOCOLS.get(version) if type(version) is int else protocol_version(version)  # (11: a call less)
        if v:
            span.set_attribute(NETWORK_PROTOCOL_VERSION, v)
        if response_headers is not None:
            cap = capture("CLIENT_RESPONSE")
            if cap is not None:
                bounds.set_on_span(span, cap.attributes(_items(response_headers)))
        if exc is not None:
            errors.record(span, exc)
        elif status_code is not None and status_code >= 400:
            errors.record_status(span, status_code)
    span.end()


def server_error(status_code: int) -> bool:
    """Servers: only 5xx is an error (4xx is the client's fault)."""
    return status_code >= 500


def client_wrapper(instrumentor: Any, read: Callable, with_headers: Callable, end: Callable,
                   is_async: bool = False, wire: Optional[Callable] = None) -> Callable:
    """The wrapt wrapper of a client's send: one CLIENT span per request, made current, the inner HTTP
    layers told to make none, the propagation headers on a copy of the request (or, with `wire`, written
    by http.client below).

    read(instance, args, kwargs) -> (method, url, host, port, headers, request): what the library was asked
    (host FROM_URL, port None: read from the URL where a span records);
    with_headers(request, span, args, kwargs) -> (args, kwargs) to call with, carrying the span's headers;
    end(span, result) reads the response and ends the span with `end_client`;
    wire(instance, request, span) -> a `propagation.WireLine` where http.client, below for certain, is to
    add the span's `traceparent` to what it sends (then `with_headers` is not called), or None.
    """
    reset()  # a new instrument(): settings are read again
    excluded = excluded_urls(instrumentor.library)

    def start(instance: Any, args: tuple, kwargs: dict) -> tuple:
        method, url, host, port, headers, request = read(instance, args, kwargs)
        if excluded is not None and excluded.search(url):
            return None, suppress_below(), args, kwargs
        span = start_client(instrumentor.tracer, method, url, host, port, headers)
        line = None if wire is None else wire(instance, request, span)
        if line is None:
            args, kwargs = with_headers(request, span, args, kwargs)
            return span, enter_client(span), args, kwargs
        return span, enter_client(span, line), args, kwargs

    return spans.wrapper(instrumentor.guard, start, errors.end_failed, end, is_http_instrumentation_enabled,
                         is_async)


def replace_argument(args: tuple, kwargs: dict, index: int, name: str, value: Any) -> tuple:
    """(args, kwargs) with the argument at position `index` or keyword `name` set to `value`."""
    if index == 0 and type(args) is tuple and args:  # (the usual call: the request first, by position)
        return (value,) + args[1:], kwargs
    if len(args) > index:
        return tuple(args[:index]) + (value,) + tuple(args[index + 1:]), kwargs
    return args, dict(kwargs, **{name: value})
