"""trace-run's OTLP encoder gives the official encoder's bytes, and its exporter delivers them.

Equality is checked on the bytes (the strongest form) and, for the reader of a
failure, on the decoded messages too.
"""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from support import clean_env, run_traced, write_script
from trace_run.agent import fastspan, otlp_encoder
from trace_run.agent.otlp_encoder import Encoder, encode_spans


class _FastProvider(TracerProvider):
    """Its tracers make trace-run's own span class (agent/fastspan.py), as the agent's provider's do.
    (tests/test_fastspan.py runs this file's other checks on that class too.)"""

    def get_tracer(self, *args, **kwargs):
        return fastspan.adopt(super().get_tracer(*args, **kwargs))


def _provider(resource=None, limits=None, span_class="sdk"):
    exporter = InMemorySpanExporter()
    provider = (_FastProvider if span_class == "trace-run" else TracerProvider)(
        resource=resource or Resource({"service.name": "enc", "n": 3}), span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _assert_same(spans):
    expected = official_encode(spans).SerializePartialToString()
    got = encode_spans(spans)
    own = [s for s in spans if type(s) is fastspan.Span]
    if own:  # the encoder reads these through their fields: the same bytes as through the properties
        encoder = Encoder(pause=False)
        assert [encoder.span(s) for s in own] == [encoder._any_span(s) for s in own]
    # decoded first: a difference then reads as fields, not as bytes
    assert ExportTraceServiceRequest.FromString(got) == ExportTraceServiceRequest.FromString(expected)
    assert got == expected
    return got


def _remote_parent(trace_state=None):
    ctx = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                      trace_flags=TraceFlags(1), trace_state=trace_state or TraceState())
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def test_a_varied_batch_encodes_to_the_official_bytes():
    provider, exporter = _provider(limits=SpanLimits(max_span_attributes=6, max_events=1, max_links=1))
    tracer = provider.get_tracer("scope.a", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.26.0",
                                 attributes={"scope.attr": "x"})
    other = provider.get_tracer("scope.b")
    parent = _remote_parent(TraceState([("vendor", "v1"), ("other", "x-y")]))
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER, context=parent, attributes={
        "http.request.method": "GET", "url.path": "/orders/7", "server.port": 8080, "flag": True,
        "off": False, "ratio": 0.25, "zero": 0, "empty": "", "neg": -12345678901,
    }) as root:  # 9 attributes, 6 kept: dropped_attributes_count is written
        root.add_event("first", {"k": "v", "n": 1}, timestamp=1_700_000_000_000_000_001)
        root.add_event("second")  # over the event limit: dropped_events_count
        root.set_status(Status(StatusCode.ERROR, "payment declined"))
        with other.start_as_current_span("SELECT shop.orders", kind=SpanKind.CLIENT, links=[
            Link(root.get_span_context(), {"link.kind": "same"}),
            Link(trace.get_current_span(parent).get_span_context()),  # over the link limit
        ], attributes={"db.query.text": "SELECT ? ", "tags": ("a", "b", ""), "ints": (1, -2, 3),
                       "floats": (1.5, -0.0, math.inf), "bools": (True, False)}) as child:
            child.set_status(Status(StatusCode.OK))
        for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            with tracer.start_as_current_span("", kind=kind, attributes={"unicode": "zażółć ✓ 𝄞"}):
                pass
    spans = exporter.get_finished_spans()
    assert len(spans) == 5
    data = _assert_same(spans)
    request = ExportTraceServiceRequest.FromString(data)
    scopes = request.resource_spans[0].scope_spans
    assert [s.scope.name for s in scopes] == ["scope.b", "scope.a"]  # order of first appearance
    root_pb = [s for s in scopes[1].spans if s.name == "GET /orders/{id}"][0]
    assert root_pb.dropped_attributes_count == 3 and root_pb.dropped_events_count == 1
    assert root_pb.trace_state == "vendor=v1,other=x-y" and root_pb.flags == 0x300
    assert root_pb.status.code == 2 and root_pb.status.message == "payment declined"


