"""The native start_span / set_attribute (agent/_span_native.c) make the objects the Python methods make: spans
made both ways (the same seed, so the same ids) compared field by field; what the C declines or fails at runs
the Python methods; OTEL_TRACE_RUN_NATIVE_SPAN=false keeps it out.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from support import NamedLock, replace_acquire
from trace_run.agent import fastspan
from trace_run.core import config

_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
# Skipped only where nothing could have built it (a failed build with a compiler present fails the first test)
if fastspan._NATIVE is None and not _COMPILER:
    pytest.skip("no C compiler: the extension is optional", allow_module_level=True)
native = importlib.import_module("trace_run.agent._span_native")


def test_the_extension_is_built_and_used_where_a_c_compiler_is():
    if not _COMPILER:
        pytest.skip("no C compiler: the extension is optional")
    assert fastspan._NATIVE is native
    assert fastspan.use_native(True) is True
    assert fastspan.Tracer.start_span is not fastspan._python_start_span
    assert fastspan.Span.set_attribute is not fastspan._python_set_attribute
    assert fastspan.Span.end is not fastspan._python_end
    assert type(fastspan.Tracer.start_span).__name__ == "method_descriptor"


@pytest.fixture
def fallbacks(monkeypatch):
    """The native methods in use, with the Python methods they fall back to counted."""
    counts = {"start": 0, "set": 0, "end": 0}
    start, set_attribute, end = fastspan._python_start_span, fastspan._python_set_attribute, fastspan._python_end

    def counted_start(*args, **kwargs):
        counts["start"] += 1
        return start(*args, **kwargs)

    def counted_set(*args, **kwargs):
        counts["set"] += 1
        return set_attribute(*args, **kwargs)

    def counted_end(*args, **kwargs):
        counts["end"] += 1
        return end(*args, **kwargs)

    monkeypatch.setattr(fastspan, "_python_end", counted_end)
    monkeypatch.setattr(fastspan, "_python_start_span", counted_start)
    monkeypatch.setattr(fastspan, "_python_set_attribute", counted_set)
    assert fastspan.use_native(True)
    yield counts
    monkeypatch.undo()
    fastspan.use_native(fastspan.native_switch())


def _tracer(sampler=None, limits=None, processor=None):
    provider = TracerProvider(sampler=sampler, resource=Resource({"service.name": "n"}), span_limits=limits)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(processor or SimpleSpanProcessor(exporter))
    tracer = fastspan.adopt(provider.get_tracer("scope", "1.0"))
    assert type(tracer) is fastspan.Tracer
    return tracer


def _fast() -> bool:
    """Whether this SDK's tracer takes start_span's fast branches (not where its own metrics are on, ...)."""
    return _tracer()._root_bound is not None


def _both(scenario, seed=7, **pipeline):
    """scenario(tracer) run with the native methods and with the Python ones, `random` seeded alike."""
    results = []
    for on in (True, False):
        fastspan.use_native(on)
        try:
            made = dict(pipeline)
            if "processor_class" in made:  # one for each run
                made["processor"] = made.pop("processor_class")()
            tracer = _tracer(**made)
            random.seed(seed)
            results.append((tracer, scenario(tracer)))
        finally:
            fastspan.use_native(True)
    return results


def _context(c):
    return None if c is None else (type(c), tuple(c), [type(x) for x in c])


def _state(span, tracer):
    """Everything of a span made by start_span, but its start time and its locks (their types compared)."""
    if type(span) is NonRecordingSpan:
        return ("non-recording", _context(span.get_span_context()))
    # its slots (those set), then whatever went in its instance dict (nothing, for trace-run's own)
    fields = {name: getattr(span, name) for name in fastspan._SLOTS if hasattr(span, name)}
    out = [("keys", list(fields)), ("dict", dict(vars(span)))]
    for key, value in fields.items():
        if key in ("_start_time", "_end_time"):
            out.append((key, type(value), value is not None and value > 0))
        elif key == "_lock":
            out.append((key, type(value), value.locked()))
        elif key in ("_links", "_events") and type(value) is not tuple:
            out.append((key, type(value), [(_context(getattr(x, "context", None)), getattr(x, "name", None),
                                            dict(x.attributes)) for x in value], value.dropped))
        elif key in ("_context", "_parent"):
            out.append((key, _context(value)))
        elif key == "_attributes":
            # its fields: the slots set (fastspan.Attributes) and its instance dict (the SDK's class: all there)
            attrs = {k: getattr(value, k) for k in getattr(type(value), "__slots__", ()) if hasattr(value, k)}
            attrs.update(vars(value))
            out.append((key, type(value), list(attrs), list(value._dict.items()),
                        [type(v) for v in value._dict.values()], type(value._dict), type(attrs["_lock"]),
                        {k: v for k, v in attrs.items() if k not in ("_dict", "_lock")}))
        elif key in ("_resource", "_sampler", "_span_processor", "_limits", "_maker", "_instrumentation_scope",
                     "_instrumentation_info", "_record_end_metrics"):
            mine = {"_resource": tracer.resource, "_sampler": tracer.sampler, "_span_processor": tracer.span_processor,
                    "_limits": tracer._span_limits, "_maker": tracer._maker,
                    "_instrumentation_scope": tracer._instrumentation_scope,
                    "_instrumentation_info": tracer.instrumentation_info,
                    "_record_end_metrics": fastspan._NOOP_END}[key]
            out.append((key, value is mine))
        else:
            out.append((key, type(value), value))
    return out


def _assert_same(results, view):
    (t1, native_made), (t2, python_made) = results
    assert view(native_made, t1) == view(python_made, t2)


def _spans_view(spans, tracer):
    return [_state(s, tracer) for s in spans]


def test_roots_children_and_kinds_are_the_same_objects(fallbacks):
    def scenario(tracer):
        root = tracer.start_span("root", kind=SpanKind.SERVER, attributes={"a": 1, "b": "x", "c": 2.5, "d": True})
        ctx = trace.set_span_in_context(root)
        child = tracer.start_span("child", ctx, SpanKind.CLIENT, {"k": "v"})
        grandchild = tracer.start_span(name="g", context=trace.set_span_in_context(child), attributes=None,
                                       record_exception=False, set_status_on_exception=False)
        with tracer.start_as_current_span("current", attributes={}) as current:
            inner = tracer.start_span("inner")  # the current context's span as parent
        return [root, child, grandchild, current, inner]

    results = _both(scenario)
    _assert_same(results, _spans_view)
    assert results[0][1][4].parent.span_id == results[0][1][3].context.span_id
    # the Python run's own calls only (use_native(False) uses the Python method); where this SDK's tracer has no
    # fast branch (its own metrics on, ...), the native run's too
    assert fallbacks["start"] == 5 + (0 if _fast() else 5)


_plain = st.one_of(st.text(max_size=12), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=False),
                   st.booleans())
_values = st.one_of(_plain, st.none(), st.binary(max_size=4), st.lists(st.integers(0, 3), max_size=3),
                    st.tuples(st.text(max_size=3)), st.floats())
_keys = st.one_of(st.text(max_size=6), st.sampled_from(["", "a", "b", "http.method"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attributes=st.one_of(st.none(), st.dictionaries(_keys, _values, max_size=6),
                            st.dictionaries(st.sampled_from(["a", "b", "c"]), _plain, max_size=3)),
       sets=st.lists(st.tuples(_keys, _values), max_size=6),
       max_attributes=st.sampled_from([None, 1, 3, 128]), max_length=st.sampled_from([None, 0, 1, 5]),
       end_first=st.booleans())
def test_attributes_and_set_attribute_any_values_and_limits(attributes, sets, max_attributes, max_length, end_first,
                                                           caplog):
    limits = SpanLimits(max_span_attributes=max_attributes, max_span_attribute_length=max_length)

    def scenario(tracer):
        caplog.clear()
        root = tracer.start_span("root", attributes=attributes)
        child = tracer.start_span("child", trace.set_span_in_context(root), attributes=attributes)
        if end_first:
            child.end()
        for key, value in sets:
            child.set_attribute(key, value)
            root.set_attribute(key, value)
        return [root, child], [(r.levelno, r.getMessage()) for r in caplog.records]

    with caplog.at_level(logging.WARNING):
        results = _both(scenario, limits=limits)
    (t1, (spans1, warnings1)), (t2, (spans2, warnings2)) = results
    assert _spans_view(spans1, t1) == _spans_view(spans2, t2)
    assert warnings1 == warnings2
    for span in spans1:
        assert isinstance(span._attributes, BoundedAttributes)
        assert span._attributes.maxlen == t1._span_limits.max_span_attributes


def test_set_attribute_moves_a_key_set_again_to_the_end_and_stops_at_the_limit(fallbacks):
    span = _tracer(limits=SpanLimits(max_span_attributes=3)).start_span("s", attributes={"a": 1, "b": 2})
    span.set_attribute("a", "again")
    assert list(span.attributes.items()) == [("b", 2), ("a", "again")]
    span.set_attribute("c", 3.0)
    assert fallbacks["set"] == 0  # all three in C
    span.set_attribute("d", 4)  # full: the SDK's way (the oldest dropped, counted)
    assert fallbacks["set"] == 1
    assert list(span.attributes.items()) == [("a", "again"), ("c", 3.0), ("d", 4)] and span.dropped_attributes == 1


@pytest.mark.parametrize("sampler", [TraceIdRatioBased(0.5), ParentBased(TraceIdRatioBased(0.3)),
                                     TraceIdRatioBased(0.75), ParentBased(TraceIdRatioBased(0.9)),  # bounds >= 2**63
                                     ALWAYS_OFF, ParentBased(ALWAYS_OFF)])
def test_roots_dropped_and_sampled_under_ratio_samplers_seeded_ids(sampler, fallbacks):
    def scenario(tracer):
        made = []
        for i in range(60):
            root = tracer.start_span("r%d" % i, attributes={"i": i})
            made.append(root)
            made.append(tracer.start_span("c", trace.set_span_in_context(root)))
        return made

    results = _both(scenario, seed=11, sampler=sampler)
    _assert_same(results, _spans_view)
    kinds = {type(s) for s in results[0][1]}
    assert NonRecordingSpan in kinds


def test_seeded_random_gives_the_same_ids_and_a_zero_is_redrawn(monkeypatch, fallbacks):
    tracer = _tracer()
    random.seed(3)
    ids = [tracer.start_span("x").get_span_context() for _ in range(5)]
    random.seed(3)
    again = [tracer.start_span("x").get_span_context() for _ in range(5)]
    fastspan.use_native(False)
    random.seed(3)
    python = [tracer.start_span("x").get_span_context() for _ in range(5)]
    fastspan.use_native(True)
    assert ids == again == python
    drawn = iter([0, 7, 0, 9])  # a patched random.getrandbits is called (read at each call), each zero drawn again
    monkeypatch.setattr(random, "getrandbits", lambda bits: next(drawn))
    context = tracer.start_span("s").get_span_context()
    assert (context.trace_id, context.span_id) == (7, 9) and context.trace_flags.sampled


def test_declined_cases_run_the_python_method_and_are_the_same(fallbacks):
    remote = trace.set_span_in_context(NonRecordingSpan(SpanContext(0x12, 0x34, True, TraceFlags(1), TraceState())))

    def scenario(tracer):
        root = tracer.start_span("root")
        return [root,
                tracer.start_span("linked", links=[Link(root.get_span_context(), {"l": 1})]),
                tracer.start_span("remote child", remote),
                tracer.start_span("timed", start_time=12345)]

    before = fallbacks["start"]
    _assert_same(_both(scenario), _spans_view)
    # the Python run's 4, the native run's links and remote parent (all 4 without fast branches)
    assert fallbacks["start"] - before == 4 + (2 if _fast() else 4)


def test_deferred_attributes_are_made_once_in_c(fallbacks):
    made = []

    def make():
        made.append(1)
        return "deferred", {"a": 1, "b": [1, 2]}

    def scenario(tracer):
        return [tracer.start_span_deferred(None, SpanKind.CLIENT, make)]

    _assert_same(_both(scenario), _spans_view)
    assert made == [1, 1] and fallbacks["start"] == 1 + (0 if _fast() else 1)

    def broken():
        raise ValueError("the program's")

    with pytest.raises(ValueError, match="the program's"):
        _tracer().start_span_deferred(None, SpanKind.CLIENT, broken)
    with pytest.raises(ValueError, match="not enough values"):
        _tracer().start_span_deferred(None, SpanKind.CLIENT, lambda: ["one"])


class _Starting(SpanProcessor):
    def __init__(self, fail=False):
        self.started, self.fail = [], fail

    def on_start(self, span, parent_context=None):
        self.started.append((span.name, parent_context))
        if self.fail:
            raise KeyError("on_start")


def test_on_start_is_called_as_the_python_method_calls_it(fallbacks):
    processor = _Starting()
    tracer = _tracer(processor=processor)
    ctx = trace.set_span_in_context(tracer.start_span("root"))
    tracer.start_span("child", ctx)
    assert processor.started == [("root", None), ("child", ctx)] and fallbacks["start"] == (0 if _fast() else 2)
    failing = _Starting(fail=True)
    with pytest.raises(KeyError):
        _tracer(processor=failing).start_span("x")
    assert len(failing.started) == 1  # raised once, not again by a fallback


def test_arguments_the_python_method_rejects_are_rejected_alike(fallbacks):
    tracer = _tracer()
    with pytest.raises(TypeError):
        tracer.start_span("x", nonsense=1)
    with pytest.raises(TypeError):
        tracer.start_span()
    with pytest.raises(TypeError):
        tracer.start_span("x", name="y")
    with pytest.raises(TypeError):
        fastspan.Span.set_attribute(tracer.start_span("x"), "only a key")


def test_an_error_in_c_runs_the_python_method_and_never_reaches_the_program(fallbacks, caplog):
    tracer = _tracer()
    native._fail(1)
    with caplog.at_level(logging.DEBUG, logger="trace_run.agent.fastspan"):
        span = tracer.start_span("s", attributes={"a": 1})
    assert type(span) is fastspan.Span and span.name == "s" and fallbacks["start"] == 1
    assert any("native span path failed" in r.getMessage() for r in caplog.records)
    native._fail(1)
    span.set_attribute("b", 2)
    assert fallbacks["set"] == 1 and dict(span.attributes) == {"a": 1, "b": 2}
    native._fail(0)


def test_the_switch(monkeypatch):
    monkeypatch.setenv("OTEL_TRACE_RUN_NATIVE_SPAN", "false")
    config.reset()
    try:
        assert fastspan.native_switch() is False
        assert fastspan.use_native(fastspan.native_switch()) is False
        assert fastspan.Tracer.start_span is fastspan._python_start_span
        assert fastspan.Span.set_attribute is fastspan._python_set_attribute
        assert fastspan.Span.end is fastspan._python_end
    finally:
        monkeypatch.delenv("OTEL_TRACE_RUN_NATIVE_SPAN")
        config.reset()
        fastspan.use_native(fastspan.native_switch())
    code = "from trace_run.agent import fastspan; print(fastspan.NATIVE)"
    for value, expected in (("false", "False"), ("true", "True")):
        env = dict(os.environ, OTEL_TRACE_RUN_NATIVE_SPAN=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_subclasses_take_the_python_methods(fallbacks):
    class MyTracer(fastspan.Tracer):
        pass

    class MySpan(fastspan.Span):
        pass

    tracer = _tracer()
    tracer.__class__ = MyTracer
    span = tracer.start_span("s")
    assert fallbacks["start"] == 1 and type(span) is fastspan.Span
    span.__class__ = MySpan
    span.set_attribute("a", 1)
    assert fallbacks["set"] == 1 and dict(span.attributes) == {"a": 1}


class _Ending(SpanProcessor):
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def on_start(self, span, parent_context=None):
        self.calls.append(("start", span.name))

    def _on_ending(self, span):
        self.calls.append(("ending", span.name, span.end_time is not None, span._attributes._immutable))

    def on_end(self, span):
        self.calls.append(("end", span.name, span.end_time))
        if self.fail:
            raise KeyError("on_end")


def test_end_the_same_steps_and_calls(fallbacks, caplog):
    def scenario(tracer):
        caplog.clear()
        span = tracer.start_span("a", attributes={"k": 1})
        span.end(end_time=5)
        span.end()  # ended already: the Python method's warning
        other = tracer.start_span("b")
        other.end(7)
        late = tracer.start_span("c")
        late.end()
        calls = [c if c[0] != "end" or c[1] != "c" else c[:2] for c in tracer.span_processor._span_processors[0].calls]
        return [span, other, late], calls, [r.getMessage() for r in caplog.records]

    with caplog.at_level(logging.WARNING):
        results = _both(scenario, processor_class=_Ending)
    (t1, (spans1, calls1, warnings1)), (t2, (spans2, calls2, warnings2)) = results
    assert _spans_view(spans1, t1) == _spans_view(spans2, t2) and calls1 == calls2 and warnings1 == warnings2
    assert warnings1 == ["Calling end() on an ended span."]
    assert spans1[0].end_time == 5 and spans1[1].end_time == 7 and spans1[2].end_time >= spans1[2].start_time
    assert fallbacks["end"] == 4 + 1  # the Python run's 4, the native run's ended span
    metrics = []
    span = _tracer().start_span("m")
    span._record_end_metrics = lambda: metrics.append(1)
    span.end()
    assert metrics == [1]
    failing = _Ending(fail=True)
    span = _tracer(processor=failing).start_span("f")
    with pytest.raises(KeyError):
        span.end()
    assert [c[0] for c in failing.calls].count("end") == 1  # raised once, not again by a fallback
    with pytest.raises(TypeError):
        _tracer().start_span("x").end(nonsense=1)
    span = _tracer().start_span("x")
    native._fail(1)  # (the next call of any of the three)
    span.end()
    assert span.end_time is not None and fallbacks["end"] == 4 + 1 + 2


def test_is_recording_and_update_name_answer_as_the_python_methods(caplog):
    """Live, ended and not-started spans, a span of another class, wrong calls: the same answers, names and
    warnings both ways."""
    assert fastspan.Span.is_recording is not fastspan._python_is_recording
    assert fastspan.Span.update_name is not fastspan._python_update_name

    class Other(fastspan.Span):
        pass

    def scenario(tracer):
        caplog.clear()
        seen = []
        live, ended, other = tracer.start_span("a"), tracer.start_span("b"), tracer.start_span("c")
        ended.end()
        other.__class__ = Other
        for span in (live, ended, other):
            seen.append(span.is_recording())
            span.update_name(span.name + "!")
            seen.append((span.name, span.is_recording()))
            for bad in ((), ("x", "y")):
                try:
                    span.update_name(*bad)
                except TypeError as exc:
                    seen.append(type(exc).__name__)
        live.end()
        seen.append(live.is_recording())
        seen.append([r.getMessage() for r in caplog.records])
        return seen

    with caplog.at_level(logging.WARNING):
        (_, native_seen), (_, python_seen) = _both(scenario)
    assert native_seen == python_seen
    assert native_seen[:2] == [True, ("a!", True)] and native_seen[4:6] == [False, ("b", False)]
    assert "Tried calling update_name on an ended span." in native_seen[-1]


def _dropped_roots(tracer):
    return [tracer.start_span("r%d" % i) for i in range(3)]


def _non_recording_view(spans, tracer):
    return [(type(s), sorted(vars(s)), _context(s.get_span_context())) for s in spans]


def test_a_dropped_root_is_made_without_running_the_api_init(fallbacks):
    """Where NonRecordingSpan is the API's own, the C makes it as the call would, without running its __init__."""
    assert fastspan._non_recording_init() is NonRecordingSpan.__init__
    tracer = _tracer(sampler=ALWAYS_OFF)
    if tracer._root_bound is None:
        pytest.skip("no fast branches on this SDK")
    ran = []

    def profile(frame, event, arg):
        if event == "call":
            ran.append(frame.f_code)

    sys.setprofile(profile)
    try:
        span = tracer.start_span("r")
    finally:
        sys.setprofile(None)
    assert NonRecordingSpan.__init__.__code__ not in ran and fallbacks["start"] == 0
    assert type(span) is NonRecordingSpan and vars(span) == {"_context": span.get_span_context()}
    _assert_same(_both(_dropped_roots, sampler=ALWAYS_OFF), _non_recording_view)


