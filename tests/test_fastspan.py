"""trace-run's span class (agent/fastspan.py) behaves as the SDK's, step for step.

Each scenario runs twice, once on the SDK's own tracer and once on the same tracer adopted by
trace-run, with the same ids, times and inputs; the finished spans, the spans handed to the
processors, the warnings the SDK would log and what the program sees must be the same.
The OpenTelemetry SDK's own span tests run against this class too (tests/sdk_upstream/, locally).
"""

from __future__ import annotations

import asyncio
import decimal
import itertools
import logging

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from trace_run.agent import fastspan
from trace_run.agent.samplers import RateLimitingSampler


class _Ids(IdGenerator):
    def __init__(self):
        self._n = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._n)

    def generate_trace_id(self) -> int:
        return 0xABC0000 + next(self._n)


class _Recorder(SimpleSpanProcessor):
    """Keeps what on_start and on_end were given (as the SDK's processors see it)."""

    def __init__(self, exporter):
        super().__init__(exporter)
        self.started, self.ended = [], []

    def on_start(self, span, parent_context=None):
        self.started.append((span.name, span.is_recording(), parent_context))
        super().on_start(span, parent_context=parent_context)

    def on_end(self, span):
        assert isinstance(span, ReadableSpan)
        self.ended.append(span.name)
        super().on_end(span)


def _pipeline(ours: bool, sampler=None, limits=None):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, resource=Resource({"service.name": "t"}), id_generator=_Ids(),
                              span_limits=limits)
    recorder = _Recorder(exporter)
    provider.add_span_processor(recorder)
    tracer = provider.get_tracer("scope", "1.0", attributes={"s": 1})
    if ours:
        tracer = fastspan.adopt(tracer)
        assert type(tracer) is fastspan.Tracer
    return tracer, exporter, recorder


def _view(span: ReadableSpan) -> dict:
    """Everything an exporter can read from a finished span."""
    def ctx(c):
        return c and (c.trace_id, c.span_id, c.is_remote, int(c.trace_flags), c.trace_state.to_header())

    return {
        "name": span.name, "context": ctx(span.context), "parent": ctx(span.parent), "kind": span.kind,
        "start": span.start_time is not None, "end": span.end_time is not None,
        "attributes": list(span.attributes.items()), "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, list(e.attributes.items()) if e.name != "exception" else sorted(e.attributes),
                    e.dropped_attributes) for e in span.events],
        "dropped_events": span.dropped_events,
        "links": [(ctx(link.context), list(link.attributes.items()), link.dropped_attributes) for link in span.links],
        "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes), "scope": span.instrumentation_scope,
    }


def _run_both(scenario, caplog, **pipeline) -> tuple:
    results = []
    for ours in (False, True):
        tracer, exporter, recorder = _pipeline(ours, **pipeline)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="opentelemetry"):
            returned = scenario(tracer)
        spans = exporter.get_finished_spans()
        if ours and spans:
            assert all(type(s) is fastspan.Span for s in spans)
        results.append({"spans": [_view(s) for s in spans], "returned": returned,
                        "started": [(n, r, p is not None) for n, r, p in recorder.started], "ended": recorder.ended,
                        "warnings": [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]})
    sdk, ours = results
    assert ours == sdk
    return sdk


def _remote(trace_state=None):
    sc = SpanContext(0x1234, 0x99, is_remote=True, trace_flags=TraceFlags(1), trace_state=trace_state or TraceState())
    return trace.set_span_in_context(NonRecordingSpan(sc))


ATTRS = {"db.system.name": "postgresql", "db.namespace": "test", "server.port": 5432, "ratio": 0.5, "ok": True}


def test_a_plain_span_and_its_child(caplog):
    def scenario(tracer):
        with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=ATTRS) as root:
            root.set_attribute("http.response.status_code", 200)
            root.set_attribute("db.namespace", "moved-to-the-end")
            with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
                child.set_attributes({"a": "b", "n": 2})
                assert trace.get_current_span() is child
            assert trace.get_current_span() is root
        return root.is_recording(), child.is_recording()

    sdk = _run_both(scenario, caplog)
    assert [s["name"] for s in sdk["spans"]] == ["child", "root"]
    assert sdk["spans"][0]["parent"] == sdk["spans"][1]["context"]
    assert sdk["returned"] == (False, False)


