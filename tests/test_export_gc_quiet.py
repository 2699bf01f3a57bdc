"""A program that counts what the garbage collector tracks around a unit of work counts the same under
trace-run: the export thread keeps nothing tracked between exports, nor while it waits to retry a failed
one. psycopg's leak tests do this (tests/fix_gc.py: `len(gc.get_objects())` after each of three runs of
the work, asserted equal); ~80 of them failed under trace-run while a batch to a dead collector was
retried, its exception, traceback and frames alive through each backoff sleep.

The counts are taken while no export is under way (a batch being sent holds objects that exist only
then); where that is with a dead endpoint, see agent/otlp_retry.py."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from support import clean_env, free_port, run_traced, write_script

UNIT_QUERIES = 10

PROGRAM = """
    import gc
    import json
    import sqlite3
    import sys
    import time

    from opentelemetry import trace

    tracer = trace.get_tracer("gc-quiet")
    delays, rest = [float(d) for d in sys.argv[1].split(",")], float(sys.argv[2])
    made = []


    def work():
        with tracer.start_as_current_span("unit") as span:
            made.append(span.get_span_context().trace_id)
            conn = sqlite3.connect(":memory:")
            for i in range(%d):
                conn.execute("SELECT ?", (i,)).fetchall()
            conn.close()


    def count():
        for _ in range(3):  # as psycopg's GCFixture: collect, more insisting
            gc.collect()
        return len(gc.get_objects())


    work()
    time.sleep(2.5)  # the exporter built and its first export over (with a dead endpoint: given up)
    counts = []
    for delay in delays:
        work()
        time.sleep(delay)  # an export happens meanwhile, or is backing off
        counts.append(count())
        time.sleep(max(0.0, rest - delay))
    print(json.dumps({"counts": counts, "traces": ["%%032x" %% t for t in made]}))
""" % UNIT_QUERIES


def _run(tmp_path, env: dict, delays: list, rest: float) -> dict:
    script = write_script(tmp_path, PROGRAM)
    proc = run_traced(["python", script, ",".join(map(str, delays)), str(rest)], env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_counts_stay_equal_while_batches_are_exported(tmp_path, receiver):
    env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="50"))
    out = _run(tmp_path, env, [0.3] * 8, 0.0)
    counts = out["counts"]
    assert len(set(counts)) == 1, "objects came and went: %s" % counts
    expected = len(out["traces"]) * (1 + UNIT_QUERIES)
    spans = receiver.wait_for(count=expected)
    assert len(spans) == expected
    by_trace = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, Counter())[span.name] += 1
    assert sorted(by_trace) == sorted(out["traces"])
    assert all(names == {"unit": 1, "SELECT": UNIT_QUERIES} for names in by_trace.values()), by_trace


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_counts_stay_equal_while_a_dead_endpoint_is_retried(tmp_path, protocol):
    # each batch: an attempt refused at once, a backoff of 0.8-1.2 s, a second attempt, then the 1.5 s
    # deadline gives up; the counts fall in a backoff (0.4 s after the work) and after it (2 s after)
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:%d" % free_port(),
                    OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_BSP_SCHEDULE_DELAY="50",
                    OTEL_EXPORTER_OTLP_TIMEOUT="1500", OTEL_TRACE_RUN_EXIT_TIMEOUT="500")
    counts = _run(tmp_path, env, [0.4, 2.0, 0.4, 2.0], 2.0)["counts"]
    assert len(set(counts)) == 1, "objects came and went: %s" % counts


def test_a_client_other_than_the_one_read_here_retries_in_its_own_loop():
    """Where the SDK's client lacks a part of its loop (another release), its own export runs, as before."""
    from trace_run.agent.otlp_retry import Retrying

    class Sent:
        success, status_code, error = False, None, TimeoutError("read timed out")

    class Client:
        def export(self, data):
            self.data = data
            return Sent()

    client = Client()
    assert Retrying(client).send(b"body") == (False, True) and client.data == b"body"


def _quiet_processor(exporter, **kwargs):
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from trace_run.agent import fastspan, otlp_encoder  # noqa: F401 (fastspan: the extension is configured with it)
    from trace_run.agent.quiet_wait import QuietEvent
    from trace_run.core import compat

    otlp_encoder._own_span_type()  # configures the extension: the Encoded type its untrack knows
    processor = BatchSpanProcessor(exporter, **kwargs)
    return processor, compat.quiet_batch_export(processor, keep_suppressed=True, seal=otlp_encoder.untrack,
                                                before=lambda: None, awaken=QuietEvent)


def _encoded():
    from opentelemetry.sdk.resources import Resource
    from trace_run.agent import otlp_encoder

    item = otlp_encoder.Encoded(b"\x0a\x00", Resource({}), None)
    otlp_encoder.untrack(item)
    return item


