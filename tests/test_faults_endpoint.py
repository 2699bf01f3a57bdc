"""The OTLP endpoint misbehaves; the program under trace-run does not notice.

Each fault runs tests/apps/fault_app.py under trace-run and compares its stdout,
its own stderr (the traceback of its uncaught exception) and its exit code with a
bare run; exit stays bounded by OTEL_TRACE_RUN_EXIT_TIMEOUT, far below the export
timeout. Then: Retry-After honoured, the endpoint away and back (queue delivered
once, the rest dropped and counted), and a burst far larger than the queue.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from apps.fault_servers import FaultServer, free_port, make_ca, server_tls_context
from support import HERE, TRACE_RUN, clean_env, run_traced

APP = os.path.join(HERE, "apps", "fault_app.py")
APP_ARGS = ["--spans", "5", "--requests", "2", "--raise"]
SPANS_MADE = 7  # 5 API spans + 2 urllib CLIENT spans
EXIT_TIMEOUT_MS = 1000
EXPORT_TIMEOUT_MS = 10000  # the default: a hung exit would take this long (or much longer)
DROP_LINE = re.compile(r"(\d+) of (\d+) spans were not exported to .*\((\d+) dropped from the queue")


def split_stderr(stderr: str):
    """(trace-run's own lines, the program's lines)."""
    ours, theirs = [], []
    for line in stderr.splitlines():
        (ours if line.startswith("trace-run:") else theirs).append(line)
    return ours, theirs


@pytest.fixture(scope="module")
def bare():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, APP, *APP_ARGS], env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    proc.elapsed = time.monotonic() - started
    assert proc.returncode == 1 and "ValueError: the program's own error" in proc.stderr
    return proc


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


def _run_with_endpoint(endpoint: str, protocol: str = "http/protobuf", **extra):
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                    OTEL_BSP_SCHEDULE_DELAY="100", OTEL_TRACE_RUN_EXIT_TIMEOUT=str(EXIT_TIMEOUT_MS), **extra)
    started = time.monotonic()
    proc = run_traced(["python", APP, *APP_ARGS], env=env, timeout=60)
    proc.elapsed = time.monotonic() - started
    return proc


def _assert_unchanged(proc, bare):
    ours, theirs = split_stderr(proc.stderr)
    assert proc.returncode == bare.returncode, proc.stderr
    assert proc.stdout == bare.stdout
    assert theirs == bare.stderr.splitlines(), proc.stderr
    # Bounded exit: the exit flush gives up after OTEL_TRACE_RUN_EXIT_TIMEOUT (plus start-up noise),
    # never waiting out the 10 s export timeout and its retries.
    assert proc.elapsed < bare.elapsed + EXIT_TIMEOUT_MS / 1000.0 + 3.0 < EXPORT_TIMEOUT_MS / 1000.0, proc.elapsed
    return ours


def _assert_all_lost_and_reported(ours):
    failing = [line for line in ours if "exporting spans to" in line and "failed" in line]
    assert len(failing) <= 1, ours  # said once, not once per batch or retry
    drops = [DROP_LINE.search(line) for line in ours if DROP_LINE.search(line)]
    assert len(drops) == 1, ours
    lost, ended = int(drops[0].group(1)), int(drops[0].group(2))
    assert lost == ended == SPANS_MADE, ours
    assert len(ours) <= 3, ours  # failing, slow flush at exit, the drop count: nothing else


def test_healthy_endpoint_baseline_every_span_arrives_once(bare):
    """The control for the faults below: the same program and settings deliver everything."""
    server = FaultServer(["ok"])
    try:
        proc = _run_with_endpoint(server.endpoint)
    finally:
        server.stop()
    ours = _assert_unchanged(proc, bare)
    assert ours == [], ours
    assert len(server.span_ids) == SPANS_MADE == len(set(server.span_ids))


HTTP_FAULTS = {
    "not_listening": None,
    "hang": ["hang"],
    "status_500": ["status:500"],
    "status_503_retry_after": ["status:503:1"],
    "status_429_retry_after_beyond_timeout": ["status:429:3600"],
    "garbage": ["garbage"],
    "close_mid_request": ["close"],
}


@pytest.mark.parametrize("fault", sorted(HTTP_FAULTS))
def test_http_endpoint_fault_leaves_program_unchanged(bare, fault):
    script = HTTP_FAULTS[fault]
    server = FaultServer(script) if script else None
    endpoint = server.endpoint if server else "http://127.0.0.1:%d" % free_port()
    try:
        proc = _run_with_endpoint(endpoint)
    finally:
        if server:
            server.stop()
    ours = _assert_unchanged(proc, bare)
    _assert_all_lost_and_reported(ours)
    if server:
        assert server.calls, "the exporter never reached the fault server"
        assert server.span_ids == []


def test_garbage_200_answer_is_harmless(bare):
    server = FaultServer(["garbage200"])
    try:
        proc = _run_with_endpoint(server.endpoint)
    finally:
        server.stop()
    ours = _assert_unchanged(proc, bare)
    assert ours == [], ours  # a 2xx with an unreadable body counts as delivered: nothing to say
    assert server.modes_seen() and set(server.modes_seen()) == {"garbage200"}


@pytest.mark.parametrize("fault", ["untrusted_certificate", "tls_to_plain_server"])
def test_tls_errors_leave_program_unchanged(bare, ca, fault):
    if fault == "untrusted_certificate":
        server = FaultServer(["ok"], tls=server_tls_context(ca))  # our CA, which the exporter does not know
    else:
        server = FaultServer(["ok"])
    endpoint = "https://127.0.0.1:%d" % server.port
    try:
        proc = _run_with_endpoint(endpoint)
    finally:
        server.stop()
    ours = _assert_unchanged(proc, bare)
    _assert_all_lost_and_reported(ours)
    assert server.span_ids == []


@pytest.mark.parametrize("fault", ["not_listening", "hang", "garbage"])
def test_grpc_endpoint_fault_leaves_program_unchanged(bare, fault):
    server = None if fault == "not_listening" else FaultServer([fault])
    port = server.port if server else free_port()
    try:
        proc = _run_with_endpoint("http://127.0.0.1:%d" % port, protocol="grpc")
    finally:
        if server:
            server.stop()
    ours = _assert_unchanged(proc, bare)
    _assert_all_lost_and_reported(ours)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("first_export", ["at_exit", "during_the_run"])
def test_nobody_listening_does_not_hold_the_exit(bare, protocol, first_export):
    """A short program whose collector is down (nothing on the port: the connection is refused) ends
    about as soon as bare, though the exit timeout would allow 20 s: a refused attempt is not retried at
    exit (the exporter's backoff, 1 s then 2 s, 4 s..., held such an exit ~7 s, half the timeout at most).
    Both when the first export is the exit's flush and when one is already backing off as the program ends
    (its next attempt, refused too, ends it; a collector back by then gets the spans: the test below)."""
    env = dict(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:%d" % free_port(), OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
               OTEL_BSP_SCHEDULE_DELAY="60000" if first_export == "at_exit" else "1",
               OTEL_TRACE_RUN_EXIT_TIMEOUT="20000")
    started = time.monotonic()
    if first_export == "at_exit":
        proc = run_traced(["python", APP, *APP_ARGS], env=clean_env(**env), timeout=60)
        assert proc.stdout == bare.stdout
    else:  # the program waits until its spans' export was refused and is backing off, then ends
        proc = subprocess.Popen([TRACE_RUN, "python", APP, *APP_ARGS, "--pause"], env=clean_env(**env),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "paused\n" in iter(proc.stdout.readline, "")
        time.sleep(0.4)
        started = time.monotonic()
        proc.stdout_text, proc.stderr = proc.communicate("go\n", timeout=60)
    elapsed = time.monotonic() - started
    ours, theirs = split_stderr(proc.stderr)
    assert proc.returncode == bare.returncode and theirs == bare.stderr.splitlines(), proc.stderr
    _assert_all_lost_and_reported(ours)
    assert not any("longer than" in line for line in ours), ours  # not cut by the exit timeout either
    assert elapsed < bare.elapsed + 2.5, (elapsed, bare.elapsed, ours)


def test_retry_after_is_honoured_and_spans_arrive_once(tmp_path):
    server = FaultServer(["status:503:2", "ok"])
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                    OTEL_TRACE_RUN_EXIT_TIMEOUT="6000")
    try:
        proc = run_traced(["python", APP, "--spans", "5", "--requests", "0"], env=env, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stdout.endswith("done\n")
    assert proc.stderr == "", proc.stderr  # a retry that succeeds is not worth a warning
    (t1, m1), (t2, m2) = server.calls
    assert (m1, m2) == ("status:503:2", "ok")
    # The SDK's own backoff for the first retry is 0.8-1.2 s; Retry-After: 2 asked for 2 s.
    assert t2 - t1 >= 1.8
    assert len(server.span_ids) == 5 == len(set(server.span_ids))


def test_endpoint_away_then_back_queue_delivered_once_rest_dropped_and_counted():
    port = free_port()  # nothing listens here yet
    queue, first, burst = 1000, 50, 3000
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:%d" % port, OTEL_BSP_SCHEDULE_DELAY="100",
                    OTEL_BSP_MAX_QUEUE_SIZE=str(queue), OTEL_BSP_MAX_EXPORT_BATCH_SIZE="500",
                    OTEL_TRACE_RUN_EXIT_TIMEOUT="15000")
    proc = subprocess.Popen([TRACE_RUN, "python", APP, "--spans", str(first), "--requests", "0", "--pause",
                             "--burst", str(burst)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    server = None
    try:
        assert proc.stdout.readline() == "spans made: %d\n" % first
        assert "paused\n" in iter(proc.stdout.readline, "")
        time.sleep(0.5)  # the first export has failed; the exporter is backing off, holding its batch
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "burst done: %d\n" % burst  # made while the endpoint is away
        server = FaultServer(["ok"], port=port)  # back
        proc.wait(timeout=40)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        if server:
            server.stop()
    assert proc.returncode == 0 and out == "done\n", err
    received = server.span_ids
    assert len(received) == len(set(received)), "a span arrived twice"
    # What fitted in the queue (plus the batch the exporter held) arrived; the rest was dropped...
    assert queue <= len(received) <= queue + first, len(received)
    ours, _ = split_stderr(err)
    drops = [DROP_LINE.search(line) for line in ours if DROP_LINE.search(line)]
    assert len(drops) == 1, err
    lost, ended, dropped = (int(g) for g in drops[0].groups())
    # ... and counted exactly, at exit.
    assert ended == first + burst
    assert lost == dropped == ended - len(received), err


def test_burst_larger_than_queue_keeps_memory_bounded():
    """30 000 spans against a hung endpoint with a 500-span queue: memory grows by the queue, not the burst."""
    server = FaultServer(["hang"])

    def run(queue: int) -> int:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                        OTEL_BSP_MAX_QUEUE_SIZE=str(queue), OTEL_BSP_MAX_EXPORT_BATCH_SIZE="500",
                        OTEL_TRACE_RUN_EXIT_TIMEOUT="500")
        proc = run_traced(["python", APP, "--spans", "0", "--requests", "0", "--burst", "30000"], env=env)
        assert proc.returncode == 0 and proc.stdout.endswith("burst done: 30000\ndone\n"), proc.stderr
        growth = int(re.search(r"rss growth KiB: (\d+)", proc.stderr).group(1))
        drops = DROP_LINE.search(proc.stderr)
        stderrs.append(proc.stderr[-2000:])
        return growth, int(drops.group(3))

    stderrs: list = []

    try:
        bounded, dropped = run(500)
        unbounded, _ = run(100000)  # the control: the same burst, all of it held
    finally:
        server.stop()
    assert dropped >= 30000 - 500 - 500
    assert unbounded > 3 * max(bounded, 1024), (bounded, unbounded, stderrs)


LOGGING_CONFIGURED_LATE = '''
import logging, logging.config, sys, time
from opentelemetry import trace

tracer = trace.get_tracer("late-logging")
with tracer.start_as_current_span("before"):
    pass
# Django's setup, uvicorn's and gunicorn's configs do this: every existing logger's `disabled` is set back
logging.config.dictConfig({
    "version": 1, "disable_existing_loggers": False,
    "handlers": {"err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["err"], "level": "DEBUG"},
})
logging.getLogger("app").info("configured")
for i in range(5):
    with tracer.start_as_current_span("after %d" % i):
        pass
time.sleep(WAIT)  # the exporter is built now, after the configuration, and retries
print("done")
'''


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_logging_configured_after_the_agent_keeps_the_sdks_lines_and_header_secrets_out(tmp_path, protocol):
    """A program that configures logging after trace-run started (dictConfig with disable_existing_loggers
    False re-enables every existing logger) still sees none of the SDK's export lines (each retry, the
    failure, the shutdown) nor its header warning, which quotes a malformed OTEL_EXPORTER_OTLP_HEADERS entry
    whole (here an API key): its stderr is its own line and trace-run's, as bare (no collector listening)."""
    script = tmp_path / "late_logging.py"
    script.write_text(LOGGING_CONFIGURED_LATE.replace("WAIT", "2.5"))
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:%d" % free_port(),
                    OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_BSP_SCHEDULE_DELAY="50",
                    OTEL_EXPORTER_OTLP_HEADERS="x-team=a,authorization Bearer SECRET-0123456789")
    bare = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    proc = run_traced(["python", str(script)], env=env, timeout=60)
    assert bare.returncode == proc.returncode == 0 and bare.stdout == proc.stdout == "done\n", proc.stderr
    ours, theirs = split_stderr(proc.stderr)
    assert theirs == bare.stderr.splitlines() == ["configured"], proc.stderr
    assert any("not exported" in line for line in ours), ours  # the spans were made, and their loss said once
    assert "SECRET-0123456789" not in proc.stderr
