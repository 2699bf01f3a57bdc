"""Turn the OTEL_* configuration into SDK objects.

`resolve()` reads the registry into a plain description (what `--info`
prints, no sockets opened); `build()` makes the TracerProvider from it using
the SDK's public pieces. Bad values fall back with one warning each.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

from trace_run.core import config, log
from trace_run.core.urlmask import masked, scrubber, without_userinfo
from trace_run.core.version import VERSION

DEFAULT_HTTP = "http://localhost:4318"
DEFAULT_GRPC = "http://localhost:4317"
_BUILTIN_EXPORTERS = ("otlp", "console", "console_json", "none")
_BUILTIN_PROPAGATORS = ("tracecontext", "baggage", "b3", "b3multi", "none")
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
_RATE_SAMPLERS = ("ratelimiting", "parentbased_ratelimiting")
_SPEC_SAMPLERS = ("always_on", "always_off", "parentbased_always_on", "parentbased_always_off") + _RATIO_SAMPLERS


def _entry_points(group: str) -> dict:
    try:
        from importlib.metadata import entry_points
    except ImportError:  # pragma: no cover - Python < 3.8
        from importlib_metadata import entry_points
    try:
        eps = entry_points(group=group)
    except TypeError:  # Python 3.9
        eps = entry_points().get(group, [])
    return {ep.name: ep for ep in eps}


def _signal(name: str):
    """Traces-specific variable if set, else the generic one."""
    specific = "OTEL_EXPORTER_OTLP_TRACES_" + name
    if config.is_set(specific):
        value = config.get(specific)
        if value not in (None, "", [], {}):
            return value
    return config.get("OTEL_EXPORTER_OTLP_" + name)


def service_name() -> str:
    name = config.get("OTEL_SERVICE_NAME").strip()
    if name:
        return name
    attrs = config.get("OTEL_RESOURCE_ATTRIBUTES")
    if attrs.get("service.name"):
        return attrs["service.name"]
    exe = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else os.path.basename(sys.executable)
    return "unknown_service:" + (exe or "python")


def resource_attributes() -> dict:
    """Process, host and SDK attributes. Not process.command_args: command lines
    carry passwords and tokens often enough that they stay in the process."""
    import platform

    attrs = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _sdk_version(),
        "telemetry.distro.name": "trace-run",
        "telemetry.distro.version": VERSION,
        "process.pid": os.getpid(),
        "process.executable.path": sys.executable,
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "host.name": platform.node(),
    }
    attrs.update(config.get("OTEL_RESOURCE_ATTRIBUTES"))
    attrs["service.name"] = service_name()
    return attrs


def _sdk_version() -> str:
    try:
        from opentelemetry.sdk.version import __version__

        return __version__
    except Exception:
        return "unknown"


def resolve() -> dict:
    """The whole configuration, resolved, as plain data."""
    config.validate_all()
    plan = {
        "service_name": service_name(),
        "resource": resource_attributes(),
        "exporters": _resolve_exporters(),
        "sampler": _resolve_sampler(),
        "propagators": _resolve_propagators(),
        "batch": _resolve_batch(),
        "span_class": config.get("OTEL_TRACE_RUN_SPAN_CLASS"),
        "limits": {
            v: config.get(v)
            for v in (
                "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
                "OTEL_ATTRIBUTE_COUNT_LIMIT",
                "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
                "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
                "OTEL_SPAN_EVENT_COUNT_LIMIT",
                "OTEL_SPAN_LINK_COUNT_LIMIT",
                "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
                "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
            )
        },
    }
    return plan


def _resolve_exporters() -> list:
    names = [n.lower() for n in config.get("OTEL_TRACES_EXPORTER")] or ["otlp"]
    out = []
    unknown = []
    installed = None
    for name in names:
        if name == "none":
            continue
        if name in _BUILTIN_EXPORTERS:
            out.append(_resolve_otlp() if name == "otlp" else {"name": name})
            continue
        if installed is None:
            installed = _entry_points("opentelemetry_traces_exporter")
        if name in installed:
            out.append({"name": name, "entry_point": installed[name].value})
        else:
            unknown.append(name)
    if not out and "none" not in names:  # one warning, not one per name plus this one
        config.warn("OTEL_TRACES_EXPORTER", ",".join(names), "otlp", "no usable exporter")
        out.append(_resolve_otlp())
    else:
        for name in unknown:
            config.warn("OTEL_TRACES_EXPORTER", name, "no exporter for it", "no such exporter installed")
    return out


def _resolve_otlp() -> dict:
    protocol = _signal("PROTOCOL") or "http/protobuf"
    if protocol == "http/json":
        config.warn("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf",
                    "the Python OTLP exporter has no JSON encoding")
        protocol = "http/protobuf"
    variable = "OTEL_EXPORTER_OTLP_ENDPOINT"
    if config.is_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") and config.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        variable = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        endpoint = config.get(variable)
    else:
        base = config.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if protocol == "grpc":
            endpoint = base or DEFAULT_GRPC
        else:
            endpoint = _with_traces_path(base or DEFAULT_HTTP)
    if protocol == "grpc" and without_userinfo(endpoint) != endpoint:
        config.warn(variable, endpoint, masked(without_userinfo(endpoint)), "gRPC sends no user:password from "
                    "the address; put credentials in OTEL_EXPORTER_OTLP_HEADERS, e.g. authorization=Basic ...")
        endpoint = without_userinfo(endpoint)
    port = None
    try:
        port = urlsplit(endpoint).port
    except ValueError:
        config.warn("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint, "the default endpoint", "bad port")
        endpoint = DEFAULT_GRPC if protocol == "grpc" else DEFAULT_HTTP + "/v1/traces"
    if protocol != "grpc" and port == 4317:
        config.notice("OTLP endpoint %s looks like a gRPC port (4317) but the protocol is http/protobuf; "
                    "set OTEL_EXPORTER_OTLP_PROTOCOL=grpc or use port 4318" % masked(endpoint))
    elif protocol == "grpc" and port == 4318:
        config.notice("OTLP endpoint %s looks like an OTLP/HTTP port (4318) but the protocol is grpc; "
                    "set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf or use port 4317" % masked(endpoint))
    timeout = _signal("TIMEOUT") or 10000
    insecure = _signal("INSECURE")
    return {
        "name": "otlp",
        "protocol": protocol,
        "endpoint": endpoint,
        "headers": dict(_signal("HEADERS") or {}),
        "timeout_s": timeout / 1000.0,
        "compression": _signal("COMPRESSION") or "none",
        "insecure": bool(insecure),
        "certificate": _signal("CERTIFICATE") or None,
        "client_key": _signal("CLIENT_KEY") or None,
        "client_certificate": _signal("CLIENT_CERTIFICATE") or None,
        "encoder": config.get("OTEL_TRACE_RUN_OTLP_ENCODER"),
        "grpc_client": config.get("OTEL_TRACE_RUN_GRPC_CLIENT"),
    }


def _with_traces_path(base: str) -> str:
    """The base endpoint with `/v1/traces` appended to its path (before any `?query`)."""
    q = base.find("?")
    path, query = (base, "") if q < 0 else (base[:q], base[q:])
    return path.rstrip("/") + "/v1/traces" + query


def _resolve_sampler() -> dict:
    name = config.get("OTEL_TRACES_SAMPLER").strip().lower() or "parentbased_always_on"
    arg_text = config.raw("OTEL_TRACES_SAMPLER_ARG").strip()
    if name in _SPEC_SAMPLERS or name in _RATE_SAMPLERS:
        sampler = {"name": name}
    else:
        installed = _entry_points("opentelemetry_traces_sampler")
        if name in installed:
            return {"name": name, "entry_point": installed[name].value, "arg": arg_text}
        config.warn("OTEL_TRACES_SAMPLER", name, "parentbased_always_on", "unknown sampler")
        if arg_text and not _is_number(arg_text):  # every bad variable is named, not only the first
            config.warn("OTEL_TRACES_SAMPLER_ARG", arg_text, "no argument", "not a number")
        return {"name": "parentbased_always_on"}
    if name in _RATIO_SAMPLERS:
        ratio = 1.0
        if arg_text:
            try:
                ratio = float(arg_text)
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError
            except ValueError:
                config.warn("OTEL_TRACES_SAMPLER_ARG", arg_text, "1.0", "expected a ratio between 0 and 1")
                ratio = 1.0
        sampler["ratio"] = ratio
    elif name in _RATE_SAMPLERS:
        rate = 100.0
        if arg_text:
            try:
                rate = float(arg_text)
                if not rate > 0 or rate != rate or rate == float("inf"):
                    raise ValueError
            except ValueError:
                config.warn("OTEL_TRACES_SAMPLER_ARG", arg_text, "100", "expected traces per second > 0")
                rate = 100.0
        sampler["per_second"] = rate
    return sampler


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _resolve_propagators() -> list:
    names = [n.lower() for n in config.get("OTEL_PROPAGATORS")] or ["tracecontext", "baggage"]
    out = []
    installed = None
    for name in names:
        if name == "none":
            continue
        if name in _BUILTIN_PROPAGATORS:
            if name.startswith("b3") and not _has_b3():
                config.warn("OTEL_PROPAGATORS", name, "no propagator for it",
                            "install opentelemetry-propagator-b3 (pip install trace-run[b3])")
                continue
            out.append(name)
            continue
        if installed is None:
            installed = _entry_points("opentelemetry_propagator")
        if name in installed:
            out.append(name)
        else:
            config.warn("OTEL_PROPAGATORS", name, "the others", "no such propagator installed")
    return out


def _has_b3() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.propagators.b3") is not None
    except (ImportError, ValueError):
        return False


def _resolve_batch() -> dict:
    queue = config.get("OTEL_BSP_MAX_QUEUE_SIZE")
    batch = config.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
    if batch > queue:
        config.warn("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(batch), str(queue),
                    "larger than OTEL_BSP_MAX_QUEUE_SIZE")
        batch = queue
    return {
        "max_queue_size": queue,
        "max_export_batch_size": batch,
        "schedule_delay_millis": config.get("OTEL_BSP_SCHEDULE_DELAY"),
        "export_timeout_millis": config.get("OTEL_BSP_EXPORT_TIMEOUT"),
    }


# -- building -----------------------------------------------------------------------


def build(plan: dict):
    """TracerProvider, propagator and the list of (processor, health) pairs."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits

    from . import exporthealth
    from .program_provider import AgentTracerProvider

    limits = plan["limits"]
    span_limits = SpanLimits(
        max_attributes=limits["OTEL_ATTRIBUTE_COUNT_LIMIT"],
        max_span_attributes=limits["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"],
        max_events=limits["OTEL_SPAN_EVENT_COUNT_LIMIT"],
        max_links=limits["OTEL_SPAN_LINK_COUNT_LIMIT"],
        max_event_attributes=limits["OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT"],
        max_link_attributes=limits["OTEL_LINK_ATTRIBUTE_COUNT_LIMIT"],
        max_attribute_length=limits["OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"],
        max_span_attribute_length=limits["OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"],
    )
    # Before the provider: in a forked child its at-fork hook submits to a thread pool, which
    # deadlocks unless concurrent.futures' own at-fork hook (registered first) has run.
    import concurrent.futures.thread  # noqa: F401

    provider = AgentTracerProvider(
        resource=Resource(plan["resource"]),
        sampler=build_sampler(plan["sampler"]),
        span_limits=span_limits,
        shutdown_on_exit=False,  # we flush at exit ourselves, with a bounded timeout
    )
    provider.fast_spans = plan.get("span_class", "trace-run") == "trace-run"
    if provider.fast_spans:  # now, not at the first get_tracer: that may be an event loop's first request
        from . import fastspan  # noqa: F401
    if config.get("OTEL_TRACE_RUN_TEST_FAULT"):
        from trace_run.core.guard import inject_faults

        inject_faults(provider, config.get("OTEL_TRACE_RUN_TEST_FAULT"))
    processors = []
    for spec in plan["exporters"]:
        try:
            processor, health = _build_pipeline(spec, plan["batch"], exporthealth)
        except Exception as exc:
            log.warning("exporter %s not set up (%s: %s); its spans are not exported"
                        % (spec["name"], type(exc).__name__, scrubber(spec.get("endpoint", ""))(str(exc))))
            continue
        provider.add_span_processor(processor)
        processors.append((processor, health))
    return provider, build_propagator(plan["propagators"]), processors