def test_spans_encoded_as_they_end_frame_to_the_same_bytes():
    provider, exporter = _provider()
    other, other_exporter = _provider(Resource({"service.name": "other"}))
    for p, scope in ((provider, "a"), (other, "b"), (provider, "c"), (provider, "a")):
        with p.get_tracer(scope).start_as_current_span("s-" + scope, attributes={"k": scope}) as span:
            span.add_event("e", {"n": 1})
    spans = sorted(exporter.get_finished_spans() + other_exporter.get_finished_spans(), key=lambda s: s.start_time)
    early = Encoder(pause=False)
    items = [early.preencode(s) for s in spans]
    assert all(isinstance(i, otlp_encoder.Encoded) and i.context.trace_flags.sampled for i in items)
    mixed = items[:2] + list(spans[2:])  # a span that could not be encoded early goes as it is
    for batch in (items, mixed):
        assert Encoder().encode(batch) == official_encode(spans).SerializePartialToString()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from("abc"), st.sampled_from([0, 100, 200, 17000])),
                min_size=1, max_size=12))
def test_runs_and_returns_of_groups_and_long_spans_frame_to_the_same_bytes(order):
    """Spans in runs of one scope, groups left and come back to, span lengths with 1-, 2- and 3-byte
    varints; one encoder for every batch, its cache of span headers starting over (see Encoder.encode)."""
    providers = [_provider(Resource({"service.name": name})) for name in ("p0", "p1", "p0")]  # p2 equals p0
    for which, scope, size in order:
        with providers[which][0].get_tracer(scope).start_as_current_span("s", attributes={"v": "x" * size}):
            pass
    spans = sorted(sum((list(e.get_finished_spans()) for _, e in providers), []), key=lambda s: s.start_time)
    expected = official_encode(spans).SerializePartialToString()
    encoder = _RUNS_ENCODER
    items = [encoder.preencode(s) for s in spans]
    saved, otlp_encoder._CACHE_MAX = otlp_encoder._CACHE_MAX, 2  # the caches start over often
    try:
        assert encoder.encode(items) == expected
        assert encoder.encode(spans) == expected  # (not encoded as they ended: the same framing)
    finally:
        otlp_encoder._CACHE_MAX = saved
    assert len(encoder._heads) <= 2


_RUNS_ENCODER = Encoder(pause=False)


def test_spans_of_equal_resources_share_a_group_and_different_ones_do_not():
    p1, e1 = _provider(Resource({"service.name": "a"}))
    p2, e2 = _provider(Resource({"service.name": "a"}))  # equal, another object
    p3, e3 = _provider(Resource({"service.name": "b"}, schema_url="https://example.com/s"))
    for p in (p1, p3, p2, p1):
        with p.get_tracer("t").start_as_current_span("s"):
            pass
    spans = list(e1.get_finished_spans()[:1]) + list(e3.get_finished_spans()) + list(e2.get_finished_spans()) \
        + list(e1.get_finished_spans()[1:])
    request = ExportTraceServiceRequest.FromString(_assert_same(spans))
    assert [len(rs.scope_spans[0].spans) for rs in request.resource_spans] == [3, 1]
    assert request.resource_spans[1].schema_url == "https://example.com/s"


def test_attributes_the_official_encoder_skips_are_skipped_too():
    provider, exporter = _provider()
    with provider.get_tracer("t").start_as_current_span("s", attributes={
        "huge": 1 << 70, "huge.list": (1, 1 << 64), "ok": "kept", "surrogate": "\ud800",
    }):
        pass
    spans = exporter.get_finished_spans()
    data = _assert_same(spans)
    keys = [kv.key for kv in ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
            .attributes]
    assert keys == ["ok"]


