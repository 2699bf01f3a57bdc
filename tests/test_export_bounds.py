"""The export pipeline's bounds and its accounting (issue 14, items 13 and 14): a batch over the collector's
request limit is split rather than dropped, memory stays bounded while the collector hangs, and the exit line
says exactly where every span went when the collector is slow."""

from __future__ import annotations

import re

from apps.fault_servers import FaultServer
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import clean_env, run_traced, write_script

# lost, ended, dropped, failed[, sent without an answer]
EXIT_LINE = re.compile(r"(\d+) of (\d+) spans were not exported to .*\((\d+) dropped from the queue or unsent at "
                       r"exit, (\d+) failed to send(?:, (\d+) sent without an answer)?")

BIG_SPANS = r"""
import os, sys, time
from opentelemetry import trace
tracer = trace.get_tracer("big-spans")

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

count, size = int(sys.argv[1]), int(sys.argv[2])
with tracer.start_as_current_span("warm-up"):
    pass
time.sleep(0.3)
before = rss_kib()
for i in range(count):
    with tracer.start_as_current_span("big-%d" % i, attributes={"payload": ("%06d" % i) * (size // 6)}):
        pass
print("made", count + 1, flush=True)
print("rss growth KiB", rss_kib() - before, flush=True)
"""


def test_batches_over_the_request_limit_are_split_and_none_is_lost(tmp_path):
    """1000 spans of 10 KB in batches of 512 (5 MB each) to a collector refusing bodies over 4 MiB."""
    server = FaultServer(["max:%d" % (4 * 1024 * 1024)])
    try:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                        OTEL_TRACE_RUN_MAX_QUEUE_BYTES=str(64 * 1024 * 1024))
        proc = run_traced(["python", write_script(tmp_path, BIG_SPANS), "1000", "10000"], env=env, timeout=120)
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stdout.startswith("made 1001\n"), proc.stderr
    assert server.too_big == 0, "a request went over the collector's limit"
    assert len(server.span_ids) == len(set(server.span_ids)) == 1001
    assert max(len(b) for b in server.bodies) <= 4 * 1024 * 1024
    assert "not exported" not in proc.stderr, proc.stderr


def test_memory_bounded_while_the_collector_hangs(tmp_path):
    """3000 spans of 50 KB against a collector that takes the request and never answers: the queue's byte
    budget (8 MiB by default) bounds what is held, the in-flight batch included; the rest is counted dropped."""
    server = FaultServer(["hang"])
    try:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                        OTEL_TRACE_RUN_EXIT_TIMEOUT="500")
        proc = run_traced(["python", write_script(tmp_path, BIG_SPANS), "3000", "50000"], env=env, timeout=120)
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stdout.startswith("made 3001\n"), proc.stderr
    growth = int(re.search(r"rss growth KiB (\d+)", proc.stdout).group(1))
    assert growth < 40 * 1024, "grew by %d KiB" % growth  # without the byte budget: ~150 MB
    line = EXIT_LINE.search(proc.stderr)
    assert line, proc.stderr
    lost, ended, dropped, failed, unanswered = (int(g or 0) for g in line.groups())
    assert lost == ended == 3001 and failed == 0
    assert dropped + unanswered == ended and dropped > 2500, proc.stderr


SLOW = r"""
import time
from opentelemetry import trace
tracer = trace.get_tracer("slow-collector")
for i in range(400):
    with tracer.start_as_current_span("first-%d" % i):
        pass
time.sleep(2.0)  # two batches of 200, answered at once
for i in range(600):
    with tracer.start_as_current_span("second-%d" % i):
        pass
print("done", flush=True)
"""


def test_exit_line_agrees_with_what_a_slow_collector_received(tmp_path):
    """The third request is answered after 5 s, the exit flush gives up after 2 s: its 200 spans arrived
    but were never acknowledged, the other 400 were never sent. The exit line says exactly that."""
    server = FaultServer(["ok", "ok", "slow:5"])
    try:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="200", OTEL_TRACE_RUN_EXIT_TIMEOUT="2000")
        proc = run_traced(["python", write_script(tmp_path, SLOW)], env=env, timeout=60)
        received = list(server.span_ids)
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    line = EXIT_LINE.search(proc.stderr)
    assert line, proc.stderr
    lost, ended, dropped, failed, unanswered = (int(g or 0) for g in line.groups())
    exported = ended - lost
    assert ended == 1000 and failed == 0, proc.stderr
    assert len(received) == len(set(received)) == exported + unanswered, (len(received), proc.stderr)
    assert dropped == ended - len(received), proc.stderr
    assert unanswered > 0 and exported >= 400, proc.stderr


def test_grpc_batches_over_the_collectors_4mib_limit_are_split(tmp_path, receiver):
    """Over gRPC the receiver keeps grpcio's (and the OpenTelemetry Collector's) 4 MiB message limit."""
    env = clean_env(**receiver.env("grpc", OTEL_TRACE_RUN_MAX_QUEUE_BYTES=str(64 * 1024 * 1024)))
    proc = run_traced(["python", write_script(tmp_path, BIG_SPANS), "1000", "10000"], env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("made 1001\n"), proc.stderr
    spans = receiver.wait_for(count=1001, timeout=20)
    assert len(spans) == len({s.span_id for s in spans}) == 1001
    assert "not exported" not in proc.stderr, proc.stderr


def test_a_timed_out_export_is_counted_as_sent_without_an_answer(tmp_path):
    """The collector takes each request and answers after 4 s; the export times out after 1 s. Those spans
    arrived: the exit line must not call them failed or dropped."""
    server = FaultServer(["slow:4"])
    try:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                        OTEL_EXPORTER_OTLP_TIMEOUT="1000", OTEL_TRACE_RUN_EXIT_TIMEOUT="3000")
        app = write_script(tmp_path, SLOW.replace("range(600)", "range(0)").replace("time.sleep(2.0)",
                                                                                    "time.sleep(3.0)"))
        proc = run_traced(["python", app], env=env, timeout=60)
        received = list(server.span_ids)
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    line = EXIT_LINE.search(proc.stderr)
    assert line, proc.stderr
    lost, ended, dropped, failed, unanswered = (int(g or 0) for g in line.groups())
    assert lost == ended == 400 and dropped == failed == 0, proc.stderr
    assert unanswered == 400 == len(received) == len(set(received)), (len(received), proc.stderr)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 300), st.none()), max_size=40), st.integers(0, 6000))
@example([100] * 10, 1360)  # room 1020: the bytes fit, with their framing (6 each) they do not
@example([100] * 10, 1420)  # room 1065: both fit
def test_a_batch_that_fits_whole_is_split_as_the_walk_would_split_it(lengths, max_bytes):
    """split() told the batch's size skips its walk only where the walk would make one run of it."""
    from trace_run.agent.exporthealth import encoded_size, split
    from trace_run.agent.otlp_encoder import Encoded

    spans = [Encoded(b"x" * n, None, None) if n is not None else object() for n in lengths]  # object(): not encoded
    assert [list(c) for c in split(spans, max_bytes, encoded_size(spans))] == [list(c) for c in split(spans, max_bytes)]