def test_remote_parent_trace_state_and_start_span_with_context(caplog):
    def scenario(tracer):
        span = tracer.start_span("server", context=_remote(TraceState([("v", "1")])), kind=SpanKind.SERVER,
                                 start_time=1000)
        span.end(end_time=2000)
        return span.get_span_context().trace_id, span.start_time, span.end_time

    sdk = _run_both(scenario, caplog)
    assert sdk["returned"] == (0x1234, 1000, 2000)
    assert sdk["spans"][0]["context"][4] == "v=1" and sdk["spans"][0]["parent"][2] is True


def test_values_the_sdk_cleans_are_cleaned_the_same_way(caplog):
    def scenario(tracer):
        with tracer.start_as_current_span("s", attributes={"list": [1, 2], "none": None, "": "empty key",
                                                           "bytes": b"x", "tuple": ("a", "b")}) as span:
            span.set_attribute("seq", ["x", "y"])
            span.set_attribute("", 1)
            span.set_attribute("obj", object())
            span.set_attribute("decimal", decimal.Decimal("1.5"))
            span.set_attributes({"k": [True], "j": 1})
        return None

    _run_both(scenario, caplog)


@pytest.mark.parametrize("limits", [
    SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1, max_link_attributes=1),
    SpanLimits(max_span_attribute_length=3, max_attribute_length=2),
    SpanLimits(max_span_attributes=0, max_events=0, max_links=0),
], ids=["counts", "lengths", "zero"])
def test_span_limits(caplog, limits):
    def scenario(tracer):
        remote = trace.get_current_span(_remote()).get_span_context()
        with tracer.start_as_current_span("s", attributes={"a": "abcdef", "b": 1, "c": "xy"},
                                          links=[Link(remote, {"l1": "vvvv", "l2": 2}), Link(remote)]) as span:
            span.set_attribute("d", "long value")
            span.set_attribute("a", "again")
            span.add_event("e1", {"x": "yyyy", "z": 1}, timestamp=5)
            span.add_event("e2", timestamp=6)
            span.add_link(remote, {"m": "nnnn"})
        return None

    _run_both(scenario, caplog, limits=limits)


def test_events_links_status_name_after_and_before_end(caplog):
    def scenario(tracer):
        span = tracer.start_span("s")
        span.add_event("ev", {"k": "v"}, timestamp=10)
        span.add_link(SpanContext(7, 8, is_remote=False), {"why": "batch"})
        span.add_link(SpanContext(0, 0, is_remote=False))  # not valid: left out
        span.update_name("renamed")
        span.set_status(StatusCode.ERROR, "bad")
        span.set_status(Status(StatusCode.UNSET))  # ignored
        span.set_status(Status(StatusCode.OK))
        span.set_status(StatusCode.ERROR, "ignored after OK")
        span.end()
        span.end()  # warns, once more is nothing
        span.set_attribute("late", 1)
        span.set_attributes({"late": 2})
        span.add_event("late")
        span.add_link(SpanContext(7, 9, is_remote=False))
        span.update_name("late")
        span.set_status(StatusCode.ERROR)
        return span.name, span.status.status_code, span.is_recording()

    sdk = _run_both(scenario, caplog)
    assert sdk["returned"] == ("renamed", StatusCode.OK, False)
    assert "Calling end() on an ended span." in sdk["warnings"]
    assert "Setting attribute on ended span." in sdk["warnings"]