def _build_pipeline(spec: dict, batch: dict, exporthealth):
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    from .fastspan import does_nothing
    from .green import StartsOnFirstSpan  # its export thread starts after gevent/eventlet patched threading
    from .lazy_exporter import LazyExporter
    from .redact import wrap as redacted  # attribute redaction in front of an exporter (not the fast OTLP one)

    name = spec["name"]
    if name == "console":
        from .console import TreeConsoleExporter

        exporter = TreeConsoleExporter()
        health = exporthealth.CountingExporter(exporter, "console")
        return exporthealth.CountingProcessor(SimpleSpanProcessor(redacted(health)), health), health
    if name == "console_json":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        health = exporthealth.CountingExporter(ConsoleSpanExporter(), "console_json")
        return exporthealth.CountingProcessor(SimpleSpanProcessor(redacted(health)), health), health
    warm = None
    if name == "otlp":
        def exporter():
            return build_otlp_exporter(spec)

        def warm():
            import importlib

            if _grpc_h2(spec):
                importlib.import_module("trace_run.agent.otlp_grpc_h2").warm()
            elif spec.get("encoder") == "fast" and spec["protocol"] == "grpc":
                importlib.import_module("trace_run.agent.otlp_grpc")
            elif spec.get("encoder") == "fast":
                importlib.import_module("trace_run.agent.otlp_http").warm(spec["endpoint"])
            else:
                kind = "grpc" if spec["protocol"] == "grpc" else "http"
                importlib.import_module("opentelemetry.exporter.otlp.proto.%s.trace_exporter" % kind)

        target = "%s (%s)" % (masked(spec["endpoint"]), spec["protocol"])
    else:
        def exporter():
            return _entry_points("opentelemetry_traces_exporter")[name].load()()

        target = name
    # the queue is bounded in bytes too (of encoded spans), and batches are split to fit a request
    budget = exporthealth.QueueBudget(batch["max_queue_size"], config.get("OTEL_TRACE_RUN_MAX_QUEUE_BYTES"))
    lazy = LazyExporter(exporter, target, warm=warm, scrub=scrubber(spec.get("endpoint", "")))
    health = exporthealth.CountingExporter(lazy, target, budget=budget,
                                           max_request_bytes=config.get("OTEL_TRACE_RUN_MAX_REQUEST_BYTES"),
                                           scrub=scrubber(spec.get("endpoint", "")), hands_over=True)
    inert = does_nothing(BatchSpanProcessor.on_start)
    if name == "otlp" and spec.get("encoder") == "fast":
        # spans are redacted and encoded as they end; the queue holds bytes (see otlp_encoder.Encoded)
        from . import quiet_wait  # here: the processor is made at the first span's end, maybe on an event loop

        processor = StartsOnFirstSpan(lambda: _quiet(BatchSpanProcessor(health, **batch), quiet_wait),
                                      inert_on_start=inert)
        return exporthealth.CountingProcessor(processor, health, prepare=_preencoder(health), budget=budget), health
    processor = StartsOnFirstSpan(lambda: BatchSpanProcessor(redacted(health), **batch), inert_on_start=inert)
    return exporthealth.CountingProcessor(processor, health, budget=budget), health


