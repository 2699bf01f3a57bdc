"""An ended span's way to the export queue in C: Span.end (agent/_span_native.c), CountingProcessor.on_end with
QueueBudget.admit's steps and the SDK's BatchProcessor.emit (agent/_otlp_native.c) do what the Python methods
do. Each scenario runs with the C methods and with the Python ones, and everything the program, the processors
and the queue see must be the same; what the C methods were not written for takes the Python methods;
OTEL_TRACE_RUN_NATIVE_SPAN=false keeps them out."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
from importlib.metadata import version

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import _Span as SdkSpan
from opentelemetry.sdk.trace.sampling import Decision, StaticSampler
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from support import NamedLock, replace_acquire
from trace_run.agent import exporthealth, fastspan, otlp_encoder, sdk
from trace_run.agent.otlp_encoder import Encoded, Encoder

if fastspan._NATIVE is None and not (shutil.which("cc") or shutil.which("gcc")):
    pytest.skip("no C compiler: the extension is optional", allow_module_level=True)


def _sdk_version() -> tuple:
    return tuple(int(part) for part in version("opentelemetry-sdk").split(".")[:2])


def test_the_c_methods_are_installed_where_the_extension_is():
    from trace_run.agent import _otlp_native

    assert fastspan.NATIVE and exporthealth.NATIVE_ON_END
    assert type(vars(fastspan.Span)["end"]).__name__ == "method_descriptor"
    assert vars(exporthealth.CountingProcessor)["on_end"].__func__ is _otlp_native.counting_on_end


@pytest.fixture(params=["c", "python"])
def way(request):
    on = request.param == "c"
    assert fastspan.use_native(on) is on and exporthealth.use_native_on_end(on) is on
    yield request.param
    fastspan.use_native(True)
    exporthealth.use_native_on_end(True)


class _Seen(SpanProcessor):
    """What a processor is given, in order."""

    def __init__(self, on_ending=False):
        self.seen = []
        if on_ending:
            self._on_ending = lambda span: self.seen.append(("ending", span.name, span.end_time is not None))

    def on_end(self, span):
        self.seen.append(("end", span.name, span.end_time, dict(span.attributes), span._attributes._immutable))


def _tracer(*processors):
    provider = TracerProvider(resource=Resource({"service.name": "t"}))
    for processor in processors:
        provider.add_span_processor(processor)
    return fastspan.adopt(provider.get_tracer("scope"))


def _run(way, scenario, caplog):
    """What a scenario gives: its result, the processors' records, the SDK's warnings."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.trace"):
        result = scenario()
    return result, [r.getMessage() for r in caplog.records]


SCENARIOS = {}


def scenario(function):
    SCENARIOS[function.__name__] = function
    return function


@scenario
def ended_at_a_given_time_by_position_and_by_keyword():
    seen = _Seen()
    tracer = _tracer(seen)
    a = tracer.start_span("a", attributes={"k": 1})
    b = tracer.start_span("b")
    a.end(1234)
    b.end(end_time=5678)
    return seen.seen, a.end_time, b.end_time


@scenario
def ended_twice_and_attributes_set_after():
    seen = _Seen()
    span = _tracer(seen).start_span("s")
    span.end()
    first = span.end_time
    span.end()
    span.set_attribute("late", 1)
    return len(seen.seen), span.end_time == first, dict(span.attributes)


@scenario
def never_started():
    span = _tracer(_Seen()).start_span("s")
    span._start_time = None
    with pytest.raises(RuntimeError) as raised:
        span.end()
    return str(raised.value), span.end_time


@scenario
def bad_arguments():
    span = _tracer(_Seen()).start_span("s")
    errors = []
    for call in (lambda: span.end(1, 2), lambda: span.end(when=3), lambda: span.end(1, end_time=2)):
        with pytest.raises(TypeError) as raised:
            call()
        errors.append(type(raised.value))
    return errors, span.end_time


@scenario
def on_ending_then_on_end_and_processors_added_later():
    first, second = _Seen(on_ending=True), _Seen()
    provider = TracerProvider()
    provider.add_span_processor(first)
    tracer = fastspan.adopt(provider.get_tracer("scope"))
    tracer.start_span("one").end(10)
    provider.add_span_processor(second)  # a new route
    tracer.start_span("two").end(20)
    return first.seen, second.seen


@scenario
def end_metrics_called_once():
    calls = []
    span = _tracer(_Seen()).start_span("s")
    span._record_end_metrics = lambda: calls.append("metrics")
    span.end()
    span.end()
    return calls


@scenario
def subclasses_and_other_locks_take_the_python_method():
    seen = _Seen()
    tracer = _tracer(seen)

    class Mine(fastspan.Span):
        pass

    a = tracer.start_span("sub")
    a.__class__ = Mine
    b = tracer.start_span("rlock")
    b._lock = threading.RLock()
    a.end(1)
    b.end(2)
    return seen.seen