_scalar = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
)
_value = st.one_of(
    _scalar,
    st.lists(st.text(max_size=8), max_size=4).map(tuple),
    st.lists(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), max_size=4).map(tuple),
    st.lists(st.floats(), max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
)
_attrs = st.dictionaries(st.text(max_size=12), _value, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spans=st.lists(st.tuples(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
        st.sampled_from(list(SpanKind)),
        _attrs,
        st.lists(st.tuples(st.text(max_size=8), _attrs), max_size=2),
        st.sampled_from([None, StatusCode.OK, StatusCode.ERROR]),
        st.booleans(),
    ), min_size=1, max_size=6),
    resource=_attrs,
)
def test_any_span_encodes_to_the_official_bytes(spans, resource):
    provider, exporter = _provider(Resource(resource))
    tracer = provider.get_tracer("prop", "0.1")
    for name, kind, attrs, events, status, remote in spans:
        with tracer.start_as_current_span(name, kind=kind, attributes=attrs,
                                          context=_remote_parent() if remote else None) as span:
            for event_name, event_attrs in events:
                span.add_event(event_name, event_attrs)
            if status is not None:
                span.set_status(Status(status, "why" if status is StatusCode.ERROR else None))
    _assert_same(exporter.get_finished_spans())


def test_cached_attributes_stay_right_when_the_cache_starts_over(monkeypatch):
    monkeypatch.setattr(otlp_encoder, "_CACHE_MAX", 4)
    encoder = Encoder(pause=False)
    provider, exporter = _provider()
    tracer = provider.get_tracer("t")
    for i in range(12):
        with tracer.start_as_current_span("s", attributes={"user.id": i % 7, "name": "n%d" % (i % 5)}) as span:
            span.add_event("e", {"name": "n%d" % (i % 5)})  # same pair, another field: another cache
    spans = exporter.get_finished_spans()
    for _ in range(2):  # a second pass reads from the cache
        assert encoder.encode(spans) == official_encode(spans).SerializePartialToString()
    assert all(len(cache) <= 4 for cache in encoder._attr_caches.values())


def test_our_own_spans_take_the_field_path_and_others_the_property_path(monkeypatch):
    provider, exporter = _provider(span_class="trace-run")
    sdk_provider, sdk_exporter = _provider()
    links = []
    for p in (provider, sdk_provider):
        with p.get_tracer("t").start_as_current_span("s", links=links, attributes={"k": "v"}) as span:
            span.add_event("e")
        links = [Link(span.get_span_context(), {"why": "retry"})]
    with provider.get_tracer("t").start_as_current_span("linked", links=links) as span:
        span.set_status(Status(StatusCode.ERROR, "no"))
    ours, theirs = list(exporter.get_finished_spans()), list(sdk_exporter.get_finished_spans())
    assert [type(s) for s in ours] == [fastspan.Span] * 2 and type(theirs[0]) is not fastspan.Span
    by_properties = Encoder(pause=False)._any_span
    expected = {id(s): by_properties(s) for s in ours + theirs}
    read = []
    monkeypatch.setattr(Encoder, "_any_span", lambda self, span: read.append(span.name) or by_properties(span))
    encoder = Encoder(pause=False)
    assert {id(s): encoder.span(s) for s in ours + theirs} == expected
    assert read == ["s"]  # the SDK's span only
    # a span made by the SDK's constructor (a program's own, or the fallback) is one of ours too
    made = fastspan.Span("by-hand", ours[0].context, resource=ours[0].resource, attributes={"a": 1})
    made.start()
    made.end()
    assert encoder.span(made) == by_properties(made)
    _assert_same(ours + theirs + [made])


def test_where_span_context_is_not_the_tuple_it_reads_every_span_takes_the_property_path(monkeypatch):
    monkeypatch.setattr(otlp_encoder, "_OWN_SPAN", [])
    monkeypatch.setattr(otlp_encoder, "_context_layout", lambda: False)
    provider, exporter = _provider(span_class="trace-run")
    with provider.get_tracer("t").start_as_current_span("s", attributes={"k": 1}):
        pass
    spans = exporter.get_finished_spans()
    assert otlp_encoder._own_span_type() is None
    assert Encoder(pause=False).encode(spans) == official_encode(spans).SerializePartialToString()
    monkeypatch.undo()
    assert otlp_encoder._context_layout() is True  # the installed API's SpanContext is that tuple
    otlp_encoder._configure_native(fastspan._UNSET)  # the extension was told no span is ours: told again
    assert otlp_encoder._own_span_type() is fastspan.Span