def test_exceptions_in_blocks(caplog):
    def scenario(tracer):
        for record, status in ((True, True), (False, False)):
            with pytest.raises(ValueError):
                with tracer.start_as_current_span("cm-%s" % record, record_exception=record,
                                                  set_status_on_exception=status):
                    raise ValueError("boom")
        with pytest.raises(KeyboardInterrupt):  # not an Exception: the API's use_span leaves it alone
            with tracer.start_as_current_span("interrupted"):
                raise KeyboardInterrupt
        span = tracer.start_span("span-as-cm")
        with pytest.raises(RuntimeError):
            with span:
                raise RuntimeError("inner")
        try:
            raise LookupError("by hand")
        except LookupError as exc:
            with tracer.start_as_current_span("recorded") as s:
                s.record_exception(exc, {"extra": 1}, timestamp=3)
        with tracer.start_as_current_span("kept-open", end_on_exit=False) as open_span:
            pass
        return open_span.is_recording()

    sdk = _run_both(scenario, caplog)
    assert sdk["returned"] is True
    by_name = {s["name"]: s for s in sdk["spans"]}
    assert by_name["cm-True"]["status"] == (StatusCode.ERROR, "ValueError: boom")
    assert by_name["cm-False"]["status"] == (StatusCode.UNSET, None) and not by_name["cm-False"]["events"]
    assert by_name["interrupted"]["events"] == []
    assert by_name["span-as-cm"]["status"][0] is StatusCode.ERROR


def test_decorators_sync_and_async(caplog):
    def scenario(tracer):
        @tracer.start_as_current_span("work")
        def work(x):
            return trace.get_current_span().is_recording(), x

        @tracer.start_as_current_span("async-work", kind=SpanKind.CONSUMER)
        async def async_work():
            return trace.get_current_span().is_recording()

        return work(1), work(2), asyncio.run(async_work())

    sdk = _run_both(scenario, caplog)
    assert [s["name"] for s in sdk["spans"]] == ["work", "work", "async-work"]
    assert sdk["returned"] == ((True, 1), (True, 2), True)


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, StaticSampler(Decision.RECORD_ONLY), ParentBased(ALWAYS_OFF)],
                         ids=["off", "record-only", "parent-off"])
def test_samplers(caplog, sampler):
    def scenario(tracer):
        with tracer.start_as_current_span("s", attributes={"a": 1}) as span:
            span.set_attribute("b", 2)
        return type(span).__name__ == "NonRecordingSpan", span.get_span_context().trace_flags.sampled

    _run_both(scenario, caplog, sampler=sampler)


class _ReadsAttributes(StaticSampler):
    """Samples a span only where its attributes say so (a subclass of a built-in: not trusted to ignore them)."""

    def __init__(self):
        super().__init__(Decision.RECORD_AND_SAMPLE)
        self.seen = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None):
        self.seen.append(dict(attributes or {}))
        decision = Decision.RECORD_AND_SAMPLE if (attributes or {}).get("keep") else Decision.DROP
        return SamplingResult(decision, attributes if decision is Decision.RECORD_AND_SAMPLE else None)


@pytest.mark.parametrize("sampler, blind", [
    (ALWAYS_OFF, True), (ALWAYS_ON, True), (ParentBased(ALWAYS_OFF), True), (ParentBasedTraceIdRatio(0.5), True),
    (TraceIdRatioBased(0.0), True), (RateLimitingSampler(1000), True), (_ReadsAttributes(), False),
    (ParentBased(_ReadsAttributes()), False), (ParentBased(ALWAYS_ON, remote_parent_sampled=_ReadsAttributes()), False),
], ids=["off", "on", "parent-off", "parent-ratio", "ratio-0", "rate-limit", "reads", "parent-reads", "remote-reads"])
def test_deferred_attributes_are_made_only_for_spans_that_record_where_the_sampler_ignores_them(sampler, blind):
    """An unsampled request skips building its SERVER span's attributes; what is exported is what
    start_span(..., attributes=...) exports; a sampler that may read attributes gets them first."""
    made = []

    def make():
        made.append(1)
        return "GET", {"http.request.method": "GET", "keep": True}

    deferred, deferred_out, _ = _pipeline(True, sampler=sampler)
    eager, eager_out, _ = _pipeline(True, sampler=sampler)
    assert deferred._attribute_blind is blind
    span = deferred.start_span_deferred(None, SpanKind.SERVER, make)
    name, attributes = make()
    reference = eager.start_span(name, None, SpanKind.SERVER, attributes)
    made.pop()
    assert made == ([1] if span.is_recording() or not blind else [])
    recording = span.is_recording()
    assert recording == reference.is_recording()
    span.end()
    reference.end()
    assert [_view(s) for s in deferred_out.get_finished_spans()] == [_view(s) for s in eager_out.get_finished_spans()]
    if isinstance(sampler, _ReadsAttributes):
        assert sampler.seen[-2:] == [{"http.request.method": "GET", "keep": True}] * 2 and recording


