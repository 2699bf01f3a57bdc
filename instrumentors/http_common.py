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
from typing import Any, Iterable, Optional

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import SpanKind, Status, StatusCode
from trace_run.agent import config

__all__ = [
    "KNOWN_METHODS", "normalize_method", "redact_url", "redact_query", "excluded_urls", "capture",
    "client_attributes", "start_client", "end_client", "end_with_error", "enter_client", "exit_client", "error_type",
    "inject", "inject_copy", "reset", "ALWAYS_REDACTED", "REDACTED",
]

KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
OTHER = "_OTHER"
REDACTED = "REDACTED"
ALWAYS_REDACTED = frozenset(("authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"))

# Query parameters whose values are credentials (semconv's list plus the AWS/GCS/Azure usual suspects).
_SECRET_PARAMS = (
    "awsaccesskeyid", "signature", "sig", "x-goog-signature", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "x-goog-credential",
)
_SECRET_QUERY_RE = re.compile(
    r"(?i)(^|[?&;])(%s)=([^&;#]*)" % "|".join(re.escape(p) for p in _SECRET_PARAMS)
)
_SECRET_HINT_RE = re.compile(r"(?i)sig|awsaccess|x-amz-|x-goog-")

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


# -- redaction ----------------------------------------------------------------------


def redact_query(query: str) -> str:
    """Signature-like query values become REDACTED; the rest is kept."""
    if not query or not _SECRET_HINT_RE.search(query):
        return query
    return _SECRET_QUERY_RE.sub(lambda m: "%s%s=%s" % (m.group(1), m.group(2), REDACTED), query)


def redact_url(url: Any) -> str:
    """`https://REDACTED:REDACTED@host/p?X-Amz-Signature=REDACTED`: no credentials in traces."""
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    url = str(url)
    scheme_end = url.find("://")
    if scheme_end >= 0:
        start = scheme_end + 3
        end = len(url)
        for sep in "/?#":
            i = url.find(sep, start)
            if 0 <= i < end:
                end = i
        at = url.rfind("@", start, end)
        if at >= 0:
            userinfo = url[start:at]
            masked = "REDACTED:REDACTED" if ":" in userinfo else REDACTED
            url = url[:start] + masked + url[at:]
    q = url.find("?")
    if q >= 0:
        frag = url.find("#", q)
        query = url[q + 1:frag] if frag >= 0 else url[q + 1:]
        red = redact_query(query)
        if red is not query:
            url = url[:q + 1] + red + (url[frag:] if frag >= 0 else "")
    return url


# -- settings (read once from the environment) -----------------------------------------

_settings: dict = {}


def reset() -> None:
    """Forget settings read from the environment (tests; a new instrument())."""
    _settings.clear()


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
            out.setdefault(self.prefix + low, []).append(str(value))
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


# -- status and errors ---------------------------------------------------------------


def error_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return "%s.%s" % (module, cls.__qualname__)


def protocol_version(raw: Any) -> Optional[str]:
    """'1.1' from 11, 'HTTP/1.1', b'HTTP/2' ..."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return {9: "0.9", 10: "1.0", 11: "1.1", 20: "2", 2: "2", 30: "3", 3: "3"}.get(raw)
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    raw = str(raw)
    if raw.upper().startswith("HTTP/"):
        raw = raw[5:]
    return raw or None


# -- client spans ------------------------------------------------------------------


def client_attributes(method: Any, url: str, host: Optional[str], port: Optional[int]) -> tuple:
    """(span name, attributes) for a CLIENT span."""
    norm, original = normalize_method(method)
    attrs = {HTTP_REQUEST_METHOD: norm, URL_FULL: redact_url(url)}
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
    parent = trace.get_current_span()
    ctx = parent.get_span_context()
    if ctx.is_valid and not ctx.trace_flags.sampled:
        return parent
    name, attrs = client_attributes(method, url, host, port)
    cap = capture("CLIENT_REQUEST") if headers is not None else None
    if cap is not None:
        attrs.update(cap.attributes(_items(headers)))
    return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)


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


def enter_client(span: trace.Span) -> object:
    """Make `span` current and mark the context so inner HTTP layers make no span of their own."""
    ctx = trace.set_span_in_context(span)
    return otel_context.attach(otel_context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY, True, ctx))


def call_excluded(wrapped, args, kwargs):
    """An excluded URL: no span here, and none from the HTTP layers below either."""
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY, True))
    try:
        return wrapped(*args, **kwargs)
    finally:
        otel_context.detach(token)


def exit_client(token: object) -> None:
    otel_context.detach(token)


def inject(headers: Any, span: trace.Span) -> None:
    """Add the propagation headers of `span` to `headers` (a dict-like we own)."""
    propagate.inject(headers, context=trace.set_span_in_context(span))


def inject_copy(headers: Any, span: trace.Span) -> Any:
    """A copy of `headers` (dict-like or None) with the propagation headers of `span` added."""
    if headers is None:
        new: Any = {}
    else:
        copy = getattr(headers, "copy", None)
        new = copy() if copy is not None else dict(headers)
    propagate.inject(new, context=trace.set_span_in_context(span))
    return new


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
        v = protocol_version(version)
        if v:
            span.set_attribute(NETWORK_PROTOCOL_VERSION, v)
        if response_headers is not None:
            cap = capture("CLIENT_RESPONSE")
            if cap is not None:
                span.set_attributes(cap.attributes(_items(response_headers)))
        if exc is not None:
            span.record_exception(exc)
            span.set_attribute(ERROR_TYPE, error_type(exc))
            span.set_status(Status(StatusCode.ERROR, "%s: %s" % (type(exc).__name__, exc)))
        elif status_code is not None and status_code >= 400:
            span.set_attribute(ERROR_TYPE, str(status_code))
            span.set_status(Status(StatusCode.ERROR))
    span.end()


def end_with_error(span: trace.Span, exc: BaseException) -> None:
    """`fail` for base.call_in_span: the request raised (refused, timed out, ...)."""
    end_client(span, exc=exc)


def server_error(status_code: int) -> bool:
    """Servers: only 5xx is an error (4xx is the client's fault)."""
    return status_code >= 500