def test_a_batch_bigger_than_a_slice_pauses_and_still_matches(monkeypatch):
    pauses = []
    monkeypatch.setattr(otlp_encoder.time, "sleep", pauses.append)
    monkeypatch.setattr(otlp_encoder, "_skip_until", 0.0)  # (a slow hand-over before, on a busy machine)
    provider, exporter = _provider()
    tracer = provider.get_tracer("t")
    for i in range(otlp_encoder.SLICE * 3 + 1):
        with tracer.start_as_current_span("s%d" % i):
            pass
    spans = exporter.get_finished_spans()
    assert Encoder().encode(spans) == official_encode(spans).SerializePartialToString()
    assert pauses == [otlp_encoder.PAUSE_S] * 4  # after each of 3 slices, then before the request is framed
    del pauses[:]
    assert Encoder().encode(spans[:otlp_encoder.SLICE]) and pauses == []  # one slice: no pause


# -- the exporter ----------------------------------------------------------------------


def _spans(n=3):
    provider, exporter = _provider()
    for i in range(n):
        with provider.get_tracer("t").start_as_current_span("span-%d" % i, attributes={"i": i}):
            pass
    return exporter.get_finished_spans()


def _exporter(receiver, **kw):
    from trace_run.agent.otlp_http import OTLPHTTPSpanExporter

    args = dict(headers={}, timeout_s=2.0, compression="none")
    args.update(kw)
    return OTLPHTTPSpanExporter(receiver.http_endpoint + "/v1/traces", **args)