def test_a_following_tracer_defers_only_through_trace_runs_span_class():
    from trace_run.agent.program_provider import FollowingTracer

    ours, _, _ = _pipeline(True)
    sdk, _, _ = _pipeline(False)
    following = FollowingTracer(ours, "scope")
    assert following.start_span_deferred == ours.start_span_deferred
    following.follow(sdk)  # the program set its own provider: the SDK's tracer has no such method
    assert getattr(following, "start_span_deferred", None) is None


def test_the_span_is_the_sdks_span_and_read_only_once_ended():
    tracer, exporter, _ = _pipeline(True)
    span = tracer.start_span("s", attributes={"a": 1})
    assert isinstance(span, SdkSpan) and isinstance(span, ReadableSpan) and isinstance(span, trace.Span)
    assert span.is_recording() and span.get_span_context().is_valid
    span.end()
    with pytest.raises(TypeError):
        span.attributes["b"] = 2
    with pytest.raises(TypeError):
        span._attributes["b"] = 2
    assert dict(exporter.get_finished_spans()[0].attributes) == {"a": 1}
    assert "fastspan.Span" in repr(type(span)) and 's"' in repr(span)
    assert '"name": "s"' in span.to_json()


def test_sdk_span_class_by_configuration(monkeypatch, tmp_path):
    """OTEL_TRACE_RUN_SPAN_CLASS=sdk: the agent's provider makes the SDK's spans; by default ours."""
    from trace_run.agent import sdk
    from trace_run.core import config

    for value, expected in (("sdk", "_Span"), ("trace-run", "Span"), (None, "Span")):
        if value is None:
            monkeypatch.delenv("OTEL_TRACE_RUN_SPAN_CLASS", raising=False)
        else:
            monkeypatch.setenv("OTEL_TRACE_RUN_SPAN_CLASS", value)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
        config.reset()
        provider, _, _ = sdk.build(sdk.resolve())
        span = provider.get_tracer("x").start_span("s")
        assert type(span).__name__ == expected, value
        span.end()


def test_context_is_restored_after_a_block_that_raises():
    tracer, _, _ = _pipeline(True)
    before = context_api.get_current()
    with pytest.raises(ValueError):
        with tracer.start_as_current_span("s"):
            raise ValueError
    assert context_api.get_current() == before


class _AdoptingProvider(TracerProvider):
    def get_tracer(self, *args, **kwargs):
        return fastspan.adopt(super().get_tracer(*args, **kwargs))


def _encoder_tests():
    import test_otlp_encoder as enc

    names = ["test_a_varied_batch_encodes_to_the_official_bytes",
             "test_spans_encoded_as_they_end_frame_to_the_same_bytes",
             "test_spans_of_equal_resources_share_a_group_and_different_ones_do_not",
             "test_attributes_the_official_encoder_skips_are_skipped_too",
             "test_any_span_encodes_to_the_official_bytes",
             "test_cached_attributes_stay_right_when_the_cache_starts_over"]
    return enc, [n for n in names if hasattr(enc, n)]


@pytest.mark.parametrize("name", _encoder_tests()[1])
def test_the_encoders_byte_equality_holds_for_our_spans(name, monkeypatch):
    """tests/test_otlp_encoder.py's in-process checks, on spans of trace-run's class."""
    enc, _ = _encoder_tests()
    monkeypatch.setattr(enc, "TracerProvider", _AdoptingProvider)
    exporters = []
    real_provider = enc._provider

    def recording(*args, **kwargs):
        provider, exporter = real_provider(*args, **kwargs)
        exporters.append(exporter)
        return provider, exporter

    monkeypatch.setattr(enc, "_provider", recording)
    sig = __import__("inspect").signature(getattr(enc, name))
    getattr(enc, name)(**({"monkeypatch": monkeypatch} if "monkeypatch" in sig.parameters else {}))
    made = [s for e in exporters for s in e.get_finished_spans()]
    assert made and all(type(s) is fastspan.Span for s in made)