def _quiet(processor, quiet_wait):
    """The batch processor exporting without holding anything the garbage collector tracks while its exporter
    works or waits to retry (core.compat.quiet_batch_export; agent/otlp_retry.py says why), waiting without making
    any and starting a batch when the program is not between a collection and a count (agent/quiet_wait.py). Its
    worker thread keeps the suppressing context attached, but where gevent or eventlet made threads greenlets."""
    from trace_run.core import compat

    from .green import threads_patched
    from .otlp_encoder import untrack

    quiet_wait.prepare()
    compat.quiet_batch_export(processor, keep_suppressed=not threads_patched(), seal=untrack,
                              before=quiet_wait.wait_for_quiet, awaken=quiet_wait.QuietEvent)
    return processor


def _preencoder(health):
    """Redact each span as it ends and, once the exporter is one that takes them (trace-run's,
    where this SDK has what it builds on; not the stock one it falls back to), encode it too."""
    from .otlp_encoder import Encoder
    from .redact import redact_span, rules_from_config

    encoder = Encoder(pause=False)
    preencode = encoder.preencode
    rules = rules_from_config()
    redacting = bool(rules)  # the rules are fixed for the process: asked once, not per span
    accepts = False  # the built exporter takes encoded spans: once it does, it goes on doing so
    takers: list = []  # the processor's: given the C encoder to call itself, once prepare would only call it

    def prepare(span):
        nonlocal accepts
        if redacting:
            try:
                span = redact_span(span, rules)
            except Exception as exc:  # never export what the rules would have removed
                log.warning_once("redact-failed", "spans dropped: attribute redaction failed (%s: %s); "
                                 "they are not exported unredacted" % (type(exc).__name__, exc))
                return None
        if not accepts:
            if not getattr(health.built, "accepts_encoded", False):  # not built yet, or a stock exporter
                return span
            accepts = True
        try:
            return preencode(span)
        except Exception as exc:  # the exporter encodes it (and reports what it cannot)
            log.debug("span %r not encoded as it ended (%s: %s)" % (span.name, type(exc).__name__, exc))
            return span
        finally:
            if takers and not redacting and encoder.native_preencode is not None:  # configured by the call
                for take in takers:
                    take(encoder.native_preencode)
                del takers[:]

    prepare.hand_over = takers.append
    return prepare