def test_fast_exporter_posts_the_official_bytes(receiver):
    spans = _spans()
    exporter = _exporter(receiver, headers={"x-tenant": "t1"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert receiver.requests == [official_encode(spans).SerializePartialToString()]
    assert [s.name for s in receiver.spans] == ["span-0", "span-1", "span-2"]
    headers = {k.lower(): v for k, v in receiver.headers_seen[0].items()}
    assert headers["content-type"] == "application/x-protobuf" and headers["x-tenant"] == "t1"
    assert headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown, as the stock exporter


def test_fast_exporter_gzips_when_asked(receiver):
    spans = _spans()
    assert _exporter(receiver, compression="gzip").export(spans) is SpanExportResult.SUCCESS
    assert receiver.headers_seen[0].get("Content-Encoding") == "gzip"
    assert receiver.requests == [official_encode(spans).SerializePartialToString()]  # as decompressed


def test_fast_exporter_reports_a_failing_endpoint(receiver):
    receiver.http_status = 400  # not retried by the SDK's client
    assert _exporter(receiver).export(_spans()) is SpanExportResult.FAILURE
    assert receiver.spans == [] and receiver.http_calls == 1


def test_fast_exporter_drops_a_batch_over_the_size_limit(receiver, capfd):
    exporter = _exporter(receiver)
    exporter.max_request_bytes = 100
    assert exporter.export(_spans(5)) is SpanExportResult.FAILURE
    assert receiver.http_calls == 0
    assert "over the 100-byte request limit" in capfd.readouterr().err


def test_a_span_that_cannot_be_encoded_fails_its_batch_with_one_line(receiver, capfd):
    exporter = _exporter(receiver)
    assert exporter.export([object()]) is SpanExportResult.FAILURE
    err = capfd.readouterr().err
    assert "spans not encoded (AttributeError" in err and "this batch is dropped" in err
    assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS  # the next batch goes out
    assert len(receiver.spans) == 1


def test_an_sdk_without_the_pieces_gets_the_stock_exporter(monkeypatch):
    import sys

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from trace_run.agent import sdk

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.common.http", None)  # import fails
    spec = dict(sdk._resolve_otlp(), endpoint="http://127.0.0.1:4318/v1/traces", encoder="fast")
    assert type(sdk.build_otlp_exporter(spec)) is OTLPSpanExporter
    monkeypatch.undo()
    assert type(sdk.build_otlp_exporter(spec)).__name__ == "OTLPHTTPSpanExporter"
    assert type(sdk.build_otlp_exporter(dict(spec, encoder="sdk"))) is OTLPSpanExporter
    # a session from the SDK's credential-provider entry point: only the stock exporter loads it
    # (no such provider is installed here: the stock exporter's own error proves it was the one built)
    from trace_run.core import config

    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "no_such_provider")
    config.reset()  # read through the registry, which caches what it read
    try:
        with pytest.raises(RuntimeError, match="no_such_provider"):
            sdk.build_otlp_exporter(spec)
    finally:
        monkeypatch.delenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER")
        config.reset()


def test_grpc_exporter_sends_the_official_bytes(receiver):
    from trace_run.agent.otlp_grpc import OTLPGrpcSpanExporter

    spans = _spans()
    exporter = OTLPGrpcSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True, headers={"x-tenant": "t1"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert receiver.requests == [official_encode(spans).SerializePartialToString()]
    assert receiver.grpc_calls == 1 and receiver.headers_seen[0].get("x-tenant") == "t1"
    exporter.shutdown()


def test_grpc_exporter_without_the_internals_keeps_the_official_encoder(receiver, monkeypatch):
    from trace_run.agent import otlp_grpc
    from trace_run.core import compat

    monkeypatch.setattr(compat, "GRPC_EXPORTER_NEEDS", compat.GRPC_EXPORTER_NEEDS + ("_no_such_attribute",))
    exporter = otlp_grpc.OTLPGrpcSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True)
    assert not hasattr(exporter, "_encoder")
    spans = _spans()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert receiver.requests == [official_encode(spans).SerializePartialToString()]
    exporter.shutdown()


def _pipeline(receiver, monkeypatch, **env):
    from trace_run.agent import sdk
    from trace_run.core import config

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config.reset()
    plan = sdk.resolve()
    provider, _propagator, processors = sdk.build(plan)
    return provider, processors[0][0]


def test_the_fast_pipeline_queues_bytes_and_delivers_redacted_spans(receiver, monkeypatch):
    from trace_run.core import compat

    provider, counting = _pipeline(receiver, monkeypatch, OTEL_TRACE_RUN_REDACT_ATTRIBUTES="user.email")
    queued = []
    real = counting._on_end
    monkeypatch.setattr(counting, "_on_end", lambda item: (queued.append(type(item).__name__), real(item)))
    tracer = provider.get_tracer("t")
    inside = [True]
    monkeypatch.setattr(compat, "importing_here", lambda: inside[0])  # a span ending inside an import: no build
    with tracer.start_as_current_span("before-the-build", attributes={"user.email": "a@b.c"}):
        pass
    assert counting.health.built is None
    inside[0] = False  # the next span end builds it
    with tracer.start_as_current_span("after-the-build", attributes={"user.email": "a@b.c"}):
        pass
    assert counting.health.built is not None
    assert queued == ["_RedactedSpan"]  # ended before the exporter existed: queued redacted, encoded on export
    # the batch processor is built now: sampled spans go straight to its queue
    real = counting._on_end
    assert real == counting.processor._processor._batch_processor.emit and counting._sampled_only
    monkeypatch.setattr(counting, "_on_end", lambda item: (queued.append(type(item).__name__), real(item)))
    queued.clear()
    with tracer.start_as_current_span("parent", attributes={"user.email": "a@b.c", "kept": 1}):
        with tracer.start_as_current_span("child"):
            pass
    provider.force_flush()
    assert queued == ["Encoded", "Encoded"]
    spans = receiver.wait_for(count=4)
    assert [s.attributes for s in spans if s.name in ("before-the-build", "after-the-build")] == [{}, {}]
    parent = [s for s in spans if s.name == "parent"][0]
    assert parent.attributes == {"kept": 1}
    assert [s for s in spans if s.name == "child"][0].parent_id == parent.span_id
    assert b"a@b.c" not in receiver.raw_bytes()
    provider.shutdown()


def test_a_fast_pipeline_falling_back_to_the_stock_exporter_queues_spans_it_can_encode(receiver, monkeypatch):
    from trace_run.agent import otlp_http

    def older_sdk(self, *args, **kwargs):
        raise ImportError("cannot import name '_OTLPHTTPClient'")

    monkeypatch.setattr(otlp_http.OTLPHTTPSpanExporter, "__init__", older_sdk)
    provider, counting = _pipeline(receiver, monkeypatch, OTEL_TRACE_RUN_REDACT_ATTRIBUTES="user.email")
    queued = []
    real = counting._on_end
    monkeypatch.setattr(counting, "_on_end", lambda item: (queued.append(type(item).__name__), real(item)))
    with provider.get_tracer("t").start_as_current_span("old-sdk", attributes={"user.email": "a@b.c", "k": 1}):
        pass
    provider.force_flush()
    assert type(counting.health.built).__name__ == "OTLPSpanExporter"
    assert queued == ["_RedactedSpan"]  # redacted as it ended, not pre-encoded: the stock exporter takes spans
    assert [(s.name, s.attributes) for s in receiver.wait_for(count=1)] == [("old-sdk", {"k": 1})]  # redacted
    provider.shutdown()


def test_a_span_the_early_encoder_fails_on_is_exported_all_the_same(receiver, monkeypatch):
    def broken(self, span):
        raise RuntimeError("no")

    monkeypatch.setattr(Encoder, "preencode", broken)
    provider, _ = _pipeline(receiver, monkeypatch)
    with provider.get_tracer("t").start_as_current_span("survivor", attributes={"a": "b"}):
        pass
    provider.force_flush()
    assert [(s.name, s.attributes) for s in receiver.wait_for(count=1)] == [("survivor", {"a": "b"})]
    provider.shutdown()


def test_spans_whose_redaction_fails_are_dropped_with_one_warning(receiver, monkeypatch, capfd):
    from trace_run.agent import redact

    def broken(span, rules):
        raise RuntimeError("rules broke")

    monkeypatch.setattr(redact, "redact_span", broken)
    provider, counting = _pipeline(receiver, monkeypatch, OTEL_TRACE_RUN_HASH_ATTRIBUTES="user.*")
    tracer = provider.get_tracer("t")
    for _ in range(3):
        with tracer.start_as_current_span("secret", attributes={"user.id": "u1"}):
            pass
    provider.force_flush()
    time.sleep(0.3)
    assert receiver.spans == [] and counting.ended == 3
    err = capfd.readouterr().err
    assert err.count("attribute redaction failed (RuntimeError: rules broke)") == 1
    provider.shutdown()


# -- under trace-run ---------------------------------------------------------------------

_APP = """
    from opentelemetry import trace
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("outer", attributes={"a": 1, "b": "two"}) as s:
        s.add_event("e", {"x": 1.5})
        with tracer.start_as_current_span("inner", kind=trace.SpanKind.CLIENT):
            pass
    trace.get_tracer_provider().force_flush()
    import sys
    print("protobuf loaded:", "google.protobuf" in sys.modules)
"""


@pytest.mark.parametrize("protocol,encoder,client", [
    ("http/protobuf", "fast", ""), ("http/protobuf", "sdk", ""), ("http/protobuf", "turbo", ""),
    ("grpc", "fast", "trace-run"), ("grpc", "fast", "grpcio"), ("grpc", "sdk", "")])
def test_programs_export_the_same_spans_with_either_encoder(receiver, tmp_path, protocol, encoder, client):
    script = write_script(tmp_path, _APP)
    env = clean_env(OTEL_SERVICE_NAME="enc", OTEL_TRACE_RUN_OTLP_ENCODER=encoder, **receiver.env(protocol))
    if client:
        env["OTEL_TRACE_RUN_GRPC_CLIENT"] = client
    proc = run_traced(["python", script], env=env, check=True)
    spans = receiver.wait_for(count=2)
    assert sorted(s.name for s in spans) == ["inner", "outer"]
    outer = [s for s in spans if s.name == "outer"][0]
    inner = [s for s in spans if s.name == "inner"][0]
    assert inner.parent_id == outer.span_id and inner.trace_id == outer.trace_id
    assert outer.attributes == {"a": 1, "b": "two"} and outer.resource["service.name"] == "enc"
    # trace-run's OTLP/HTTP and gRPC exporters never load protobuf; grpcio's exporter needs it for its messages
    assert ("protobuf loaded: False" in proc.stdout) is (encoder != "sdk" and client != "grpcio"), proc.stdout
    if encoder == "turbo":  # a bad value: one line naming it and what is used instead
        lines = [line for line in proc.stderr.splitlines() if "OTEL_TRACE_RUN_OTLP_ENCODER" in line]
        assert len(lines) == 1 and "turbo" in lines[0] and "fast" in lines[0], proc.stderr


def test_cached_names_and_attribute_pairs_stay_right_across_kinds_types_and_restarts(monkeypatch):
    """The encoder keeps each span name's encoded name and kind, and each (key, value) pair's field:
    the same name under another kind, values that compare equal across types (1, 1.0, True) and a cache
    that starts over all give the official bytes, span by span, early-encoded or not."""
    from opentelemetry.trace import SpanKind

    monkeypatch.setattr(otlp_encoder, "_CACHE_MAX", 3)
    encoder = Encoder(pause=False)
    provider, exporter = _provider(span_class="trace-run")
    tracer = provider.get_tracer("t")
    kinds = [SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL]
    values = [1, 1.0, True, "1", 2, "x" * 200]
    for i in range(14):  # two names and "" (3 entries), the other cache starting over
        with tracer.start_as_current_span("GET /r%d" % (i % 2) if i % 5 else "", kind=kinds[i % 3],
                                          attributes={"v": values[i % len(values)], "n": i % 3}):
            pass
    spans = exporter.get_finished_spans()
    assert all(type(s) is fastspan.Span for s in spans)
    for _ in range(2):
        assert encoder.encode([encoder.preencode(s) for s in spans]) == _assert_same(spans)
    assert len(encoder._names) <= 3


def test_whole_attribute_blocks_are_kept_only_for_str_and_int_values_and_stay_right():
    """A span's attributes are kept encoded as one block, by their items, where every value is a str or
    an int: equal-comparing values of other types (True, 1.0), a value the encoder skips (an int over
    int64) and blocks over the byte bound never enter it; span by span, the bytes stay the official ones.
    (The Python path's cache: the native encoder keeps none.)"""
    encoder = Encoder(pause=False, native=False)
    provider, exporter = _provider(span_class="trace-run")
    tracer = provider.get_tracer("t")
    blocks = [{"db.system.name": "postgresql", "server.port": port} for port in (1, True, 1.0, "1")]
    blocks += [{"n": 1 << 70}, {"q": "x" * 2000}, {"a": 1, "b": "two"}]
    for _ in range(3):  # the second and third rounds read what the first kept
        for attributes in blocks:
            with tracer.start_as_current_span("s", attributes=attributes):
                pass
    spans = exporter.get_finished_spans()
    assert all(type(s) is fastspan.Span for s in spans)
    for _ in range(2):
        assert encoder.encode([encoder.preencode(s) for s in spans]) == _assert_same(spans)
    kept = [dict(items) for items in encoder._blocks]
    assert kept == [blocks[0], blocks[3], blocks[6]]