_PROGRAM = '''
from opentelemetry import trace
tracer = trace.get_tracer("app")
with tracer.start_as_current_span("outer", attributes={"a": 1, "b": "two"}) as outer:
    outer.add_event("ev", {"k": "v"})
    with tracer.start_as_current_span("inner") as inner:
        inner.set_attribute("n", 3)
    try:
        with tracer.start_as_current_span("failing"):
            raise ValueError("no")
    except ValueError:
        pass
print("class:", type(outer).__name__, type(outer).__module__)
'''


@pytest.mark.parametrize("span_class", ["trace-run", "sdk", "tiny"])
def test_programs_under_trace_run_export_the_same_spans_with_either_class(receiver, tmp_path, span_class):
    from support import clean_env, run_traced, write_script

    script = write_script(tmp_path, _PROGRAM)
    env = clean_env(OTEL_SERVICE_NAME="cls", OTEL_TRACE_RUN_SPAN_CLASS=span_class, **receiver.env("http/protobuf"))
    proc = run_traced(["python", script], env=env, check=True)
    spans = {s.name: s for s in receiver.wait_for(count=3)}
    assert sorted(spans) == ["failing", "inner", "outer"]
    outer, inner, failing = spans["outer"], spans["inner"], spans["failing"]
    assert inner.parent_id == outer.span_id == failing.parent_id and inner.trace_id == outer.trace_id
    assert outer.attributes == {"a": 1, "b": "two"} and inner.attributes == {"n": 3}
    assert outer.events == [("ev", {"k": "v"})] and [e[0] for e in failing.events] == ["exception"]
    assert failing.status == "ERROR" and failing.status_message == "ValueError: no", failing.status
    expected = "class: _Span opentelemetry.sdk.trace" if span_class == "sdk" else "class: Span trace_run.agent.fastspan"
    assert expected in proc.stdout, proc.stdout
    if span_class == "tiny":  # a bad value: one line naming it and what is used instead
        lines = [line for line in proc.stderr.splitlines() if "OTEL_TRACE_RUN_SPAN_CLASS" in line]
        assert len(lines) == 1 and "tiny" in lines[0] and "trace-run" in lines[0], proc.stderr


class _TraceIds(IdGenerator):
    """Trace ids from a list (on both sides of a ratio's bound), span ids counting up."""

    def __init__(self, trace_ids):
        self._trace_ids = itertools.cycle(trace_ids)
        self._n = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._n)

    def generate_trace_id(self) -> int:
        return next(self._trace_ids)


class _OwnContext(SpanContext):
    """A program's own SpanContext subclass."""


_HALF = TraceIdRatioBased.get_bound_for_rate(0.5)
_IDS = [1, _HALF - 1, _HALF, _HALF + 1, (1 << 64) - 1, (1 << 64) + _HALF - 1, (1 << 127) + 5, (1 << 128) - 1]
_PARENTS = {
    "root": None,
    "invalid": trace.set_span_in_context(trace.INVALID_SPAN),
    "remote-sampled": trace.set_span_in_context(NonRecordingSpan(SpanContext(
        _HALF + 1, 7, True, TraceFlags(1), TraceState([("vendor", "x")])))),
    "remote-unsampled": trace.set_span_in_context(NonRecordingSpan(SpanContext(_HALF - 1, 7, True, TraceFlags(0)))),
    "local-sampled": trace.set_span_in_context(NonRecordingSpan(SpanContext(
        (1 << 100) + 3, 8, False, TraceFlags(1), TraceState([("k", "v")])))),
    "local-unsampled": trace.set_span_in_context(NonRecordingSpan(SpanContext(9, 8, False, TraceFlags(0)))),
    # a SpanContext subclass is read through its properties, not as the tuple
    "subclass-remote-sampled": trace.set_span_in_context(NonRecordingSpan(_OwnContext(
        _HALF + 1, 7, True, TraceFlags(1), TraceState([("vendor", "y")])))),
    "subclass-local-unsampled": trace.set_span_in_context(NonRecordingSpan(_OwnContext(9, 8, False, TraceFlags(0)))),
    "not-a-span": context_api.set_value(trace._SPAN_KEY, "not a span"),  # get_current_span's INVALID_SPAN
}