def _grpc_h2(spec: dict) -> bool:
    """Is this OTLP/gRPC export on trace-run's own client (grpc_h2), not grpcio?"""
    return (spec["protocol"] == "grpc" and spec.get("encoder") == "fast"
            and spec.get("grpc_client", "trace-run") == "trace-run")


def build_otlp_exporter(spec: dict):
    _import_what_the_first_export_imports(http=spec["protocol"] != "grpc")
    if _grpc_h2(spec):
        from .otlp_grpc_h2 import OTLPGrpcH2SpanExporter

        endpoint = spec["endpoint"]
        # as below: credentials given make an http:// endpoint TLS too (the SDK's rule)
        credentials = spec["certificate"] or spec["client_key"] or spec["client_certificate"]
        return OTLPGrpcH2SpanExporter(
            endpoint, insecure=spec["insecure"] or (endpoint.startswith("http://") and not credentials),
            certificate=spec["certificate"], client_key=spec["client_key"],
            client_certificate=spec["client_certificate"], headers=spec["headers"], timeout_s=spec["timeout_s"],
            compression=spec["compression"])
    if spec["protocol"] == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Stock
        from trace_run.core.compat import accepts_keyword

        from .otlp_answer import GRPC_OPTIONS

        if spec.get("encoder") == "fast":
            from .otlp_grpc import OTLPGrpcSpanExporter as OTLPSpanExporter
        else:
            OTLPSpanExporter = Stock

        credentials = None
        if spec["certificate"] or spec["client_key"] or spec["client_certificate"]:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(spec["certificate"]),
                private_key=_read(spec["client_key"]),
                certificate_chain=_read(spec["client_certificate"]),
            )
        endpoint = spec["endpoint"]
        insecure = spec["insecure"] or (endpoint.startswith("http://") and credentials is None)
        kwargs = dict(
            endpoint=endpoint,
            insecure=insecure,
            credentials=credentials,
            headers=spec["headers"] or None,
            timeout=spec["timeout_s"],
            compression=grpc.Compression.Gzip if spec["compression"] == "gzip" else grpc.Compression.NoCompression,
        )
        if accepts_keyword(Stock.__init__, "channel_options"):
            kwargs["channel_options"] = GRPC_OPTIONS  # the answer is read up to a cap
        return OTLPSpanExporter(**kwargs)
    session = _session_keeping_ca() if spec["certificate"] else None
    # a requests Session from an entry point (the SDK's credential provider): the stock exporter loads it
    provider = any(config.get("OTEL_PYTHON_EXPORTER_OTLP_HTTP_%sCREDENTIAL_PROVIDER" % s) for s in ("TRACES_", ""))
    if spec.get("encoder") == "fast" and not provider:
        try:
            from .otlp_http import OTLPHTTPSpanExporter

            cert = spec["client_certificate"]
            if cert and spec["client_key"]:
                cert = (cert, spec["client_key"])
            return OTLPHTTPSpanExporter(spec["endpoint"], spec["headers"], spec["timeout_s"], spec["compression"],
                                        verify=spec["certificate"] or True, cert=cert, session=session)
        except (ImportError, AttributeError, TypeError) as exc:  # an SDK without the pieces it builds on
            log.debug("trace-run's OTLP/HTTP exporter not available here (%s); using the SDK's"
                      % scrubber(spec["endpoint"])(str(exc)))
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    kwargs = dict(
        endpoint=spec["endpoint"],
        certificate_file=spec["certificate"],
        client_key_file=spec["client_key"],
        client_certificate_file=spec["client_certificate"],
        headers=spec["headers"] or None,
        timeout=spec["timeout_s"],
        compression=Compression.Gzip if spec["compression"] == "gzip" else Compression.NoCompression,
        session=session,
    )
    if not provider:  # the stock exporter on a transport reading the answer up to a cap
        try:
            return OTLPSpanExporter(**kwargs, _transport=_capped_requests_transport(spec, session))
        except (ImportError, TypeError):  # an SDK without these pieces: its own transport
            pass
    return OTLPSpanExporter(**kwargs)


