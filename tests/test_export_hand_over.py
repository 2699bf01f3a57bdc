"""The export thread hands the GIL over between its stretches of Python (otlp_encoder.hand_over), where
they are, and nowhere on a program's own thread; what it sends is unchanged. (How long the stretches
are is measured in benchmarks/gil_probe.py, never here.)"""

from __future__ import annotations

import sys
import threading
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_run.agent import otlp_answer, otlp_encoder
from trace_run.agent.otlp_encoder import PAUSE_S, SLICE, hand_over


def _record_pauses(monkeypatch, events: list) -> None:
    """time.sleep(PAUSE_S) recorded as "pause" (and not slept); any other sleep as it was."""
    real = time.sleep

    def sleep(seconds):
        if seconds == PAUSE_S:
            events.append("pause")
        else:
            real(seconds)

    monkeypatch.setattr(otlp_encoder.time, "sleep", sleep)
    monkeypatch.setattr(otlp_encoder, "_skip_until", 0.0)  # (a slow hand-over before, on a busy machine)


def _pipeline(receiver, monkeypatch, **env):
    from trace_run.agent import sdk
    from trace_run.core import config

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config.reset()
    provider, _propagator, processors = sdk.build(sdk.resolve())
    ended = InMemorySpanExporter()  # the same spans, for the official encoder
    provider.add_span_processor(SimpleSpanProcessor(ended))
    return provider, processors[0][0], ended


def test_the_export_thread_hands_over_between_its_stretches_and_sends_the_same_bytes(receiver, monkeypatch):
    provider, counting, ended = _pipeline(receiver, monkeypatch)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("first"):  # the exporter is built (on this thread, as the span ends)
        pass
    assert counting.health.built is not None
    provider.force_flush()
    receiver.wait_for(count=1)
    events: list = []
    _record_pauses(monkeypatch, events)
    exporter = counting.health.built
    pool = exporter._client._transport._pool
    real_request, real_read = pool.request, otlp_answer._read_capped
    monkeypatch.setattr(pool, "request", lambda *a, **kw: (events.append("send"), real_request(*a, **kw))[1])
    monkeypatch.setattr(otlp_answer, "_read_capped", lambda raw: (events.append("answer"), real_read(raw))[1])
    ended.clear()
    count = SLICE * 2 + 44
    for i in range(count):
        with tracer.start_as_current_span("s%d" % i, attributes={"i": i}):
            pass
    provider.force_flush()  # (the batch is exported here, on this thread, as the export thread would)
    # the bookkeeping's start; two slices, then the framing; before the HTTP client; after the answer's head
    assert events == ["pause"] + ["pause"] * 2 + ["pause"] + ["pause", "send", "pause", "answer"]
    spans = ended.get_finished_spans()
    assert len(spans) == count
    assert receiver.requests[-1] == official_encode(spans).SerializePartialToString()
    health = counting.health.counts()
    assert health["exported"] == count + 1 and health["in_flight"] == 0


def test_a_pipeline_exporting_on_the_programs_thread_never_pauses(receiver, monkeypatch, capsys):
    provider, counting, _ = _pipeline(receiver, monkeypatch, OTEL_TRACES_EXPORTER="console")
    events: list = []
    _record_pauses(monkeypatch, events)
    tracer = provider.get_tracer("t")
    for i in range(SLICE + 1):
        with tracer.start_as_current_span("s%d" % i):
            pass
    provider.force_flush()
    assert "s%d" % SLICE in capsys.readouterr().out
    assert events == []


def test_hand_over_lets_a_thread_waiting_for_the_gil_run(monkeypatch):
    """With no forced switch (a switch interval of 100 s), a thread woken while this one holds the GIL
    runs only when this one lets go of it: hand_over does (time.sleep(0) may be taken back at once, so a
    few calls are allowed); the loop in between does not."""
    monkeypatch.setattr(otlp_encoder, "SLOW_HAND_OVER_S", 60.0)  # never skipped here, however busy the machine
    monkeypatch.setattr(otlp_encoder, "_skip_until", 0.0)
    go, ran = threading.Event(), []
    other = threading.Thread(target=lambda: (go.wait(), ran.append(1)))
    other.start()
    time.sleep(0.05)  # it waits on `go`
    saved = sys.getswitchinterval()
    sys.setswitchinterval(100)
    try:
        go.set()  # it wakes, and waits for the GIL this thread holds
        spun = sum(i for i in range(200_000))  # pure Python: the GIL is never let go
        before = list(ran)
        for _ in range(50):
            hand_over()
            if ran:
                break
        after = list(ran)
    finally:
        sys.setswitchinterval(saved)
    other.join(5)
    assert spun and before == [] and after == [1]


class _Clock:
    """otlp_encoder's `time`: a clock that moves only when slept on, by `step` (how long the GIL took to come back)."""

    def __init__(self):
        self.now, self.step, self.slept = 100.0, 0.0001, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += self.step


def test_a_hand_over_that_waited_for_the_switch_interval_stops_them_for_a_while(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(otlp_encoder, "time", clock)
    monkeypatch.setattr(otlp_encoder, "_skip_until", 0.0)
    hand_over()
    hand_over()
    assert clock.slept == [PAUSE_S] * 2  # the GIL came back at once: the program lets go of it
    clock.step = 0.005  # the switch interval: a thread that never blocks held it
    hand_over()
    clock.step = 0.0001
    for _ in range(3):
        hand_over()
    assert len(clock.slept) == 3  # none for SKIP_S
    clock.now += otlp_encoder.SKIP_S
    hand_over()
    assert len(clock.slept) == 4  # then pauses again
    clock.step = otlp_encoder.SLOW_HAND_OVER_S - 0.0001
    hand_over()
    hand_over()
    assert len(clock.slept) == 6  # (under the bound: not slow)
