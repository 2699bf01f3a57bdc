"""The registry of every environment variable trace-run reads.

Declared once, as data: the README table is generated from (and tested
against) VARIABLES. This module is imported by sitecustomize on every process
start, so it imports nothing beyond `os` and `sys`.
"""

import os
import sys

TYPE_CHECKING = False  # (typing itself is not imported: see above)
if TYPE_CHECKING:
    from typing import Callable


class Var:
    """One variable: name, kind, default (as the user would write it), one-line doc."""

    __slots__ = ("name", "kind", "default", "doc", "choices", "minimum")

    def __init__(self, name, kind, default, doc, choices=None, minimum=None):
        self.name = name
        self.kind = kind
        self.default = default
        self.doc = doc
        self.choices = choices
        self.minimum = minimum


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_OTLP = "OTEL_EXPORTER_OTLP_"

VARIABLES: list[Var] = [
    # -- general -----------------------------------------------------------
    Var("OTEL_SDK_DISABLED", "bool", "false", "Disable the agent: nothing is patched, nothing exported."),
    Var("OTEL_SERVICE_NAME", "str", "", "`service.name` of the resource (default `unknown_service:<executable>`)."),
    Var("OTEL_RESOURCE_ATTRIBUTES", "kvlist", "", "Extra resource attributes, `key=value,key2=value2`."),
    Var("OTEL_LOG_LEVEL", "enum", "info", "Level of trace-run's own messages on stderr.", choices=_LOG_LEVELS),
    Var(
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        "list",
        "",
        "Libraries not to instrument (e.g. `redis,sqlite3`), `*` for all.",
    ),
    # -- exporters -----------------------------------------------------------
    Var(
        "OTEL_TRACES_EXPORTER",
        "list",
        "otlp",
        "Comma list of `otlp`, `console` (tree), `console_json`, `none`, or an installed exporter.",
    ),
    Var(_OTLP + "ENDPOINT", "url", "", "Base OTLP endpoint (`http://localhost:4318`, gRPC `:4317`); "
        "`/v1/traces` is added to its path (before a `?query`). Its password and query values are never printed."),
    Var(_OTLP + "TRACES_ENDPOINT", "url", "", "Full traces endpoint; overrides the base endpoint. Printed masked too."),
    Var(
        _OTLP + "PROTOCOL",
        "enum",
        "http/protobuf",
        "`http/protobuf` or `grpc`.",
        choices=("http/protobuf", "grpc", "http/json"),
    ),
    Var(_OTLP + "TRACES_PROTOCOL", "enum", "", "Protocol for traces; overrides the above.",
        choices=("http/protobuf", "grpc", "http/json")),
    Var(_OTLP + "HEADERS", "kvlist", "", "Export headers `key=value,...` (values are never printed)."),
    Var(_OTLP + "TRACES_HEADERS", "kvlist", "", "Headers for traces; overrides the above."),
    Var(_OTLP + "TIMEOUT", "int", "10000", "Export timeout in milliseconds.", minimum=1),
    Var(_OTLP + "TRACES_TIMEOUT", "int", "", "Traces export timeout (ms); overrides the above.", minimum=1),
    Var(_OTLP + "COMPRESSION", "enum", "none", "`none` or `gzip`.", choices=("none", "gzip")),
    Var(_OTLP + "TRACES_COMPRESSION", "enum", "", "Compression for traces.", choices=("none", "gzip")),
    Var(_OTLP + "INSECURE", "bool", "false", "gRPC without TLS for `https`-less endpoints."),
    Var(_OTLP + "TRACES_INSECURE", "bool", "", "gRPC insecure flag for traces."),
    Var(_OTLP + "CERTIFICATE", "path", "", "CA certificate file to verify the collector."),
    Var(_OTLP + "TRACES_CERTIFICATE", "path", "", "CA certificate for traces."),
    Var(_OTLP + "CLIENT_KEY", "path", "", "Client private key for mTLS."),
    Var(_OTLP + "TRACES_CLIENT_KEY", "path", "", "Client key for traces."),
    Var(_OTLP + "CLIENT_CERTIFICATE", "path", "", "Client certificate for mTLS."),
    Var(_OTLP + "TRACES_CLIENT_CERTIFICATE", "path", "", "Client certificate for traces."),
    Var("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "str", "",
        "Entry point (`opentelemetry_otlp_credential_provider`) of a requests Session for OTLP/HTTP: "
        "the SDK's own exporter is then used, which loads it."),
    Var("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "str", "", "The same, for traces."),
    # -- sampling and propagation ------------------------------------------
    Var(
        "OTEL_TRACES_SAMPLER",
        "str",
        "parentbased_always_on",
        "Sampler: the spec's six, `ratelimiting`, `parentbased_ratelimiting`, or an installed one.",
    ),
    Var("OTEL_TRACES_SAMPLER_ARG", "str", "", "Ratio in [0,1] for ratio samplers; traces/second for rate limiting."),
    Var(
        "OTEL_PROPAGATORS",
        "list",
        "tracecontext,baggage",
        "`tracecontext`, `baggage`, `b3`, `b3multi`, `none`, or an installed propagator.",
    ),
    # -- batching and limits -------------------------------------------------
    Var("OTEL_BSP_SCHEDULE_DELAY", "int", "5000", "Delay between exports (ms).", minimum=0),
    Var("OTEL_BSP_EXPORT_TIMEOUT", "int", "30000", "Longest an export may take (ms).", minimum=0),
    Var("OTEL_BSP_MAX_QUEUE_SIZE", "int", "2048", "Spans held in memory; more are dropped and counted.", minimum=1),
    Var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "int", "512", "Spans per export request.", minimum=1),
    Var("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "int", "", "Longest attribute value (no limit by default).", minimum=0),
    Var("OTEL_ATTRIBUTE_COUNT_LIMIT", "int", "128", "Most attributes per span, event or link.", minimum=0),
    Var("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "int", "", "Longest span attribute value.", minimum=0),
    Var("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "int", "128", "Most attributes per span.", minimum=0),
    Var("OTEL_SPAN_EVENT_COUNT_LIMIT", "int", "128", "Most events per span.", minimum=0),
    Var("OTEL_SPAN_LINK_COUNT_LIMIT", "int", "128", "Most links per span.", minimum=0),
    Var("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "int", "128", "Most attributes per event.", minimum=0),
    Var("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "int", "128", "Most attributes per link.", minimum=0),
    # -- log correlation -------------------------------------------------------
    Var("OTEL_PYTHON_LOG_CORRELATION", "bool", "false", "Put trace ids on every `logging` record and format."),
    Var(
        "OTEL_PYTHON_LOG_FORMAT",
        "str",
        "%(asctime)s %(levelname)s [%(name)s] [trace_id=%(otelTraceID)s span_id=%(otelSpanID)s "
        "resource.service.name=%(otelServiceName)s trace_sampled=%(otelTraceSampled)s] - %(message)s",
        "Root handler format when log correlation is on.",
    ),
    Var("OTEL_PYTHON_LOG_LEVEL", "enum", "info", "Root logger level when log correlation is on.",
        choices=_LOG_LEVELS),
    # -- HTTP instrumentors ------------------------------------------------------
    Var("OTEL_PYTHON_EXCLUDED_URLS", "list", "",
        "Regexes (comma list) searched in the full URL: matches are not traced."),
    Var("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "list", "", "Like the above, for Flask/WSGI servers only."),
    Var("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "list", "", "Like the above, for Django only (WSGI and ASGI)."),
    Var("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "list", "", "Like the above, for ASGI servers (TraceMiddleware) only."),
    Var("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "list", "",
        "Like the above, for FastAPI apps only (its own spans or trace-run's); unset: the ASGI list."),
    Var("OTEL_PYTHON_REQUESTS_EXCLUDED_URLS", "list", "", "Like the above, for requests only."),
    Var("OTEL_PYTHON_URLLIB3_EXCLUDED_URLS", "list", "", "Like the above, for urllib3 only."),
    Var("OTEL_PYTHON_URLLIB_EXCLUDED_URLS", "list", "", "Like the above, for http.client/urllib only."),
    Var("OTEL_PYTHON_HTTPX_EXCLUDED_URLS", "list", "", "Like the above, for httpx only."),
    Var("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "list", "",
        "Request headers servers record as `http.request.header.<name>`."),
    Var("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "list", "",
        "Response headers servers record as `http.response.header.<name>`."),
    Var("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "list", "", "Request headers clients record."),
    Var("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "list", "", "Response headers clients record."),
    Var("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "list", "",
        "Captured headers whose values become `[REDACTED]` (Authorization, Cookie, ... always are)."),
    Var("OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS", "list",
        "token,access_token,refresh_token,id_token,api_key,apikey,key,password,passwd,pwd,secret,client_secret,"
        "auth,session,signature,sig,awsaccesskeyid,x-amz-signature,x-amz-credential,x-amz-security-token,"
        "x-goog-signature,x-goog-credential",
        "Query parameters (names, any case) whose values become `REDACTED` in URLs and exception texts; "
        "a list replaces the default, `none` turns it off."),
    # -- database instrumentors ----------------------------------------------------
    Var("OTEL_TRACE_RUN_DB_SANITIZE", "bool", "true", "Replace SQL literals and Redis arguments by `?`."),
    Var("OTEL_TRACE_RUN_SQLCOMMENTER", "bool", "false", "Append a `traceparent` comment to each SQL statement."),
    # -- redaction ---------------------------------------------------------------
    Var("OTEL_TRACE_RUN_REDACT_ATTRIBUTES", "list", "",
        "Attributes deleted before export: comma list of case-insensitive globs (`user.email,enduser.*`)."),
    Var("OTEL_TRACE_RUN_HASH_ATTRIBUTES", "list", "",
        "Attributes whose values become `sha256:<16 hex>` before export (same globs; deleting wins)."),
    # -- trace-run's own -------------------------------------------------------
    Var("OTEL_TRACE_RUN_INHERIT", "bool", "true", "Child Python processes run with the agent too."),
    Var("OTEL_TRACE_RUN_CHATTER", "bool", "false",
        "Trace libraries' internal chatter (broker polling, heartbeats, health checks)."),
    Var("OTEL_TRACE_RUN_OTLP_ENCODER", "enum", "fast",
        "OTLP span encoding: `fast` (trace-run's: the same bytes, ~5x faster) or `sdk` (the official encoder).",
        choices=("fast", "sdk")),
    Var("OTEL_TRACE_RUN_NATIVE_ENCODER", "bool", "true",
        "With the `fast` encoder: trace-run's spans encoded, and the export thread's batches framed, in C where "
        "its optional extension was built (the same bytes, ~1.5-2 us less per span); `false`: in Python."),
    Var("OTEL_TRACE_RUN_NATIVE_SPAN", "bool", "true",
        "With trace-run's span class: its common `start_span`, `set_attribute`, `end`, `is_recording` and "
        "`update_name`, and an ended span's way to the export queue, in C where its optional extension was built "
        "(the same spans and bytes); `false`: in Python."),
    Var("OTEL_TRACE_RUN_NATIVE_CALLS", "bool", "true",
        "The instrumentors' common call path (the suppression and sampled checks, the span made current, the "
        "wrapped call run and its span ended) and a WSGI request (the middleware, its SERVER span's attributes, "
        "status, route and end, the body handed back; Flask's hooks) in C where trace-run's optional extensions "
        "were built (the same calls in the same order, the same spans); `false`: in Python."),
    Var("OTEL_TRACE_RUN_GRPC_CLIENT", "enum", "trace-run",
        "OTLP/gRPC client (with the `fast` encoder): `trace-run` (its own, on the standard library; grpc is never "
        "imported) or `grpcio` (the SDK's exporter on grpcio).", choices=("trace-run", "grpcio")),
    Var("OTEL_TRACE_RUN_SPAN_CLASS", "enum", "trace-run",
        "Span class of trace-run's tracers: `trace-run` (the SDK's span with a shorter path, the same behaviour) "
        "or `sdk` (the SDK's own).", choices=("trace-run", "sdk")),
    Var("OTEL_TRACE_RUN_MAX_VALUE_LENGTH", "int", "4096",
        "Longest URL, SQL, command or header value trace-run records from traffic; longer ends in `...` and is "
        "named in `trace_run.truncated` (`OTEL_[SPAN_]ATTRIBUTE_VALUE_LENGTH_LIMIT` wins when set).", minimum=16),
    Var("OTEL_TRACE_RUN_MAX_QUEUE_BYTES", "int", "8388608",
        "Encoded bytes of spans held for export, beside `OTEL_BSP_MAX_QUEUE_SIZE`; more are dropped and counted.",
        minimum=1),
    Var("OTEL_TRACE_RUN_MAX_REQUEST_BYTES", "int", "4194304",
        "Largest OTLP request (uncompressed); a bigger batch goes out as several requests.", minimum=1024),
    Var("OTEL_TRACE_RUN_EXIT_TIMEOUT", "int", "5000", "Longest the exit flush may take (ms).", minimum=0),
    Var("OTEL_TRACE_RUN_THIRD_PARTY", "bool", "true", "Apply installed third-party instrumentors."),
    Var("OTEL_TRACE_RUN_RAISE_ERRORS", "bool", "false", "Test only: instrumentation errors raise."),
    Var("OTEL_TRACE_RUN_TEST_FAULT", "list", "",
        "Test only: the guarded code of these instrumentors (e.g. `requests`) raises, to prove isolation."),
    Var("OTEL_TRACE_RUN_INFO", "bool", "false", "Print the resolved configuration on stderr at start (`--info CMD`)."),
    # set by agent/cli.py, read by agent/inject/sitecustomize.py (neither imports this module: it costs ~2 ms)
    Var("OTEL_TRACE_RUN_LAUNCHED", "str", "",
        "Set by `trace-run` for the command it runs, which alone says so if the agent cannot start in it "
        "(descendants: at `OTEL_LOG_LEVEL=debug`); any value marks it; read once, then removed."),
]

BY_NAME: dict[str, Var] = {v.name: v for v in VARIABLES}

# Parsed values, and the warnings already given, per process.
_cache: dict[str, object] = {}
WARNINGS: list[str] = []
# `_cache.get`: on a per-span path, `kept(key) or derived(key, compute)` reads a derived value with no Python frame
# (reset() clears the dict in place: this stays its method). Only for values that are never falsy once computed.
kept = _cache.get

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def warn(name: str, raw: str, instead: str, why: str = "") -> None:
    """One line naming the variable, the value and the fallback; once per variable and value."""
    msg = "%s=%r is invalid%s; using %s" % (name, mask(name, raw), (" (" + why + ")") if why else "", instead)
    notice(msg)


def notice(msg: str) -> None:
    """A configuration warning that is not about one bad value (shown by --info too)."""
    if msg not in WARNINGS:
        WARNINGS.append(msg)
        from . import log  # imported once there is something to say (one module less at every start)

        log.warning(msg)


def validate_all() -> None:
    """Parse every variable that is set, so each bad value is reported once (in the registry's order).

    The environment's OTEL_ names are listed once: an os.environ.get per registered variable (most
    unset, each a KeyError inside) costs ~0.1 ms of every process start."""
    environ = os.environ
    named = {name for name in environ if name.startswith("OTEL_")}
    for var in VARIABLES:
        if var.name in named and environ[var.name].strip():
            get(var.name)


def mask(name: str, raw: str) -> str:
    """Header variables hold API keys: show keys, never values; endpoints: no credentials (urlmask)."""
    if name.endswith("_HEADERS"):
        return ",".join(part.split("=", 1)[0].strip() + "=***" for part in raw.split(",") if part.strip())
    if name.endswith("_ENDPOINT"):
        from .urlmask import masked

        return masked(raw)
    return raw


def raw(name: str) -> str:
    return os.environ.get(name, "")


def get(name: str):
    """The parsed value of a registered variable (the default on bad input, with a warning)."""
    try:
        return _cache[name]
    except KeyError:
        pass
    var = BY_NAME[name]
    value = _parse(var, os.environ.get(name))
    _cache[name] = value
    return value


def derived(key: str, compute: "Callable[[], object]") -> object:
    """compute(), kept with the parsed values under `key` (not a variable's name): a value worked out from
    several variables, read on a hot path, forgotten with them by reset()."""
    try:
        return _cache[key]
    except KeyError:
        pass
    value = _cache[key] = compute()
    return value


def is_set(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def reset() -> None:
    """Forget parsed values (tests, and after the environment changes)."""
    _cache.clear()
    del WARNINGS[:]


def _parse(var: Var, text):
    default = var.default
    if text is None or text.strip() == "":
        return _convert(var, default)
    text = text.strip()
    kind = var.kind
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        fallback = _convert(var, default)
        warn(var.name, text, str(fallback).lower(), "expected true or false")
        return fallback
    if kind == "int":
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
                if value != int(value):
                    raise ValueError
                value = int(value)
            except (ValueError, OverflowError):
                fallback = _convert(var, default)
                warn(var.name, text, _describe(fallback), "not a whole number")
                return fallback
        if var.minimum is not None and value < var.minimum:
            fallback = _convert(var, default)
            warn(var.name, text, _describe(fallback), "must be at least %d" % var.minimum)
            return fallback
        return value
    if kind == "enum":
        low = text.lower()
        if low in var.choices:
            return low
        fallback = _convert(var, default)
        warn(var.name, text, _describe(fallback), "expected one of " + ", ".join(var.choices))
        return fallback
    if kind == "list":
        return [p.strip() for p in text.split(",") if p.strip()]
    if kind == "kvlist":
        return parse_kvlist(var.name, text)
    if kind == "url":
        if "://" not in text or text.split("://", 1)[0].lower() not in ("http", "https", "grpc", "grpcs"):
            warn(var.name, text, _describe(_convert(var, default)), "not an http(s) URL")
            return _convert(var, default)
        return text
    return text


def _describe(value) -> str:
    if value is None or value == "":
        return "the default"
    return str(value)


def _convert(var: Var, text):
    if text is None or text == "":
        return {"list": [], "kvlist": {}, "int": None, "bool": None}.get(var.kind, "")
    if var.kind == "bool":
        return text in _TRUE
    if var.kind == "int":
        return int(text)
    if var.kind == "list":
        return [p.strip() for p in text.split(",") if p.strip()]
    return text


def parse_kvlist(name: str, text: str) -> dict:
    """W3C-Baggage-like `k=v,k2=v2` with percent-decoding; bad members are skipped with a warning."""
    if "%" in text:  # urllib.parse (and re) cost ~2-4 ms of start-up: only when something is escaped
        from urllib.parse import unquote
    else:
        def unquote(part: str) -> str:
            return part

    out = {}
    bad = []
    for member in text.split(","):
        if not member.strip():
            continue
        key, sep, value = member.partition("=")
        key = key.strip()
        if not sep or not key:
            bad.append(member.strip())
            continue
        out[unquote(key)] = unquote(value.strip())
    if bad:
        shown = ", ".join(("%r" % b.split("=", 1)[0]) for b in bad)
        if name.endswith("_HEADERS"):  # a malformed entry may be all key: show where, not what
            shown = "entry " + ", ".join(str(i + 1) for i, m in enumerate(text.split(",")) if m.strip() in bad)
        notice("%s has entries that are not key=value (%s); they are ignored" % (name, shown))
    return out


def markdown_table() -> str:
    """The README table of variables, generated from the registry."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for v in VARIABLES:
        default = ("`%s`" % v.default.replace("|", "\\|")) if v.default else ""
        lines.append("| `%s` | %s | %s |" % (v.name, default, v.doc.replace("|", "\\|")))
    return "\n".join(lines)


def write_table(path: str) -> bool:
    """Put markdown_table() between the `<!-- variables:start/end -->` markers of `path`; True if it changed."""
    start, end = "<!-- variables:start -->", "<!-- variables:end -->"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if start not in text or end not in text:
        raise ValueError("%s has no %s ... %s markers" % (path, start, end))
    head, rest = text.split(start, 1)
    new = head + start + "\n" + markdown_table() + "\n" + end + rest.split(end, 1)[1]
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


def rewrite(path: str, write, what: str) -> int:
    """A `--write FILE` command: write(path) -> whether it changed; one line saying which (1 on a failure)."""
    try:
        changed = write(path)
    except (OSError, ValueError) as exc:
        sys.stderr.write("trace-run: %s\n" % exc)
        return 1
    sys.stderr.write("%s: %s %s\n" % (path, what, "rewritten" if changed else "already up to date"))
    return 0


def main(argv: list) -> int:
    """`python -m trace_run.core.config` prints the table; `--write README.md` puts it in place."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        return rewrite(argv[1], write_table, "variables table")
    if argv:
        sys.stderr.write("usage: python -m trace_run.core.config [--write README.md]\n")
        return 2
    sys.stdout.write(markdown_table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