@pytest.mark.parametrize("sampler", [
    ALWAYS_ON, ALWAYS_OFF, StaticSampler(Decision.RECORD_ONLY), TraceIdRatioBased(0.5), TraceIdRatioBased(0.0),
    TraceIdRatioBased(1.0), ParentBased(ALWAYS_ON), ParentBased(ALWAYS_OFF), ParentBasedTraceIdRatio(0.5),
    ParentBased(TraceIdRatioBased(0.5), remote_parent_sampled=ALWAYS_OFF, remote_parent_not_sampled=ALWAYS_ON,
                local_parent_sampled=TraceIdRatioBased(0.5),
                local_parent_not_sampled=StaticSampler(Decision.RECORD_ONLY)),
], ids=["on", "off", "record-only", "ratio", "ratio-0", "ratio-1", "parent-on", "parent-off", "parent-ratio", "mixed"])
@pytest.mark.parametrize("plain_ids", [True, False], ids=["tuple-context", "constructed-context"])
def test_the_built_in_samplers_are_decided_without_calling_them_as_they_decide(sampler, plain_ids):
    """Tracer.start_span decides for the SDK's samplers from a plan (no should_sample call, and the span's
    context made as SpanContext.__new__ makes it): for every kind of parent and trace ids on both
    sides of a ratio's bound, the span and its context are the SDK tracer's."""
    def run(ours: bool) -> list:
        provider = TracerProvider(sampler=sampler, id_generator=_TraceIds(_IDS))
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("scope")
        if ours:
            tracer = fastspan.adopt(tracer)
            assert tracer._plan is not None
            tracer._plain_ids = plain_ids  # both ways of making the span's context
        seen = []
        for label, parent in _PARENTS.items():
            for _ in _IDS:
                span = tracer.start_span("s", context=parent, kind=SpanKind.SERVER, attributes={"a": 1})
                c = span.get_span_context()
                seen.append((label, isinstance(span, NonRecordingSpan), span.is_recording(), c.trace_id, c.span_id,
                             c.is_remote, int(c.trace_flags), c.trace_state.to_header(), c.is_valid,
                             type(c.trace_state),
                             dict(getattr(span, "attributes", None) or {})))
                span.end()
        return seen + [[_view(s) for s in exporter.get_finished_spans()]]

    sdk, ours = run(False), run(True)
    assert ours == sdk
    decided = {(row[0], row[2]) for row in sdk[:-1]}
    if isinstance(sampler, TraceIdRatioBased) and sampler.rate == 0.5:
        assert ("root", True) in decided and ("root", False) in decided  # the ids straddle the bound


def test_other_samplers_are_asked_as_always():
    assert fastspan._sampling_plan(RateLimitingSampler(10)) is None
    assert fastspan._sampling_plan(_ReadsAttributes()) is None
    assert fastspan._sampling_plan(ParentBased(ALWAYS_ON, local_parent_sampled=_ReadsAttributes())) is None
    assert fastspan._sampling_plan(ParentBasedTraceIdRatio(0.25)) == (TraceIdRatioBased.get_bound_for_rate(0.25),) + (
        Decision.RECORD_AND_SAMPLE, Decision.DROP, Decision.RECORD_AND_SAMPLE, Decision.DROP)


class _Ending(SimpleSpanProcessor):
    def __init__(self, exporter):
        super().__init__(exporter)
        self.ending = []

    def _on_ending(self, span):
        self.ending.append(span.name)