def _own_non_recording_span():
    """A class fastspan takes as the API's NonRecordingSpan (its own __init__ of the same code), to replace things in
    (on the API's class itself, a __new__ set and deleted again leaves it broken: a CPython quirk)."""
    class Own(NonRecordingSpan):
        def __init__(self, context):
            self._context = context

    return Own


def _replace_init(patch, cls):
    calls = []
    init = cls.__init__

    def replaced(self, context):
        calls.append(context)
        init(self, context)
        self.extra = 1

    patch.setattr(cls, "__init__", replaced)
    return calls


def _replace_new(patch, cls):
    calls = []

    def new(kind, *args):
        calls.append(args)
        made = object.__new__(kind)
        made.made_by = "new"
        return made

    patch.setattr(cls, "__new__", new)
    return calls


def _replace_code(patch, cls):
    def other(self, context):
        self._context = context
        self.other = True

    patch.setattr(cls.__init__, "__code__", other.__code__)
    return []


def _context_property(patch, cls):
    calls = []

    def setter(self, value):
        calls.append(value)
        self.__dict__["_context"] = value

    patch.setattr(cls, "_context", property(lambda self: self.__dict__["_context"], setter), raising=False)
    return calls


def _replace_setattr(patch, cls):
    calls = []

    def setattr_(self, key, value):
        calls.append(key)
        object.__setattr__(self, key, value)

    patch.setattr(cls, "__setattr__", setattr_, raising=False)
    return calls


