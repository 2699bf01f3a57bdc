"""The native span encoder (agent/_otlp_native.c) gives the Python path's bytes, which are the official
encoder's; what it declines (None) the Python path encodes; OTEL_TRACE_RUN_NATIVE_ENCODER=false keeps it out.
"""

from __future__ import annotations

import collections
import importlib
import math
import shutil
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from test_otlp_encoder import _assert_same, _provider
from trace_run.agent import fastspan, otlp_encoder
from trace_run.agent.otlp_encoder import Encoder
from trace_run.core import config

# Skipped only where nothing could have built it: with a compiler present, a build that failed is an
# import error here (and test_the_extension_is_built_where_a_c_compiler_is fails), never a quiet skip.
if otlp_encoder._NATIVE_SPAN is None and not (shutil.which("cc") or shutil.which("gcc")):
    pytest.skip("no C compiler: the extension is optional", allow_module_level=True)
native = importlib.import_module("trace_run.agent._otlp_native")

_INT64 = (-(1 << 63), (1 << 63) - 1)


def test_the_extension_is_built_where_a_c_compiler_is():
    """A build that failed silently (optional = true) must not pass unnoticed where it could have built."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: the extension is optional")
    import trace_run.agent._otlp_native as module

    assert otlp_encoder._NATIVE_SPAN is module.encode_span
    assert Encoder(pause=False)._native is module.encode_span


def _spans(specs, limits=None):
    """Spans of trace-run's class, each as a spec says."""
    provider, exporter = _provider(span_class="trace-run", limits=limits)
    tracer = provider.get_tracer("native", "1.0")
    local = tracer.start_span("local parent")
    for name, kind, attrs, parent, status, extra in specs:
        if parent == "local":
            context = trace.set_span_in_context(local)
        elif parent is not None:  # remote: (trace flags, trace state)
            flags, state = parent
            ctx = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                              trace_flags=TraceFlags(flags), trace_state=TraceState(state))
            context = trace.set_span_in_context(NonRecordingSpan(ctx))
        else:
            context = None
        links = [Link(local.get_span_context(), {"l": 1})] if extra == "link" else None
        with tracer.start_as_current_span(name, kind=kind, attributes=attrs, context=context, links=links) as span:
            if extra == "event":
                span.add_event("e", {"k": "v"})
            if status is not None:
                span.set_status(Status(status[0], status[1]))
    local.end()
    spans = list(exporter.get_finished_spans())
    assert all(type(s) is fastspan.Span for s in spans)
    assert otlp_encoder._own_span_type() is fastspan.Span  # what Encoder.span asks first (configures the extension)
    return spans


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _fields(span) -> dict:
    """A span's fields by name (its slots): what the native encoder also takes, and tests vary one by one."""
    return {name: getattr(span, name) for name in fastspan._SLOTS}


def _as_span(fields: dict):
    """An object with `fields` as its attributes: what the Python path reads of a span of trace-run's."""
    return types.SimpleNamespace(**fields)


def _common(value) -> bool:
    """A value the native encoder takes: what the Python path encodes, not what it skips."""
    if isinstance(value, tuple):
        return all(_common(v) for v in value)
    if isinstance(value, str):
        return _encodable(value)
    if type(value) is int:
        return _INT64[0] <= value <= _INT64[1]
    return True


def _check(spans, declined=None):
    """Span by span: native == Python path == property path; the batch: the official bytes."""
    python, ours = Encoder(pause=False, native=False), Encoder(pause=False, native=True)
    took = 0
    for span in spans:
        fields = _fields(span)
        expected = python._own_span(_as_span(fields))
        assert expected == python._any_span(span)
        got = native.encode_span(fields)
        assert native.encode_span(span) == got  # from its slots, as from the fields by name
        if declined is not None and not declined(span):
            assert got is not None, span.name
        if got is not None:
            took += 1
            assert got == expected, span.name
        assert ours.span(span) == expected
    encoded = [ours.preencode(s) for s in spans]
    assert all(type(e) is otlp_encoder.Encoded and e == (e.data, s.resource, s.instrumentation_scope)
               for e, s in zip(encoded, spans))
    assert [e.data for e in encoded] == [python.preencode(s).data for s in spans]
    assert [native.preencode(s) is not None for s in spans] == [native.encode_span(_fields(s)) is not None
                                                                for s in spans]
    assert ours.encode(encoded) == official_encode(spans).SerializePartialToString()
    _assert_same(spans)
    return took