def _import_what_the_first_export_imports(http: bool) -> None:
    """What the first export would import on the export thread, imported here, on the thread that builds
    (see lazy_exporter): the socket module's lookup of the host name's codec (`encodings.idna`) and, over
    HTTP, requests' `netrc`, read inside its first request. A child forked while the export thread held a
    module's import lock also inherited the lock without its owner, and its exit flush hung there."""
    import codecs

    codecs.lookup("idna")
    if http:
        import netrc  # noqa: F401


def _capped_requests_transport(spec: dict, session):
    """The transport the stock OTLP/HTTP exporter builds from the same settings, reading answers capped."""
    from trace_run.core.compat import http_transport

    from .otlp_answer import capped

    RequestsHTTPTransport = http_transport("requests")[0]

    cert = spec["client_certificate"]
    if cert and spec["client_key"]:
        cert = (cert, spec["client_key"])
    return capped(RequestsHTTPTransport)(verify=spec["certificate"] or True, cert=cert, session=session)


def _session_keeping_ca():
    """A requests Session whose CA file is not replaced by REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE: requests
    lets those override `session.verify`, which silently dropped OTEL_EXPORTER_OTLP_CERTIFICATE."""
    import requests

    class Session(requests.Session):
        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            settings["verify"] = self.verify
            return settings

    return Session()