def test_processors_that_do_nothing_on_start_are_not_called_and_ones_added_later_are():
    """The provider's processors are called as the SDK calls them, though a call to processors that do
    nothing then is left out: one added while a span is open gets that span's end (as in the SDK), one
    with its own on_start or _on_ending gets those calls."""
    def scenario(ours: bool) -> tuple:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(id_generator=_Ids())
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("scope")
        if ours:
            tracer = fastspan.adopt(tracer)
        first = tracer.start_span("first")
        if ours:
            multi = provider._active_span_processor
            route = fastspan._route(multi)
            assert route[1:3] == (False, False) and route[3] == multi._span_processors[0].on_end
        recorder, ending = _Recorder(InMemorySpanExporter()), _Ending(InMemorySpanExporter())
        provider.add_span_processor(recorder)
        second = tracer.start_span("second")
        first.end()
        provider.add_span_processor(ending)
        second.end()
        tracer.start_span("third").end()
        return ([s.name for s in exporter.get_finished_spans()], [(n, r) for n, r, _ in recorder.started],
                recorder.ended, getattr(ending, "ending", None) if fastspan._HAS_ON_ENDING else None,
                [s.name for s in ending.span_exporter.get_finished_spans()])

    sdk, ours = scenario(False), scenario(True)
    assert ours == sdk
    assert sdk[0] == ["first", "second", "third"] and sdk[1] == [("second", True), ("third", True)]
    assert sdk[2] == ["first", "second", "third"] and sdk[4] == ["second", "third"]
    assert sdk[3] == (["second", "third"] if fastspan._HAS_ON_ENDING else None)


def test_does_nothing_tells_an_empty_body_from_a_real_one():
    class P(SimpleSpanProcessor):
        def on_start(self, span, parent_context=None):
            self.started = True

    assert fastspan.does_nothing(SimpleSpanProcessor.on_start)
    assert not fastspan.does_nothing(P.on_start) and not fastspan.does_nothing(SimpleSpanProcessor.on_end)


@pytest.mark.parametrize("attributes, plain", [
    ({"a": "x", "b": 1, "c": 2.5, "d": True}, True), ({}, True), ({1: "x"}, False), ({"": 1}, False),
    ({"a": None}, False), ({"a": [1]}, False), ({"a": b"x"}, False), ({"a": "x" * 5}, True),
    ({"a": "x" * 6}, False), ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, False), ({"a": decimal.Decimal(1)}, False),
])
def test_attributes_taken_as_they_are_only_where_the_cleaning_would_keep_them(attributes, plain):
    maker = fastspan._AttributeMaker(4, 5)
    assert maker.fast and maker.plain(attributes) is plain
    assert fastspan._AttributeMaker(None, None).plain({"a": "x" * 1000, "b": False}) is True
    for maxlen, max_value_len in ((4, 5), (None, None), (4, None), (None, 5)):  # make: the constructor's result
        maker = fastspan._AttributeMaker(maxlen, max_value_len)
        made = maker.make(attributes)
        real = BoundedAttributes(maxlen, attributes, immutable=False, max_value_len=max_value_len)
        assert (list(made.items()), made.dropped, made.maxlen, made.max_value_len, made._immutable) == (
            list(real.items()), real.dropped, real.maxlen, real.max_value_len, real._immutable)
        # taken as they are or cleaned by the constructor: the slotted subclass
        assert isinstance(made, BoundedAttributes) and type(made) is fastspan.Attributes


def test_ids_of_the_sdks_random_generator_are_drawn_as_it_draws_them(monkeypatch):
    """With the SDK's RandomIdGenerator, `start_span` calls random.getrandbits itself (a patched one too), redraws
    a zero id as the generator does, and sets the random-trace-id flag where this SDK has it."""
    import random

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracer = fastspan.adopt(provider.get_tracer("ids"))
    assert tracer._random_ids
    drawn = iter([0, 7, 0, 9])  # each first draw is 0 (an invalid id): drawn again
    monkeypatch.setattr(random, "getrandbits", lambda bits: next(drawn))
    span = tracer.start_span("s")
    context = span.get_span_context()
    assert (context.trace_id, context.span_id) == (7, 9) and context.is_valid
    assert context.trace_flags.sampled
    if fastspan._RANDOM_FLAG is not None:
        assert context.trace_flags.random_trace_id and type(context.trace_flags) is TraceFlags
    monkeypatch.undo()
    assert not fastspan._sdk_random_ids(_Ids()) and fastspan._sdk_random_ids(provider.id_generator)