@pytest.mark.parametrize("replace", [_replace_init, _replace_new, _replace_code, _context_property, _replace_setattr])
@pytest.mark.parametrize("when", ["after configure", "before configure"])
def test_a_replaced_non_recording_span_is_called_as_the_python_method_calls_it(replace, when, monkeypatch, fallbacks):
    """__init__, __new__, the __init__'s code, a `_context` descriptor or __setattr__ replaced (since the C was
    configured, or before): the C runs them as the call does, the same spans both ways, and they ran."""
    def run():
        random.seed(7)
        tracer = _tracer(sampler=ALWAYS_OFF)
        return tracer, _dropped_roots(tracer)

    own = _own_non_recording_span()
    with monkeypatch.context() as patched:
        patched.setattr(fastspan, "NonRecordingSpan", own)
        assert fastspan._non_recording_init() is own.__dict__["__init__"]
        if when == "before configure":
            calls = replace(patched, own)
        assert fastspan.use_native(True)
        if when == "after configure":
            calls = replace(patched, own)
        results = [run()]
        fastspan.use_native(False)
        results.append(run())
        assert fastspan.use_native(True)
        assert all(type(s) is own for _, made in results for s in made)
    assert fastspan.use_native(True)
    _assert_same(results, _non_recording_view)
    assert fallbacks["start"] == 3 + (0 if _fast() else 3)
    if replace is _replace_code:
        assert all(s.other for _, made in results for s in made)
    else:
        assert len(calls) == 6
    span = _tracer(sampler=ALWAYS_OFF).start_span("again")  # the API's class: the C's own way again
    assert type(span) is NonRecordingSpan and vars(span) == {"_context": span.get_span_context()}


