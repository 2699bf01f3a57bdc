"""The native span encoder (agent/_otlp_native.c) against the Python path and the official encoder.

    taskset -c 0 python benchmarks/encoder.py [--rounds N] [--processes N]

Pin it to one CPU (taskset): the children inherit it. Two measurements, on a CLIENT span with
microspan.py's 5 attributes, made by trace-run's span class:
- encode: one span's OTLP bytes as the agent makes them when it ends (`Encoder.preencode`), native and
  Python (the Python path with its caches warm: the same attributes every span, its best case; and
  "varied query": each span its own query text, which its caches miss), and the official
  encoder (`encode_spans(500 spans).SerializeToString()` / 500); the bytes must be equal.
- start-to-queued: `start_as_current_span` + end under `trace-run` (sampled, redacted, encoded, queued
  in the BatchSpanProcessor), in fresh processes with OTEL_TRACE_RUN_NATIVE_ENCODER=true and =false
  alternated, exporting over OTLP/HTTP to a receiver in this process between the timed batches.
Medians of rounds (per process: the median of its rounds), with the lowest and highest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from instructions import _Sink  # noqa: E402  (a sink answering 200 to every POST)
from microspan import ATTRS  # noqa: E402

BATCH = 500


def _own_spans(n: int, vary: bool = False) -> list:
    """n spans of trace-run's class; `vary`: each with its own query text (the Python path's caches miss)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind
    from trace_run.agent import fastspan

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = fastspan.adopt(provider.get_tracer("bench"))
    for i in range(n):
        attributes = dict(ATTRS, **{"db.query.text": "%s -- %d" % (ATTRS["db.query.text"], i)}) if vary else ATTRS
        with tracer.start_as_current_span("SELECT test.users", kind=SpanKind.CLIENT, attributes=attributes):
            pass
    spans = list(exporter.get_finished_spans())
    assert all(type(s) is fastspan.Span for s in spans)
    return spans


def _summary(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def encode(rounds: int) -> dict:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from trace_run.agent import otlp_encoder
    from trace_run.agent.otlp_encoder import Encoder

    if otlp_encoder._NATIVE_SPAN is None:
        raise SystemExit("the native extension is not built (pip install -e . with a C compiler)")
    spans, varied = _own_spans(BATCH), _own_spans(BATCH, vary=True)
    native, python = Encoder(pause=False, native=True), Encoder(pause=False, native=False)
    native_call = otlp_encoder._NATIVE_SPAN
    fields = [s.__dict__ for s in spans]
    ours = [native.preencode(s) for s in spans]
    assert [e.data for e in ours] == [python.preencode(s).data for s in spans]
    assert [native.preencode(s).data for s in varied] == [python.preencode(s).data for s in varied]
    assert [native_call(f) for f in fields] == [e.data for e in ours]  # none declined
    assert native.encode(ours) == encode_spans(spans).SerializeToString()
    cases = {
        "native preencode": lambda: [native.preencode(s) for s in spans],
        "python preencode": lambda: [python.preencode(s) for s in spans],
        "native call alone": lambda: [native_call(f) for f in fields],
        "native, varied query": lambda: [native.preencode(s) for s in varied],
        "python, varied query": lambda: [python.preencode(s) for s in varied],
        "official encoder": lambda: encode_spans(spans).SerializeToString(),
    }
    samples: dict = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            t0 = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - t0) / BATCH * 1e6)
    return {name: _summary(v) for name, v in samples.items()}


# -- start-to-queued, under trace-run ---------------------------------------------------------------


def child(rounds: int) -> None:
    """Runs under trace-run: per-span time to make and end a span, BATCH at a time, flushed between."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from trace_run.agent import otlp_encoder

    tracer = trace.get_tracer("bench")
    provider = trace.get_tracer_provider()

    def spans(n):
        for _ in range(n):
            with tracer.start_as_current_span("SELECT test.users", kind=SpanKind.CLIENT, attributes=ATTRS):
                pass

    spans(BATCH)  # warm up; the exporter is built and takes encoded spans from here on
    provider.force_flush()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        spans(BATCH)
        times.append((time.perf_counter() - t0) / BATCH * 1e6)
        provider.force_flush()
    print(json.dumps({"us": times, "provider": type(provider).__name__,
                      "native_built": otlp_encoder._NATIVE_SPAN is not None}))


def queued(rounds: int, processes: int) -> dict:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    trace_run = os.path.join(os.path.dirname(sys.executable), "trace-run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    env.update({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "encoder-bench",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % server.server_address[1],
                "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
    samples: dict = {"true": [], "false": []}
    try:
        for _ in range(processes):
            for switch in samples:
                res = subprocess.run([trace_run, sys.executable, os.path.abspath(__file__), "--child", str(rounds)],
                                     env=dict(env, OTEL_TRACE_RUN_NATIVE_ENCODER=switch), capture_output=True,
                                     text=True, cwd="/tmp")
                if res.returncode != 0:
                    raise SystemExit("child failed:\n" + res.stderr[-2000:])
                out = json.loads(res.stdout.strip().splitlines()[-1])
                samples[switch].append(statistics.median(out["us"]))
    finally:
        server.shutdown()
    return {"OTEL_TRACE_RUN_NATIVE_ENCODER=" + k: _summary(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print("CPUs allowed: %s" % sorted(os.sched_getaffinity(0)))
    print("Encoding one 5-attribute CLIENT span, us (%d rounds of %d spans):" % (args.rounds, BATCH))
    for name, s in encode(args.rounds).items():
        print("  %-20s median %6.2f  min %6.2f  max %6.2f" % (name, s["median"], s["min"], s["max"]))
    print("Start to queued under trace-run, us per span (%d processes each, median of %d rounds each):"
          % (args.processes, args.rounds))
    for name, s in queued(args.rounds, args.processes).items():
        print("  %-36s median %6.2f  min %6.2f  max %6.2f" % (name, s["median"], s["min"], s["max"]))


if __name__ == "__main__":
    main()