def test_the_programs_own_spans_follow_a_provider_it_sets_later():
    """A FollowingTracer's start_as_current_span is trace-run's context manager around it while the agent's
    provider is in use; a function decorated then makes its spans with the program's provider after the move."""
    from trace_run.agent.program_provider import FollowingTracer, _Following

    ours, ours_out, _ = _pipeline(True)
    following = FollowingTracer(ours, "scope")
    manager = following.start_as_current_span("with", kind=SpanKind.CLIENT, attributes={"a": 1})
    assert type(manager) is fastspan.CurrentSpan
    with manager as span:
        assert trace.get_current_span() is span

    @following.start_as_current_span("decorated")
    def work():
        return trace.get_current_span()

    assert work().name == "decorated"
    program, program_out, _ = _pipeline(False)
    following.follow(program)
    assert type(following.start_as_current_span("after")) is _Following
    assert isinstance(work(), SdkSpan)
    assert [s.name for s in ours_out.get_finished_spans()] == ["with", "decorated"]
    assert [s.name for s in program_out.get_finished_spans()] == ["decorated"]
    assert dict(ours_out.get_finished_spans()[0].attributes) == {"a": 1}


@pytest.mark.parametrize("make_sampler, early", [
    (lambda: ALWAYS_ON, True), (lambda: ALWAYS_OFF, True), (lambda: TraceIdRatioBased(0.3), True),
    (lambda: ParentBasedTraceIdRatio(0.3), True), (lambda: ParentBased(ALWAYS_OFF), True),
    (lambda: StaticSampler(Decision.RECORD_ONLY), False), (lambda: RateLimitingSampler(5), False),
], ids=["on", "off", "ratio", "parent-ratio", "parent-off", "record-only", "rate-limit"])
@pytest.mark.parametrize("enabled", [True, False] if fastspan._HAS_IS_ENABLED else [True],  # (1.33-1.38: no switch)
                         ids=["enabled", "disabled"][: 2 if fastspan._HAS_IS_ENABLED else 1])
def test_roots_and_children_decided_early_are_the_sdks_decisions_with_the_same_random_draws(make_sampler, early,
                                                                                           enabled):
    """With the SDK's random ids, a root span is decided in two steps (`_root_bound`), and a child of a sampled
    span of ours in one (`_child_sampled`): each span's ids, flags and recording are the SDK tracer's for the
    same random draws."""
    import random

    def run(ours: bool) -> list:
        provider = TracerProvider(sampler=make_sampler())  # (a rate limiter's tokens are its own)
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("scope")
        if ours:
            tracer = fastspan.adopt(tracer)
            # (where the SDK's own metrics are on, as in 1.39-1.41, every span takes the whole path: they count it)
            early_here = early and (tracer._metrics_off or tracer._metrics is None)
            assert (tracer._root_bound is not None) is early_here
            assert tracer._child_sampled is (early_here and make_sampler() is not ALWAYS_OFF
                                             and not isinstance(make_sampler(), TraceIdRatioBased))
        if not enabled:
            tracer._tracer_config = type(tracer._tracer_config)(is_enabled=False)
        random.seed(1234)
        seen = []
        for _ in range(60):
            root = tracer.start_span("root", kind=SpanKind.SERVER)
            child = tracer.start_span("child", context=trace.set_span_in_context(root))
            for span in (root, child):
                c = span.get_span_context()
                seen.append((type(span) is NonRecordingSpan, span.is_recording(), c.trace_id, c.span_id,
                             int(c.trace_flags), c.is_valid, c.is_remote))
            child.end()
            root.end()
        return seen + [[_view(s) for s in exporter.get_finished_spans()]]

    sdk, ours = run(False), run(True)
    assert ours == sdk
    recorded = {row[1] for row in sdk[:-1:2]}
    sampler = make_sampler()
    if isinstance(sampler, (TraceIdRatioBased, ParentBasedTraceIdRatio)):
        assert recorded == ({True, False} if enabled else {False})  # both sides of the bound were drawn