def test_a_non_recording_span_subclass_or_other_init_is_called(monkeypatch, fallbacks):
    """A NonRecordingSpan of another __init__ (a subclass, where fastspan would take it) is not made without its
    call; a configure with an __init__ that is not the class's is refused."""
    if not _fast():
        pytest.skip("no fast branches on this SDK")

    class Sub(NonRecordingSpan):
        def __init__(self, context):
            super().__init__(context)
            self.sub = True

    class Same(NonRecordingSpan):  # its __init__ inherited: still called (only the class's own is taken)
        pass

    with monkeypatch.context() as patched:
        patched.setattr(fastspan, "NonRecordingSpan", Sub)
        assert fastspan._non_recording_init() is None and fastspan.use_native(True)
        span = _tracer(sampler=ALWAYS_OFF).start_span("s")
        assert type(span) is Sub and span.sub is True and fallbacks["start"] == 0
        patched.setattr(fastspan, "NonRecordingSpan", Same)
        assert fastspan._non_recording_init() is None and fastspan.use_native(True)
        assert type(_tracer(sampler=ALWAYS_OFF).start_span("s")) is Same
        with pytest.raises(TypeError, match="non_recording_init"):
            native.configure({**_configure_names(), "non_recording_init": Sub.__init__})
    assert fastspan.use_native(True)