@scenario
def a_processor_that_raises():
    class Raises(SpanProcessor):
        def on_end(self, span):
            raise ValueError("the processor's own")

    span = _tracer(Raises()).start_span("s")
    with pytest.raises(ValueError) as raised:
        span.end(7)
    return str(raised.value), span.end_time


@scenario
def ended_from_many_threads_at_once():
    seen = _Seen()
    spans = [_tracer(seen).start_span("s%d" % i) for i in range(20)]
    barrier = threading.Barrier(4)

    def end_all():
        barrier.wait()
        for span in spans:
            span.end()

    threads = [threading.Thread(target=end_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(name for _, name, *rest in seen.seen)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_span_end_in_c_is_the_python_methods(name, caplog):
    results = {}
    for on in (True, False):
        fastspan.use_native(on)
        try:
            results[on] = _run(on, SCENARIOS[name], caplog)
        finally:
            fastspan.use_native(True)
    c, python = results[True], results[False]
    if name == "ended_from_many_threads_at_once":  # which thread ended a span is not fixed: each span once
        assert c[0] == python[0] == sorted("s%d" % i for i in range(20))
        assert len(c[1]) == len(python[1]) == 20 * 3 and set(c[1]) == {"Calling end() on an ended span."}
        return
    assert c == python


# -- CountingProcessor.on_end -------------------------------------------------------------------------------


class _Built:
    accepts_encoded = True


class _Health:
    def __init__(self, built):
        self.built = built
        self.builds = 0

    def build_here(self):
        self.builds += 1
        return True


class _Queue(SpanProcessor):
    def __init__(self):
        self.got = []

    def on_end(self, item):
        self.got.append(item)


def _spans():
    provider = TracerProvider(resource=Resource({"service.name": "t"}))
    tracer = fastspan.adopt(provider.get_tracer("scope"))
    made = [tracer.start_span("s%d" % i, kind=SpanKind.CLIENT, attributes={"i": i, "t": "x" * i}) for i in range(6)]
    recorded_only = fastspan.adopt(TracerProvider(sampler=StaticSampler(Decision.RECORD_ONLY)).get_tracer("r"))
    unsampled = recorded_only.start_span("ours, not sampled")
    assert type(unsampled) is fastspan.Span and not unsampled.context.trace_flags.sampled
    sdk_unsampled = SdkSpan("sdk", SpanContext(1, 2, False, TraceFlags(0)))
    sdk_sampled = SdkSpan("sdk sampled", SpanContext(1, 3, False, TraceFlags(1)))
    spans = made[:3] + [unsampled, sdk_unsampled] + made[3:] + [sdk_sampled]
    for span in spans:
        if span._start_time is None:
            span.start(start_time=1)
        span.end(end_time=2)
    otlp_encoder._own_span_type()  # configures the encoder (as the first encoded span does)
    return spans


def _on_end_state(on, spans, built, encode, redact, budget_args, sampled_only):
    fastspan.use_native(on)
    exporthealth.use_native_on_end(on)
    try:
        health = _Health(built)
        queue = _Queue()
        budget = exporthealth.QueueBudget(*budget_args)
        prepare = sdk._preencoder(health)
        processor = exporthealth.CountingProcessor(queue, health, prepare=prepare if redact is None else redact,
                                                   budget=budget)
        processor._sampled_only = sampled_only
        if encode is not None:
            processor._encode = encode
        for span in spans:
            processor.on_end(span)
        got = [(type(i).__name__, i.data if type(i) is Encoded else i.name) for i in queue.got]
        return got, processor.ended, budget.spans, budget.bytes, health.builds, processor._pending
    finally:
        fastspan.use_native(True)
        exporthealth.use_native_on_end(True)


def _declines(span):
    return None


def _fails(span):
    raise RuntimeError("a bug")


def _drops(span):
    return None


@pytest.mark.parametrize("built", [None, _Built()])
@pytest.mark.parametrize("encode", [None, "native", _declines, _fails])
@pytest.mark.parametrize("budget_args", [(100, 1 << 20), (3, 1 << 20), (100, 300)])
@pytest.mark.parametrize("sampled_only", [False, True])
def test_counting_on_end_in_c_is_the_python_method(built, encode, budget_args, sampled_only):
    spans = _spans()
    if encode == "native":
        encode = otlp_encoder._NATIVE_PREENCODE
    c = _on_end_state(True, spans, built, encode, None, budget_args, sampled_only)
    python = _on_end_state(False, spans, built, encode, None, budget_args, sampled_only)
    assert c == python
    assert c[1] == len(spans)  # every span counted as ended, queued or not


def test_counting_on_end_in_c_with_a_prepare_that_drops_and_the_queue_bytes():
    spans = _spans()
    c = _on_end_state(True, spans, _Built(), None, _drops, (100, 1 << 20), False)
    assert c == _on_end_state(False, spans, _Built(), None, _drops, (100, 1 << 20), False)
    assert [name for _, name in c[0]] == ["ours, not sampled", "sdk"]  # prepare dropped every sampled one
    full = _on_end_state(True, spans, _Built(), otlp_encoder._NATIVE_PREENCODE, None, (100, 1 << 20), False)
    python_bytes = [Encoder(pause=False, native=False).preencode(s).data for s in spans
                    if s.context.trace_flags.sampled]  # the SDK's span too: declined by C, encoded by prepare
    assert [data for kind, data in full[0] if kind == "Encoded"] == python_bytes
    assert full[3] == sum(len(d) for d in python_bytes)


def test_a_base_exception_of_the_encoders_is_not_swallowed():
    spans = _spans()

    def interrupted(span):
        raise KeyboardInterrupt

    for on in (True, False):
        with pytest.raises(KeyboardInterrupt):
            _on_end_state(on, spans[:1], _Built(), interrupted, None, (100, 1 << 20), False)


@pytest.mark.parametrize("raw, used", [("true", True), ("false", False), ("", True)])
def test_the_switch(raw, used, tmp_path):
    import os
    import subprocess
    import sys

    code = ("from trace_run.agent import fastspan, exporthealth; "
            "print(fastspan.NATIVE, exporthealth.NATIVE_ON_END, type(vars(fastspan.Span)['end']).__name__)")
    env = dict(os.environ, OTEL_TRACE_RUN_NATIVE_SPAN=raw)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ([str(used)] * 2 + ["method_descriptor" if used else "function"])


def test_spans_from_a_real_pipeline_are_the_same_either_way():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    results = []
    for on in (True, False):
        fastspan.use_native(on)
        try:
            exporter = InMemorySpanExporter()
            tracer = _tracer(SimpleSpanProcessor(exporter))
            with tracer.start_as_current_span("parent", attributes={"a": 1}):
                with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
                    child.set_attribute("b", "x")
            results.append([(s.name, s.kind, dict(s.attributes), s.parent is not None, s.end_time >= s.start_time,
                             s.status.status_code) for s in exporter.get_finished_spans()])
        finally:
            fastspan.use_native(True)
    assert results[0] == results[1] and [r[0] for r in results[0]] == ["child", "parent"]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_the_c_on_end_takes_its_cases_and_hands_the_rest_to_python():
    """What counting_on_end ran itself, counted by what it hands to the Python method."""
    from trace_run.agent import _otlp_native

    handed = []

    def python_on_end(processor, span):
        handed.append(span.name)
        return exporthealth._python_on_end(processor, span)

    try:
        _otlp_native.configure_on_end(python_on_end, exporthealth.QueueBudget, exporthealth.QueueBudget.admit,
                                      fastspan.Span, exporthealth.CountingProcessor)
        queue = _Queue()
        health = _Health(_Built())
        counting = exporthealth.CountingProcessor(queue, health, prepare=sdk._preencoder(health),
                                                  budget=exporthealth.QueueBudget(100, 1 << 20))
        tracer = _tracer(counting)
        tracer.start_span("plain").end()
        assert handed == [] and len(queue.got) == 1  # in C
        sdk_span = SdkSpan("sdk", SpanContext(1, 2, False, TraceFlags(1)), span_processor=counting)
        sdk_span.start()
        sdk_span.end()
        assert handed == ["sdk"] and len(queue.got) == 2
    finally:
        exporthealth.use_native_on_end(True)


# -- the SDK's BatchProcessor.emit, done in C for its common case ---------------------------------------------


def test_the_sdks_emit_is_done_in_c_only_where_it_is_the_one_this_was_written_against():
    from opentelemetry.sdk._shared_internal import BatchProcessor
    from trace_run.core import compat

    read_here = BatchProcessor.emit.__code__.co_names == compat._EMIT_NAMES  # SDK 1.45's (1.41's differs)
    assert compat.known_batch_emit() is (BatchProcessor.emit if read_here else None)
    if importlib.util.find_spec("opentelemetry.sdk") and _sdk_version() >= (1, 45):
        assert read_here


def _still_batch_processor(max_queue, max_batch):
    """The SDK's BatchSpanProcessor with its worker thread stopped: its queue changes only by emit."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    bsp = BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=max_queue, max_export_batch_size=max_batch,
                             schedule_delay_millis=600000)
    bp = bsp._batch_processor
    bp._shutdown = True
    bp._worker_awaken.set()
    bp._worker_thread.join(5)
    assert not bp._worker_thread.is_alive()
    bp._shutdown = False
    bp._worker_awaken.clear()
    return bsp, bp


class _Once:
    def __init__(self):
        self.calls = 0

    def do_once(self, function):
        self.calls += 1


class _Dropped:
    """The processor's metrics: emit counts a span it drops here (its log messages are deduplicated)."""

    def __init__(self):
        self.dropped = []

    def drop_items(self, count, reason=None):
        self.dropped.append((count, reason))


def _emit_run(on, spans, max_queue, max_batch, shutdown=False, forked=False):
    from trace_run.core import compat

    fastspan.use_native(on)
    exporthealth.use_native_on_end(on)
    try:
        bsp, bp = _still_batch_processor(max_queue, max_batch)
        bp._shutdown = shutdown
        once = bp._bsp_reset_once = _Once()
        metrics = bp._metrics = _Dropped()
        if forked:
            bp._pid = -1
        health = _Health(_Built())
        counting = exporthealth.CountingProcessor(bsp, health, prepare=sdk._preencoder(health))
        counting._on_end, counting._sampled_only = compat.batch_emit(bsp), True  # as _queue_directly does
        woken = []
        for span in spans:
            counting.on_end(span)
            woken.append(bp._worker_awaken.is_set())
        queued = [item.data if type(item) is Encoded else item.name for item in bp._queue]
        bp._shutdown = True  # (its worker is stopped already; a fork of this process then starts none)
        return queued, woken, once.calls, metrics.dropped
    finally:
        fastspan.use_native(True)
        exporthealth.use_native_on_end(True)


@pytest.mark.parametrize("max_queue, max_batch", [(100, 50), (100, 3), (4, 2)])
@pytest.mark.parametrize("case", ["plain", "shut down", "forked"])
def test_emit_in_c_is_the_sdks_emit(max_queue, max_batch, case):
    spans = [s for s in _spans() if s.context.trace_flags.sampled]
    kwargs = {"shutdown": case == "shut down", "forked": case == "forked"}
    c = _emit_run(True, spans, max_queue, max_batch, **kwargs)
    python = _emit_run(False, spans, max_queue, max_batch, **kwargs)
    assert c == python
    if case == "shut down":
        assert c[0] == []  # (SDK 1.45 counts each as dropped; 1.41 does not: the SDK's emit either way)
    else:
        assert len(c[0]) == min(len(spans), max_queue) and c[1] == [i + 1 >= max_batch for i in range(len(spans))]
        assert c[3] == [(1, None)] * max(0, len(spans) - max_queue)  # "Queue full": the oldest one dropped
        assert c[2] == (len(spans) if case == "forked" else 0)


_FORKS = """
import os
from trace_run.agent import _otlp_native
assert _otlp_native.process_id() == os.getpid()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, b"ok" if _otlp_native.process_id() == os.getpid() else b"no")
    os._exit(0)
os.close(write)
answer = os.read(read, 2)
os.waitpid(pid, 0)
print(answer.decode(), _otlp_native.process_id() == os.getpid())
"""


def test_the_process_id_it_compares_with_follows_forks():
    """(in a process of its own: a fork of the test runner runs every at-fork hook its tests left)"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FORKS], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["ok", "True"], out.stderr


@pytest.mark.parametrize("lock", ["default", "rlock", "named", "named, replaced"])
def test_the_budgets_lock_is_called_as_the_python_method_calls_it(lock, monkeypatch):
    """The C calls the acquire and release of a lock of a builtin type without a name lookup; any other lock's
    by name (a method replaced on its class: the new one). Either way what the queue and budget see is the same,
    and the lock is free after."""
    spans = _spans()
    calls = []
    if lock == "named, replaced":
        replace_acquire(monkeypatch)
    budgets = []
    real = exporthealth.QueueBudget

    def budget(*args):
        made = real(*args)
        if lock == "rlock":
            made._lock = threading.RLock()
        elif lock != "default":
            made._lock = NamedLock(calls)
        budgets.append(made)
        return made

    monkeypatch.setattr(exporthealth, "QueueBudget", budget)
    c = _on_end_state(True, spans, _Built(), otlp_encoder._NATIVE_PREENCODE, None, (100, 1 << 20), False)
    c_calls = list(calls)
    del calls[:]
    python = _on_end_state(False, spans, _Built(), otlp_encoder._NATIVE_PREENCODE, None, (100, 1 << 20), False)
    assert c == python and c_calls == calls
    if lock.startswith("named"):
        first = "replaced" if lock.endswith("replaced") else "acquire"
        assert c_calls and c_calls[::2] == [first] * (len(c_calls) // 2) and set(c_calls[1::2]) == {"release"}
    for made in budgets:
        assert made._lock.acquire(False)  # free
        made._lock.release()