def _read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def build_sampler(spec: dict):
    from opentelemetry.sdk.trace import sampling

    name = spec["name"]
    if "entry_point" in spec:
        for ep_name, ep in _entry_points("opentelemetry_traces_sampler").items():
            if ep_name == name:
                return ep.load()(spec.get("arg") or None)
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "parentbased_always_on":
        return sampling.ParentBased(sampling.ALWAYS_ON)
    if name == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(spec["ratio"])
    if name == "parentbased_traceidratio":
        return sampling.ParentBased(sampling.TraceIdRatioBased(spec["ratio"]))
    from .samplers import RateLimitingSampler

    if name == "ratelimiting":
        return RateLimitingSampler(spec["per_second"])
    return sampling.ParentBased(RateLimitingSampler(spec["per_second"]))


def build_propagator(names: list):
    from opentelemetry.propagators.composite import CompositePropagator

    props = []
    for name in names:
        if name == "tracecontext":
            from trace_run.agent.tracecontext import W3CTraceContextPropagator

            props.append(W3CTraceContextPropagator())
        elif name == "baggage":
            from opentelemetry.baggage.propagation import W3CBaggagePropagator

            props.append(W3CBaggagePropagator())
        elif name == "b3":
            from opentelemetry.propagators.b3 import B3SingleFormat

            props.append(B3SingleFormat())
        elif name == "b3multi":
            from opentelemetry.propagators.b3 import B3MultiFormat

            props.append(B3MultiFormat())
        else:
            try:
                props.append(_entry_points("opentelemetry_propagator")[name].load()())
            except Exception as exc:
                log.warning("propagator %s not loaded (%s); it is left out" % (name, exc))
    return CompositePropagator(props)