def _configure_names():
    """use_native's names, as it gives them (read back from a configure call)"""
    seen = {}
    real = native.configure

    class Spy:
        @staticmethod
        def configure(names):
            seen.update(names)
            return real(names)

    saved = fastspan._NATIVE
    fastspan._NATIVE = Spy
    try:
        fastspan.use_native(True)
    finally:
        fastspan._NATIVE = saved
    return seen


_RECORDING_FIELDS = ("_span_fields", "_maker", "resource", "sampler", "span_processor", "_span_limits", "_metrics_off",
                     "_metrics", "id_generator")


def test_a_dropped_root_reads_only_what_decides_it(monkeypatch, fallbacks):
    """Under a sampler that drops every root, the C reads neither the fields a recording span needs nor
    Tracer._fields_ok (as the Python method: none of them missing makes it decline); ids drawn alike."""
    if not _fast():
        pytest.skip("no fast branches on this SDK")

    def scenario(tracer):
        for field in _RECORDING_FIELDS:
            del tracer.__dict__[field]
        return _dropped_roots(tracer)

    monkeypatch.setattr(fastspan.Tracer, "_fields_ok", False)
    _assert_same(_both(scenario, sampler=ALWAYS_OFF), _non_recording_view)
    assert fallbacks["start"] == 3  # the Python run's