def test_the_batch_processor_holds_nothing_tracked_of_a_batch_while_its_exporter_works():
    """The batch is a tuple left untracked (its encoded spans are), the suppressing context is attached on the
    worker thread once and for good; a flush from the program's thread attaches and detaches it as the SDK does."""
    import gc
    import threading
    import time

    from opentelemetry import context
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from trace_run.core import compat

    seen = []

    class Recording(SpanExporter):
        def export(self, batch):
            seen.append((type(batch), len(batch), gc.is_tracked(batch),
                         context.get_value(compat.SUPPRESS_INSTRUMENTATION_KEY), threading.current_thread()))
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

    processor, quiet = _quiet_processor(Recording(), schedule_delay_millis=10)
    assert quiet
    try:
        for round_ in (1, 2):  # two batches at least: the context is attached once, and stays
            for _ in range(3):
                processor.on_end(_encoded())
            deadline = time.monotonic() + 10
            while sum(s[1] for s in seen) < 3 * round_ and time.monotonic() < deadline:
                time.sleep(0.01)
        worker = processor._batch_processor._worker_thread
        assert sum(s[1] for s in seen) == 6 and len(seen) >= 2
        assert all(s[0] is tuple and s[2:] == (False, True, worker) for s in seen), seen
        processor.on_end(_encoded())
        assert processor.force_flush()
        assert seen[-1][:4] == (tuple, 1, False, True) and seen[-1][4] is threading.current_thread()
        assert context.get_value(compat.SUPPRESS_INSTRUMENTATION_KEY) is None  # detached again here
    finally:
        processor.shutdown()


def test_another_batch_processor_code_keeps_its_own_export(monkeypatch):
    from opentelemetry.sdk.trace.export import SpanExporter
    from trace_run.core import compat

    monkeypatch.setattr(compat, "_EXPORT_NAMES", compat._EXPORT_NAMES[:-1])
    processor, quiet = _quiet_processor(SpanExporter(), schedule_delay_millis=10)
    try:
        assert not quiet and "_export" not in vars(processor._batch_processor)
    finally:
        processor.shutdown()


def test_the_quiet_event_does_what_threading_event_does():
    import threading
    import time

    from trace_run.agent.quiet_wait import QuietEvent

    event = QuietEvent()
    assert not event.is_set() and event.wait(0.01) is False and event.wait(0) is False
    event.set()
    event.set()  # twice: no error
    assert event.is_set() and event.wait(0.01) is True and event.wait() is True
    event.clear()
    assert not event.is_set() and event.wait(0.01) is False
    threading.Timer(0.05, event.set).start()
    start = time.monotonic()
    assert event.wait(10) is True and time.monotonic() - start < 5


def test_a_thread_waiting_on_it_makes_nothing_the_collector_counts():
    """threading.Event.wait makes a waiter lock, a bound method and an argument tuple each time: a count right after
    a collection saw them whenever the waiting thread had just woken up and gone back to waiting."""
    import gc
    import threading
    import time

    from trace_run.agent.quiet_wait import QuietEvent

    stop, counts = QuietEvent(), []

    def waiting():
        while not stop.wait(0.0005):
            pass

    thread = threading.Thread(target=waiting)
    thread.start()
    time.sleep(0.05)
    try:
        for _ in range(40):
            gc.collect()
            counts.append(len(gc.get_objects()))
            time.sleep(0.002)
    finally:
        stop.set()
        thread.join()
    assert len(set(counts[2:])) == 1, counts  # (the first: the thread's own start)


def test_wait_for_quiet_waits_out_full_collections_within_its_bound(monkeypatch):
    import itertools
    import time

    from trace_run.agent import quiet_wait

    start = time.monotonic()
    quiet_wait.wait_for_quiet()  # nothing collecting: one QUIET_S
    assert time.monotonic() - start < quiet_wait.MAX_WAIT_S
    monkeypatch.setattr(quiet_wait, "MAX_WAIT_S", 0.3)
    # a program collecting all the time: a full collection between any two looks (a real gc.collect() loop in a
    # thread is not that on a slow host: one collection of a large heap can outlast QUIET_S, and the wait ends)
    counter = itertools.count()
    monkeypatch.setattr(quiet_wait, "_full_collections", lambda: next(counter))
    start = time.monotonic()
    quiet_wait.wait_for_quiet()  # given up after MAX_WAIT_S
    waited = time.monotonic() - start
    assert 0.3 <= waited < 5
    looks = next(counter)
    assert looks >= 0.3 / quiet_wait.QUIET_S / 4, looks  # it looked again every QUIET_S or so meanwhile, not once