_text = st.text(max_size=12) | st.sampled_from(["", "zażółć ✓ 𝄞", "\ud800", "a\udfff"])
# keys without lone surrogates: the Python path logs a skipped attribute's key, and a captured log holding
# one cannot cross to pytest-xdist's controller (test_what_it_declines_the_python_path_encodes has one)
_key = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(["", "zażółć ✓ 𝄞"])
_scalar = st.one_of(
    _text,
    st.booleans(),
    st.integers(min_value=-(1 << 64), max_value=1 << 64),
    st.sampled_from([0, -1, 127, 128, (1 << 63) - 1, -(1 << 63), 1 << 63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, math.nan, math.inf, -math.inf, 5e-324]),
)
_value = _scalar | st.lists(st.text(max_size=6), max_size=4).map(tuple) | st.lists(
    st.integers(min_value=-(1 << 64), max_value=1 << 64), max_size=4).map(tuple) | st.lists(
    st.floats(), max_size=4).map(tuple) | st.lists(st.booleans(), max_size=3).map(tuple)
_spec = st.tuples(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.sampled_from(list(SpanKind)),
    st.dictionaries(_key, _value, max_size=7),
    st.one_of(st.none(), st.just("local"),
              st.tuples(st.sampled_from([0, 1, 3, 0xFF]), st.sampled_from([[], [("vendor", "v1")]]))),
    st.one_of(st.none(), st.tuples(st.sampled_from(list(StatusCode)),
                                   st.sampled_from([None, "", "declined", "zażółć"]))),
    st.sampled_from([None, None, None, "event", "link"]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(_spec, min_size=1, max_size=6), limit=st.sampled_from([128, 3]))
def test_native_bytes_are_the_python_paths_and_the_official_ones(specs, limit):
    spans = _spans(specs, SpanLimits(max_span_attributes=limit))

    def declined(span):
        state = span.context.trace_state
        return bool(span.events or span.links or state or not all(
            _encodable(k) and _common(v) for k, v in span.attributes.items()))

    _check(spans, declined)


def test_the_common_case_is_taken_and_edge_values_encode_alike():
    specs = [
        ("SELECT test.users", SpanKind.CLIENT, {"db.system.name": "postgresql", "server.port": 5432}, None, None,
         None),
        ("", SpanKind.SERVER, {"": "", "e": (), "neg": -1, "min": _INT64[0], "max": _INT64[1], "z": -0.0,
                               "nan": math.nan, "inf": -math.inf, "t": True, "f": False, "u": "zażółć ✓ 𝄞",
                               "l": ["a", ""], "fl": (0.5, -0.0), "b": (True,), "long": "x" * 300}, "local",
         (StatusCode.ERROR, "payment declined ✓"), None),
        ("r", SpanKind.CONSUMER, {"k": 1}, (1, []), (StatusCode.OK, None), None),
        ("r", SpanKind.PRODUCER, {}, (0xFF, []), (StatusCode.UNSET, "ignored"), None),
        ("big", SpanKind.INTERNAL, {str(i): i for i in range(200)}, None, (StatusCode.ERROR, ""), None),
    ]
    spans = _spans(specs, SpanLimits(max_span_attributes=150))
    spans[0]._attributes._dict.update({"": "an empty key (which the SDK drops)", "é": ""})
    # some SDKs switch to an OrderedDict once the limit is reached: read in its order, not its dict's
    spans[2]._attributes._dict = ordered = collections.OrderedDict([("x", 1), ("y", "z"), ("w", (1.5,))])
    ordered.move_to_end("x")
    assert _check(spans, lambda span: False) == len(spans)  # every one in C
    assert spans[-2].dropped_attributes == 50


def test_what_it_declines_the_python_path_encodes(monkeypatch):
    monkeypatch.setattr(otlp_encoder.log, "debug", lambda msg: None)  # its key (see _key) kept out of the report
    specs = [("state", SpanKind.SERVER, {}, (1, [("vendor", "v1")]), None, None),
             ("event", SpanKind.INTERNAL, {}, None, None, "event"),
             ("link", SpanKind.INTERNAL, {}, None, None, "link"),
             ("surrogate value", SpanKind.INTERNAL, {"k": "\ud800", "ok": 1}, None, None, None),
             ("huge", SpanKind.INTERNAL, {"n": 1 << 63}, None, None, None),
             ("huge in a tuple", SpanKind.INTERNAL, {"n": (1, -(1 << 63) - 1)}, None, None, None)]
    spans = _spans(specs)
    assert _check(spans) == 1  # the local parent alone
    for span in spans[:-1]:
        assert native.encode_span(_fields(span)) is None, span.name
    # a key with a lone surrogate: not given to the official encoder, which logs it raw with its traceback
    # (a captured log that cannot cross to pytest-xdist's controller); the Python path skips it
    (span,) = _spans([("surrogate key", SpanKind.INTERNAL, {"\udfff": 1, "ok": 1}, None, None, None)])[:1]
    assert native.encode_span(_fields(span)) is None
    python = Encoder(pause=False, native=False)
    assert Encoder(pause=False).span(span) == python._own_span(_as_span(_fields(span))) == python._any_span(span)
    assert [kv.key for kv in PbSpan.FromString(python._own_span(_as_span(_fields(span)))).attributes] == ["ok"]


def test_unexpected_fields_are_declined_never_misencoded():
    span = _spans([("s", SpanKind.CLIENT, {"a": 1}, None, None, None)])[0]
    fields = dict(_fields(span))
    python = Encoder(pause=False, native=False)
    assert native.encode_span(fields) == python._own_span(_as_span(fields))

    class Text(str):
        pass

    class MyStatus(Status):
        pass

    for key, value in (("_name", Text("s")), ("_kind", 3), ("_start_time", 1.5), ("_end_time", -1),
                       ("_start_time", True), ("_status", MyStatus(StatusCode.OK)), ("_events", [None]),
                       ("_attributes", {"a": 1}),
                       ("_parent", (1, 2)), ("_context", tuple(span.context)[:5]),
                       ("_context", (1 << 128,) + tuple(span.context)[1:]),
                       ("_context", (-1,) + tuple(span.context)[1:]),
                       ("_context", tuple(span.context)[:1] + (1 << 64,) + tuple(span.context)[2:])):
        assert native.encode_span(dict(fields, **{key: value})) is None, key
    missing = dict(fields)
    del missing["_links"]
    assert native.encode_span(missing) is None
    assert native.encode_span(["not", "a", "dict"]) is None
    span._attributes._dict["obj"] = object()  # set behind the SDK's back: declined, not guessed
    assert native.encode_span(_fields(span)) is None


def test_ids_at_their_bounds_encode_as_the_python_path():
    span = _spans([("s", SpanKind.CLIENT, {"a": 1}, None, None, None)])[0]
    ctx = tuple(span.context)
    python = Encoder(pause=False, native=False)
    for trace_id, span_id in ((1, 1), ((1 << 128) - 1, (1 << 64) - 1), (1 << 127, 1 << 63), (0, 0),
                              (5, (1 << 63) - 1), (5, 1 << 62), (5, 1 << 30), (5, (1 << 60) + 12345)):
        fields = dict(_fields(span), _context=tuple.__new__(type(span.context), (trace_id, span_id) + ctx[2:]))
        assert native.encode_span(fields) == python._own_span(_as_span(fields))
    for start in (0, 1, (1 << 30) - 1, 1 << 30, (1 << 60) - 1, 1 << 63, (1 << 64) - 1):
        fields = dict(_fields(span), _start_time=start)
        assert native.encode_span(fields) == python._own_span(_as_span(fields)), start
    for out_of_range in (1 << 64, (1 << 64) + 1, 1 << 90, -1, -(1 << 63), -(1 << 64)):
        assert native.encode_span(dict(_fields(span), _start_time=out_of_range)) is None, out_of_range
        bad = tuple.__new__(type(span.context), (5, out_of_range) + ctx[2:])
        assert native.encode_span(dict(_fields(span), _context=bad)) is None, out_of_range


def test_an_exception_in_the_native_call_falls_back_to_python(monkeypatch):
    span = _spans([("s", SpanKind.CLIENT, {"a": 1}, None, None, None)])[0]
    expected = Encoder(pause=False, native=False).span(span)

    def broken(fields):
        raise RuntimeError("bug")

    monkeypatch.setattr(otlp_encoder, "_NATIVE_SPAN", broken)
    monkeypatch.setattr(otlp_encoder, "_NATIVE_PREENCODE", broken)
    encoder = Encoder(pause=False, native=True)
    assert encoder._native is broken and encoder._native_preencode is broken
    assert encoder.span(span) == expected
    assert encoder.preencode(span).data == expected


@pytest.mark.parametrize("raw, used", [("", True), ("true", True), ("false", False), ("0", False),
                                       ("maybe", True)])
def test_the_switch_keeps_the_native_encoder_out(monkeypatch, raw, used):
    span = _spans([("s", SpanKind.CLIENT, {"a": 1}, None, None, None)])[0]
    calls = []

    def counting(fields):
        calls.append(fields)
        return native.encode_span(fields)

    def counting_preencode(span):
        calls.append(span)
        return native.preencode(span)

    monkeypatch.setattr(otlp_encoder, "_NATIVE_SPAN", counting)
    monkeypatch.setattr(otlp_encoder, "_NATIVE_PREENCODE", counting_preencode)
    monkeypatch.setenv("OTEL_TRACE_RUN_NATIVE_ENCODER", raw)
    config.reset()
    try:
        encoder = Encoder(pause=False)  # as configured
        data = encoder.preencode(span).data + encoder.span(span)
        warned = [w for w in config.WARNINGS if "OTEL_TRACE_RUN_NATIVE_ENCODER" in w]
    finally:
        monkeypatch.delenv("OTEL_TRACE_RUN_NATIVE_ENCODER")
        config.reset()
    assert data == Encoder(pause=False, native=False).span(span) * 2
    assert (encoder._native is counting) is used and (encoder._native_preencode is counting_preencode) is used
    assert calls == ([span, span] if used else [])
    assert bool(warned) is (raw == "maybe")  # a bad value: the default, with the registry's warning


def test_encoding_a_million_spans_keeps_memory_flat():
    """Reference counts: no object or buffer kept per call (RSS read before and after)."""
    span = _spans([("SELECT test.users", SpanKind.CLIENT, {"db.query.text": "SELECT ? " * 200, "n": 1,
                                                          "f": 0.5, "l": ("a", "b")}, "local", None, None)])[0]
    fields = _fields(span)
    assert len(native.encode_span(fields)) > 1024  # past the stack buffer: the heap one is freed too

    def rss_kb():
        with open("/proc/self/status") as f:
            return int([line for line in f if line.startswith("VmRSS")][0].split()[1])

    for _ in range(20000):
        native.encode_span(fields)
    before = rss_kb()
    for _ in range(200000):
        native.encode_span(fields)
    assert rss_kb() - before < 2048


def test_the_encoded_spans_it_makes_are_not_walked_by_the_garbage_collector():
    """A queued span waits long enough to age through every generation: the C encoder's are untracked (they
    cannot be in a cycle), and so are the Python path's (a span the C encoder declines: an event); what they
    hold is what the Python path's hold, and is freed with them. Untracked, a queued span is also not counted
    by a program that counts what the collector tracks (psycopg's leak tests: tests/test_export_gc_quiet.py)."""
    import gc
    import weakref

    span, declined = _spans([("s", SpanKind.CLIENT, {"a": 1}, None, None, None),
                             ("event", SpanKind.INTERNAL, {}, None, None, "event")])[:2]
    encoded = native.preencode(span)
    python = Encoder(pause=False, native=False).preencode(span)
    assert type(encoded) is otlp_encoder.Encoded and not gc.is_tracked(encoded) and not gc.is_tracked(python)
    assert tuple(encoded) == tuple(python)
    assert native.preencode(declined) is None
    for encoder in (Encoder(pause=False), Encoder(pause=False, native=False)):
        queued = encoder.preencode(declined)
        assert type(queued) is otlp_encoder.Encoded and not gc.is_tracked(queued)
        gc.collect()
        assert not gc.is_tracked(queued)

    class Scope:  # a scope that can be watched: freed when the last span holding it is
        pass

    scope = Scope()
    span._instrumentation_scope = scope
    watch = weakref.ref(scope)
    held = [native.preencode(span) for _ in range(3)]
    span._instrumentation_scope = None  # (the span itself is kept by the test's exporter)
    del scope
    gc.collect()
    assert watch() is not None and all(e[2] is watch() for e in held)
    del held
    assert watch() is None


@pytest.mark.parametrize("name, value", [("dropped", 3), ("_dict", {"b": 2}), ("_status_code", StatusCode.OK),
                                         ("_description", "from the property")])
def test_fields_read_from_the_instance_dict_follow_a_property_added_to_the_class(name, value, monkeypatch):
    """The C reads Status's fields by getattr: a data descriptor added to the class since is what getattr (and the
    Python path) reads, and so does the C. A span's attributes keep _dict and dropped in the slots of their own
    class (fastspan.Attributes): a property added to the SDK's BoundedAttributes changes what neither reads."""
    from opentelemetry.attributes import BoundedAttributes

    span = _spans([("s", SpanKind.CLIENT, {"a": 1}, None, (StatusCode.ERROR, "bad"), None)])[0]
    python = Encoder(pause=False, native=False)
    before = native.encode_span(_fields(span))  # (the guards armed for these types)
    assert before == python._own_span(_as_span(_fields(span)))
    owner = BoundedAttributes if name in ("dropped", "_dict") else Status
    monkeypatch.setattr(owner, name, property(lambda self: value, lambda self, v: None), raising=False)
    got = native.encode_span(_fields(span))
    assert got == python._own_span(_as_span(_fields(span)))
    assert (got == before) is (owner is BoundedAttributes)
    monkeypatch.undo()
    assert native.encode_span(_fields(span)) == before


def test_the_span_slots_read_after_its_class_changed_are_the_same(monkeypatch):
    """preencode reads the span's fields from its slots, at the offsets found when it was configured: a class
    changed since (a class attribute added) keeps its instances' layout, and the bytes are the same."""
    span = _spans([("s", SpanKind.CLIENT, {"a": 1}, None, None, None)])[0]
    before = native.preencode(span).data
    assert before == native.encode_span(_fields(span))
    monkeypatch.setattr(fastspan.Span, "_trace_run_test_marker", 1, raising=False)
    assert native.preencode(span).data == before
    monkeypatch.undo()
    assert native.preencode(span).data == before


# -- Encoder.encode's loop over a batch: `frame` in C, the Python loop for the rest ----------------------------------


def _mixed_batch(n, seed=0):
    """n spans of trace-run's class across resources (two equal but distinct objects, one with a schema_url) and
    scopes (with and without a schema_url and attributes, and None), in a shuffled order with runs."""
    import random

    from opentelemetry.sdk.resources import Resource

    rng = random.Random(seed)
    providers = [_provider(resource, span_class="trace-run") for resource in (
        Resource({"service.name": "a", "n": 1}),
        Resource({"service.name": "a", "n": 1}),  # equal to the first, another object: one group
        Resource({"service.name": "b"}, schema_url="https://example.com/resource/1.0"))]
    tracers = [(p, e, [p.get_tracer("scope.s", "1.0", schema_url="https://opentelemetry.io/schemas/1.26.0",
                                    attributes={"scope.attr": "x"}),
                       p.get_tracer("scope.plain"), p.get_tracer("scope.none")]) for p, e in providers]
    scopeless = set()
    for i in range(n):
        _, _, tracer_list = tracers[rng.randrange(3)]
        tracer = tracer_list[rng.randrange(3)]
        attrs = {"i": i, "v": "x" * rng.choice((0, 10, 200, 17000))}  # 1-, 2- and 3-byte span lengths
        with tracer.start_as_current_span("s%d" % (i % 5), kind=SpanKind.CLIENT, attributes=attrs) as span:
            if span.instrumentation_scope.name == "scope.none":
                scopeless.add(span)
    spans = sorted(sum((list(e.get_finished_spans()) for _, e, _ in tracers), []), key=lambda s: s.start_time)
    for span in spans:
        if span in scopeless:
            span._instrumentation_scope = None
    assert all(type(s) is fastspan.Span for s in spans) and otlp_encoder._own_span_type() is fastspan.Span
    return spans


def _counting_frame(monkeypatch):
    """The C and the Python loop, each counted: frame's calls, and the items the Python loop framed."""
    calls, python_items = [], []

    def frame(spans, start, stop, entries):
        calls.append((start, stop))
        return native.frame(spans, start, stop, entries)

    original = Encoder._frame_python

    def frame_python(self, spans, groups, entries, pause):
        python_items.extend(spans)
        return original(self, spans, groups, entries, pause)

    monkeypatch.setattr(otlp_encoder, "_NATIVE_FRAME", frame)
    monkeypatch.setattr(Encoder, "_frame_python", frame_python)
    return calls, python_items


def _left_to_python(items):
    """What the C leaves to the Python loop: items not exactly Encoded, and the first of each (resource, scope)."""
    seen, out = set(), []
    for item in items:
        pair = (id(item[1]), id(item[2])) if type(item) is otlp_encoder.Encoded else (
            id(item.resource), id(item.instrumentation_scope))
        if type(item) is not otlp_encoder.Encoded or pair not in seen:
            out.append(item)
        seen.add(pair)
    return out


@pytest.mark.parametrize("n", [0, 1, 2, otlp_encoder.SLICE - 1, otlp_encoder.SLICE, otlp_encoder.SLICE + 1,
                               3 * otlp_encoder.SLICE + 5])
@pytest.mark.parametrize("mix", ["encoded", "interleaved"])
def test_framing_in_c_gives_the_python_loops_and_the_official_bytes(monkeypatch, n, mix):
    pauses = []
    monkeypatch.setattr(otlp_encoder.time, "sleep", pauses.append)
    monkeypatch.setattr(otlp_encoder, "_skip_until", 0.0)
    monkeypatch.setattr(otlp_encoder, "SKIP_S", 0.0)  # (a slow hand-over on a busy machine skips none here)
    spans = _mixed_batch(n, seed=n)
    expected = official_encode(spans).SerializePartialToString()
    early = Encoder(pause=False)
    items = [early.preencode(s) for s in spans]
    if mix == "interleaved":  # every fifth as the span itself (not encoded as it ended)
        items = [s if i % 5 == 2 else e for i, (s, e) in enumerate(zip(spans, items))]
    python = Encoder(native=False).encode(items)
    python_pauses = list(pauses)
    del pauses[:]
    calls, python_items = _counting_frame(monkeypatch)
    ours = Encoder(native=True)
    assert ours._frame is not None
    got = ours.encode(items)
    assert got == python == expected
    slices = -(-n // otlp_encoder.SLICE)
    assert pauses == python_pauses == [otlp_encoder.PAUSE_S] * (slices if n > otlp_encoder.SLICE else 0)
    # each slice in C, the Python loop given only what the C was not written for, one item at a time; after
    # each such item the C goes on with the rest of its slice (a call more, unless the item ended the slice)
    assert python_items == _left_to_python(items)
    positions = [next(j for j, item in enumerate(items) if item is one) for one in python_items]
    resumed = [j for j in positions if j % otlp_encoder.SLICE != otlp_encoder.SLICE - 1 and j != n - 1]
    assert len(calls) == slices + len(resumed)
    assert all(stop - start <= otlp_encoder.SLICE and (stop == n or stop % otlp_encoder.SLICE == 0)
               for start, stop in calls)
    if mix == "encoded" and n > 20:
        assert len(python_items) <= 9  # 3 resources (2 equal) x 3 scopes: the C framed all the others
    again = ours.encode(items)  # the encoder's caches warm: the same bytes
    assert again == expected


def test_an_item_that_is_not_exactly_encoded_goes_to_the_python_loop(monkeypatch):
    """A tuple subclass of a batch is read as a span unless it is exactly an Encoded: the C must not read its
    items as (data, resource, scope)."""
    spans = _mixed_batch(6, seed=3)
    expected = official_encode(spans).SerializePartialToString()
    early = Encoder(pause=False)
    items = [early.preencode(s) for s in spans]

    class Wrapped(tuple):  # a span's stand-in, a tuple that looks like an Encoded with other bytes
        def __getattr__(self, name):
            return getattr(self.__dict__["span"], name)

    wrapped = Wrapped((b"\x0a\x00not a span", spans[3].resource, spans[3].instrumentation_scope))
    wrapped.__dict__["span"] = spans[3]
    items[3] = wrapped
    calls, python_items = _counting_frame(monkeypatch)
    assert Encoder(pause=False).encode(items) == expected == Encoder(pause=False, native=False).encode(items)
    assert wrapped in python_items and calls

    class SubEncoded(otlp_encoder.Encoded):  # a subclass: not exactly an Encoded, read as a span (and fails)
        __slots__ = ()

    items[3] = SubEncoded(*early.preencode(spans[3]))
    for native_on in (True, False):
        with pytest.raises(AttributeError):
            Encoder(pause=False, native=native_on).encode(items)
    assert native.frame(items, 0, 6, {}) == 0  # a new group: nothing done
    assert native.frame(items, 3, 6, {}) == 3


def test_frame_declines_what_it_was_not_written_for():
    spans = _mixed_batch(3, seed=5)
    encoded = [Encoder(pause=False).preencode(s) for s in spans]
    item = encoded[0]
    key = (id(item[1]), id(item[2]))
    entries = {key: (None, bytearray())}
    assert native.frame([item], 0, 1, entries) == 1 and entries[key][1] == b"\x12" + bytes(
        otlp_encoder._varint(len(item[0]))) + item[0]
    assert native.frame([item], 0, 1, {key: (None, [])}) == 0  # not a bytearray: the Python loop's business
    assert native.frame([item], 0, 1, {key: [None, bytearray()]}) == 0
    assert native.frame(iter([item]), 0, 1, entries) == 0  # not a list or tuple
    assert native.frame([spans[0]], 0, 1, entries) == 0  # a span, not encoded
    odd = otlp_encoder._tuple_new(otlp_encoder.Encoded, (bytearray(b"x"), item[1], item[2]))  # data not bytes
    assert native.frame([odd], 0, 1, entries) == 0
    assert native.frame((item, item), 1, 2, entries) == 2 and native.frame((item,), 0, 0, entries) == 0
    with pytest.raises(TypeError):
        native.frame([item], 0)


@pytest.mark.parametrize("raw, used", [("", True), ("false", False), ("0", False)])
def test_the_switch_and_a_missing_extension_keep_the_python_loop(monkeypatch, raw, used):
    spans = _mixed_batch(2 * otlp_encoder.SLICE + 3, seed=7)
    expected = official_encode(spans).SerializePartialToString()
    items = [Encoder(pause=False).preencode(s) for s in spans]
    calls, python_items = _counting_frame(monkeypatch)
    monkeypatch.setenv("OTEL_TRACE_RUN_NATIVE_ENCODER", raw)
    config.reset()
    try:
        encoder = Encoder(pause=False)  # as configured
    finally:
        monkeypatch.delenv("OTEL_TRACE_RUN_NATIVE_ENCODER")
        config.reset()
    assert encoder.encode(items) == expected
    assert bool(calls) is used and len(python_items) == (len(_left_to_python(items)) if used else len(items))
    monkeypatch.setattr(otlp_encoder, "_NATIVE_FRAME", None)  # an extension without it (or none)
    del calls[:], python_items[:]
    without = Encoder(pause=False, native=True)
    assert without._frame is None and without.encode(items) == expected
    assert not calls and python_items == items


def test_an_exception_in_frame_fails_the_batch_as_one(monkeypatch, capfd):
    items = [Encoder(pause=False).preencode(s) for s in _mixed_batch(3, seed=9)]

    def broken(spans, start, stop, entries):
        raise MemoryError

    monkeypatch.setattr(otlp_encoder, "_NATIVE_FRAME", broken)
    assert otlp_encoder.encode_request(Encoder(pause=False), items, 1 << 20) is None