class _Metrics:
    def start_span(self, parent, decision):
        return None


@pytest.mark.parametrize("sampler", [TraceIdRatioBased(0.5), ParentBased(TraceIdRatioBased(1.0))])
@pytest.mark.parametrize("spoil", ["fields_ok", "metrics_off", "metrics"])
def test_a_root_that_may_record_declines_before_its_ids_are_drawn(sampler, spoil, monkeypatch, fallbacks):
    """Where a span that records could not be made here, the C declines before drawing (the Python method then
    draws them, once): the same spans and ids both ways, dropped ones too."""
    if not _fast():
        pytest.skip("no fast branches on this SDK")
    draws = []
    real = random.getrandbits

    def counted(bits):
        draws.append(bits)
        return real(bits)

    def scenario(tracer):
        if spoil == "metrics_off":
            tracer._metrics_off = 0
        elif spoil == "metrics":
            tracer._metrics_off, tracer._metrics = False, _Metrics()
        del draws[:]
        made = [tracer.start_span("r%d" % i) for i in range(6)]
        return made, list(draws)

    if spoil == "fields_ok":
        monkeypatch.setattr(fastspan.Tracer, "_fields_ok", False)
    monkeypatch.setattr(random, "getrandbits", counted)
    results = _both(scenario, seed=5, sampler=sampler)
    (t1, (made1, draws1)), (t2, (made2, draws2)) = results
    assert [_context(s.get_span_context()) for s in made1] == [_context(s.get_span_context()) for s in made2]
    assert [type(s) for s in made1] == [type(s) for s in made2] and draws1 == draws2 == [128, 64] * 6
    assert fallbacks["start"] == 12


def test_the_fields_of_a_span_are_read_after_make_as_the_python_method_reads_them(fallbacks):
    """A _make (the program's code) that replaces the tracer's resource, or removes it: the span gets the new one,
    or the AttributeError is raised, both ways and once."""
    replaced = Resource({"service.name": "replaced"})

    def scenario(tracer):
        def make():
            tracer.resource = replaced
            return "deferred", {"a": 1}

        span = tracer.start_span_deferred(None, SpanKind.CLIENT, make)
        return [span], span._resource is replaced

    (t1, (spans1, seen1)), (t2, (spans2, seen2)) = results = _both(scenario)
    assert seen1 is seen2 is True and _spans_view(spans1, t1) == _spans_view(spans2, t2)
    assert fallbacks["start"] == 1 + (0 if _fast() else 1)
    del results

    def removing(tracer):
        made = []

        def make():
            made.append(1)
            del tracer.__dict__["resource"]
            return "deferred", None

        with pytest.raises(AttributeError, match="resource"):
            tracer.start_span_deferred(None, SpanKind.CLIENT, make)
        return made

    assert [made for _, made in _both(removing)] == [[1], [1]]


