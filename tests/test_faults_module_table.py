"""trace-run's own threads import nothing once the program runs: a program that walks `sys.modules`
(CPython's regrtest between tests, a plugin scanner) while an import on another thread adds to it
fails with "dictionary changed size during iteration". Bare, a single-threaded program never sees
that; the exporter's build and its first export used to import on threads of their own."""

from __future__ import annotations

import json

import pytest
from support import clean_env, run_traced, write_script

PROGRAM = r"""
import json, sys, threading, time

from opentelemetry import trace

imports, in_walk, walking = [], [], [False]


def audit(event, args):
    if event == "import":
        imports.append([threading.current_thread().name, args[0]])
        if walking[0]:
            in_walk.append(args[0])


sys.addaudithook(audit)
tracer = trace.get_tracer("walker")
walked = 0
for round_ in range(3):
    with tracer.start_as_current_span("round-%d" % round_) as span:
        span.set_attribute("walker.round", round_)
    # what regrtest's clear_caches does between two tests: a walk that lets other threads run
    deadline = time.monotonic() + 0.6
    walking[0] = True
    while time.monotonic() < deadline:
        for name, module in sys.modules.items():
            hasattr(module, "__warningregistry__")  # regrtest asks each module for it
            walked += 1
            if walked % 20 == 0:
                time.sleep(0.001)
    walking[0] = False
trace.get_tracer_provider().force_flush()
print(json.dumps({"walked": walked, "foreign": [i for i in imports if i[0] != "MainThread"],
                  "in_walk": in_walk, "wrapt": "wrapt" in sys.modules}))
"""


def _run(tmp_path, env):
    script = write_script(tmp_path, PROGRAM)
    proc = run_traced(["python", script], env=clean_env(**env), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("protocol, extra", [
    ("http/protobuf", {}),
    ("http/protobuf", {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}),
    ("grpc", {}),
    ("grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}),
    ("grpc", {"OTEL_TRACE_RUN_GRPC_CLIENT": "grpcio"}),
    ("http/protobuf", {"OTEL_TRACE_RUN_OTLP_ENCODER": "sdk"}),
    ("grpc", {"OTEL_TRACE_RUN_OTLP_ENCODER": "sdk"}),
])
def test_a_program_walking_sys_modules_while_its_spans_are_exported(tmp_path, receiver, protocol, extra):
    out, stderr = _run(tmp_path, receiver.env(protocol, **extra))
    assert out["foreign"] == [] and out["in_walk"] == [] and out["walked"] > 1000, (out, stderr)
    if protocol == "http/protobuf":  # the urllib3 instrumentor it applied holds wrapt unexecuted: probed too
        assert out["wrapt"] is True
    spans = receiver.wait_for(lambda s: len(s) >= 3)
    assert sorted(s.name for s in spans) == ["round-0", "round-1", "round-2"]
    assert sorted(s.attributes["walker.round"] for s in spans) == [0, 1, 2]
    assert len({s.trace_id for s in spans}) == 3 and all(s.parent_id is None for s in spans)
    assert "trace-run:" not in stderr


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_program_walking_sys_modules_while_the_endpoint_is_down(tmp_path, protocol):
    """A dead endpoint takes the export's error paths (refused connection, retries, the warning)."""
    from support import free_port

    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % free_port(), "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "1000", "OTEL_TRACE_RUN_RAISE_ERRORS": "false"}
    out, stderr = _run(tmp_path, env)
    assert out["foreign"] == [] and out["walked"] > 1000, (out, stderr)
    assert "exporting spans to http://127.0.0.1:" in stderr, stderr


def test_a_program_walking_sys_modules_while_the_collector_answers_503(tmp_path, receiver):
    """A retryable status: the retry loop's backoff, its Retry-After check and its log lines."""
    receiver.http_status = 503
    out, stderr = _run(tmp_path, dict(receiver.env(), OTEL_EXPORTER_OTLP_TIMEOUT="1000",
                                      OTEL_TRACE_RUN_RAISE_ERRORS="false"))
    assert out["foreign"] == [] and out["walked"] > 1000, (out, stderr)
    assert receiver.http_calls >= 2 and receiver.spans == [], stderr
    assert "exporting spans to http://127.0.0.1:" in stderr, stderr