@pytest.mark.parametrize("sampler, to, sampled", [(ALWAYS_OFF, 1 << 64, True), (None, 0, False),
                                                  (ALWAYS_OFF, None, None)])
def test_the_root_bound_is_read_again_after_the_draws(sampler, to, sampled, monkeypatch, fallbacks):
    """The Python method compares with `self._root_bound` after drawing the ids: a getrandbits (the program's) that
    replaces it decides the span both ways alike; a bound that cannot be compared raises both ways."""
    if not _fast():
        pytest.skip("no fast branches on this SDK")
    real = random.getrandbits
    tracers = []

    def replacing(bits):
        tracers[-1]._root_bound = to
        return real(bits)

    def scenario(tracer):
        tracers.append(tracer)
        monkeypatch.setattr(random, "getrandbits", replacing)
        try:
            if sampled is None:
                with pytest.raises(TypeError):
                    tracer.start_span("r")
                return []
            return [tracer.start_span("r")]
        finally:
            monkeypatch.setattr(random, "getrandbits", real)

    results = _both(scenario, sampler=sampler)
    _assert_same(results, _spans_view)
    if sampled is not None:
        assert results[0][1][0].get_span_context().trace_flags.sampled is sampled
    assert fallbacks["start"] == 1


def test_the_id_generator_is_read_only_for_a_zero_and_its_errors_raised_once(monkeypatch, fallbacks):
    """`random.getrandbits(...) or self.id_generator...`: a tracer without id_generator makes spans while no draw
    is zero; with a zero its AttributeError, and a getrandbits that raises, propagate, each called once."""
    if not _fast():
        pytest.skip("no fast branches on this SDK")
    calls = []

    def scenario(tracer):
        del tracer.__dict__["id_generator"]
        made = [tracer.start_span("r"), tracer.start_span("c", trace.set_span_in_context(tracer.start_span("p")))]
        drawn = iter([0])

        def zero(bits):
            calls.append(bits)
            return next(drawn)

        monkeypatch.setattr(random, "getrandbits", zero)
        try:
            with pytest.raises(AttributeError, match="id_generator"):
                tracer.start_span("zero")
            with pytest.raises(StopIteration):
                tracer.start_span("raising")
        finally:
            monkeypatch.undo()
        return made

    for sampler in (None, ALWAYS_OFF):
        del calls[:]
        _assert_same(_both(scenario, sampler=sampler), _spans_view)
        assert calls == [128, 128] * 2


def test_span_contexts_made_in_c_hash_and_compare_as_those_made_by_the_api(fallbacks):
    """The C fills a SpanContext itself (tuple.__new__'s steps): it must be the same value everywhere a tuple is
    used, hash() included (a tuple that caches its hash must not keep a wrong one: with its TraceState in it, the
    API's SpanContext is unhashable, and says so)."""
    tracer = _tracer(sampler=ParentBased(TraceIdRatioBased(0.5)))
    if tracer._root_bound is None:
        pytest.skip("no fast branches on this SDK")
    made = []
    for _ in range(40):
        root = tracer.start_span("root")
        child = tracer.start_span("child", context=trace.set_span_in_context(root)) if root.is_recording() else None
        for span in filter(None, (root, child)):
            c = span.get_span_context()
            made.append(c)
            twin = SpanContext(c.trace_id, c.span_id, c.is_remote, c.trace_flags, c.trace_state)
            assert type(c) is SpanContext and c == twin and tuple(c) == tuple(twin)
            answers = []
            for one in (c, twin):
                try:
                    answers.append(("hash", hash(one)))
                except TypeError as exc:
                    answers.append(("TypeError", str(exc)))
            assert answers[0] == answers[1], answers
        if child is not None:
            child.end()
        if root.is_recording():
            root.end()
    assert fallbacks["start"] == 0
    kinds = {bool(c.trace_flags.sampled) for c in made}
    assert kinds == {True, False}, kinds  # both a dropped root's and a recording span's context were checked


def _lock_steps(tracer):
    span = tracer.start_span("s")
    span.set_attribute("a", 1)
    span.update_name("t")
    span.end()
    return span


def _starts_in_python() -> int:
    """Fallbacks of start in _both's two runs: the Python run's, and the C run's too where this SDK has no fast
    branches (the span is then started by the Python method; set_attribute and end still run in C)."""
    return 1 if _tracer()._root_bound is not None else 2


def test_the_span_lock_of_the_builtin_type_is_taken_and_freed(fallbacks):
    """set_attribute, update_name and end call the builtin lock's methods without their names looked up: the
    lock is free after each, and the span the same as the Python methods make."""
    (t1, span1), (t2, span2) = _both(_lock_steps)
    assert fallbacks == {"start": _starts_in_python(), "set": 1, "end": 1}  # the Python run's
    assert _spans_view([span1], t1) == _spans_view([span2], t2)
    assert type(span1._lock) is type(threading.Lock()) and not span1._lock.locked()
    span = _tracer().start_span("x")
    span._lock.acquire()
    span._lock.release()
    span.set_attribute("b", 2)
    assert not span._lock.locked() and dict(span.attributes) == {"b": 2}


@pytest.mark.parametrize("replace", [False, True])
def test_a_span_lock_of_a_python_class_is_called_by_name(replace, monkeypatch, fallbacks):
    monkeypatch.setattr(fastspan, "_Lock", NamedLock)
    assert fastspan.use_native(True)
    if replace:  # a method replaced on the class after configure: the new one is called
        replace_acquire(monkeypatch)
    (t1, span1), (t2, span2) = _both(_lock_steps)
    assert type(span1._lock) is NamedLock and type(span2._lock) is NamedLock
    assert span1._lock.calls == span2._lock.calls == ["replaced" if replace else "acquire", "release"] * 3
    assert fallbacks == {"start": _starts_in_python(), "set": 1, "end": 1}  # the Python run's only
    assert _spans_view([span1], t1) == _spans_view([span2], t2)


def test_a_processor_dict_and_tracer_config_read_through_their_class_descriptors(fallbacks):
    """get_route reads `processor.__dict__` and enabled() `config.is_enabled` from the instance's dict under a
    guard on the exact type's version: a class whose __dict__ is a property, or an is_enabled property added to
    the config's class, is read through them, as the Python method reads them."""
    calls = []

    class Shown(SpanProcessor):
        def on_start(self, span, parent_context=None):
            calls.append(span.name)

        @property
        def __dict__(self):
            return {"_span_processors": self._procs, "_trace_run_route": (self._procs, True, False, self.on_end)}

    def scenario(tracer):
        processor = Shown()
        object.__setattr__(processor, "_procs", ())
        # the real instance dict: a route saying "no on_start", which only a read past the property would see
        object.__setattr__(processor, "_trace_run_route", ((), False, False, processor.on_end))
        tracer.span_processor = processor
        tracer.start_span("a").end()
        return list(calls)

    (_, native_calls), (_, python_calls) = _both(scenario)
    assert native_calls == ["a"] and python_calls == ["a", "a"]  # (calls is shared: the native run's, then both)

    if not fastspan._HAS_IS_ENABLED:
        return

    class Config:
        pass

    def disabled(tracer):
        config = Config()
        config.is_enabled = True  # in the instance's dict; the property added below wins over it
        tracer._tracer_config = config
        tracer.start_span("armed").end()
        Config.is_enabled = property(lambda self: False)
        try:
            return tracer.start_span("b").is_recording()
        finally:
            del Config.is_enabled

    assert [r for _, r in _both(disabled)] == [False, False]


def test_the_tracers_fields_are_read_again_once_changed_with_more_tracers_than_the_memo_keeps(fallbacks):
    """The C keeps the last value it read of a tracer's field while that tracer's dict is unchanged (core/own_attr.h's
    memo, four tracers a field): six tracers taking turns, each one's resource replaced between rounds (and one's
    removed, then given back), every span gets its own tracer's resource of that moment, both ways, the C's all
    without the Python method."""
    def scenario(first):
        provider_tracers = [first] + [_tracer() for _ in range(5)]
        got = []
        for round_ in range(4):
            for i, tracer in enumerate(provider_tracers):
                if round_ and (i + round_) % 2:
                    tracer.resource = Resource({"service.name": "t%d-r%d" % (i, round_)})
                span = tracer.start_span("s%d" % i)
                got.append(span._resource.attributes["service.name"])
                span.end()
        removed = provider_tracers[3]
        kept = removed.__dict__.pop("resource")
        with pytest.raises(AttributeError, match="resource"):
            removed.start_span("gone")
        removed.resource = kept
        got.append(removed.start_span("back")._resource.attributes["service.name"])
        return got

    (_, seen1), (_, seen2) = _both(scenario)
    want = []
    latest = {}
    for r in range(4):
        for i in range(6):
            if r and (i + r) % 2:
                latest[i] = "t%d-r%d" % (i, r)
            want.append(latest.get(i, "n"))
    want.append(latest.get(3, "n"))
    assert seen1 == seen2 == want
    assert len(set(want)) > 6  # the replacements were seen, not only the first values
    assert fallbacks["start"] == 26 + (0 if _fast() else 26)
