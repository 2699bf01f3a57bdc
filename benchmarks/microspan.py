"""Per-span cost, from start to exported bytes, in each virtualenv.

    python benchmarks/microspan.py [--short]        # all modes, prints a table

One span = `start_as_current_span` with 5 attributes (built once) + end, then the
BatchSpanProcessor, OTLP protobuf encoding and an HTTP POST to a local receiver.
Spans are made in batches of 500 (below the 512 export batch, so that nothing is
exported while they are made) and each batch is flushed: "request thread" is the
time to make them, "export" the time of force_flush (encode + send), both per span.
Modes (each in a fresh process, pinned to CPU 1; the receiver on CPU 0):
- noop:   the API alone, no SDK (what an uninstrumented library call pays);
- sdk_off: the bare SDK with the always_off sampler (what an unsampled span pays);
- sdk:    the bare SDK: TracerProvider + BatchSpanProcessor + the stock OTLP/HTTP exporter;
          also the official encoder alone (encode_spans(...).SerializeToString()) and, in the
          tracerun venv, trace-run's encoder alone on the same spans (its bytes must be equal);
- global: whatever the agent installed (`trace-run python ...`, `opentelemetry-instrument python ...`);
- ddtrace: `ddtrace-run python ...`, spans made with ddtrace's own tracer (`tracer.trace` + the same
          5 tags), sent to the same receiver answering as the Datadog agent (MessagePack).
Every mode except noop must deliver all its spans to the receiver, or the table says so.
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 500
ATTRS = {
    "db.system.name": "postgresql",
    "db.namespace": "test",
    "db.operation.name": "SELECT",
    "db.query.text": "SELECT id, name FROM users WHERE id = ?",
    "server.port": 5432,
}


def _spans(tracer, n: int) -> None:
    from opentelemetry.trace import SpanKind

    for _ in range(n):
        with tracer.start_as_current_span("SELECT test.users", kind=SpanKind.CLIENT, attributes=ATTRS):
            pass


class _DatadogTracer:
    """ddtrace's tracer behind the one call _spans makes (`start_as_current_span`)."""

    def __init__(self):
        try:
            from ddtrace.trace import tracer
        except ImportError:  # ddtrace < 3
            from ddtrace import tracer
        self.tracer = tracer

    def start_as_current_span(self, name, kind=None, attributes=None):
        span = self.tracer.trace(name, service="microspan", span_type="sql")
        span.set_tags(attributes)
        return span

    def force_flush(self):
        self.tracer.flush()


def measure(mode: str, endpoint: str, batches: int) -> dict:
    from opentelemetry import trace

    if mode == "ddtrace":
        provider = tracer = _DatadogTracer()
    elif mode in ("sdk", "sdk_off"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider, sampling
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(sampler=sampling.ALWAYS_OFF if mode == "sdk_off" else sampling.ALWAYS_ON)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces")))
        tracer = provider.get_tracer("bench")
    else:
        provider = trace.get_tracer_provider()
        tracer = trace.get_tracer("bench")
    flush = getattr(provider, "force_flush", None)
    _spans(tracer, 200)  # warm up
    if flush:
        flush()
    made = exported = 0.0
    for _ in range(batches):
        t0 = time.perf_counter()
        _spans(tracer, BATCH)
        t1 = time.perf_counter()
        if flush:
            flush()
        t2 = time.perf_counter()
        made += t1 - t0
        exported += t2 - t1
    n = batches * BATCH
    out = {"mode": mode, "provider": type(provider).__name__, "spans": n + 200,
           "request_us": made / n * 1e6, "export_us": exported / n * 1e6}
    if mode == "sdk":
        out.update(_encode_only(endpoint))
    return out


def _post_only(endpoint: str, data: bytes) -> dict:
    """One encoded batch POSTed by each of the SDK's transports (what trace-run's exporter picks
    between): CPU and wall time per POST, the best of 5 runs of 50 POSTs."""
    out = {}
    try:
        from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
        from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
    except ImportError:
        return out
    headers = {"Content-Type": "application/x-protobuf"}
    for name, transport in (("requests", RequestsHTTPTransport()), ("urllib3", Urllib3HTTPTransport())):
        cpu = wall = float("inf")
        for _ in range(6):  # the first run warms the connection
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(50):
                # not /v1/traces: the receiver counts only the spans of the runs themselves
                transport.request("POST", endpoint + "/post-only", headers=headers, timeout=10, data=data)
            cpu, wall = min(cpu, (time.process_time() - c0) / 50), min(wall, (time.perf_counter() - t0) / 50)
        out["post_%s" % name] = {"cpu_us": cpu * 1e6, "wall_us": wall * 1e6}
    return out


def _encode_only(endpoint: str) -> dict:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mem = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mem))
    _spans(provider.get_tracer("bench"), BATCH)
    spans = mem.get_finished_spans()
    out = {}
    candidates = [("encode_us", lambda: encode_spans(spans).SerializeToString())]
    try:  # trace-run's encoder, where it is installed; its bytes must be the official ones
        from trace_run.agent.otlp_encoder import Encoder

        encoder = Encoder(pause=False)
        candidates.append(("tracerun_encode_us", lambda: encoder.encode(spans)))
    except ImportError:
        pass
    results = []
    for key, encode in candidates:
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            data = encode()
            best = min(best, time.perf_counter() - t0)
        out[key] = best / len(spans) * 1e6
        results.append(data)
    if len(results) == 2 and results[0] != results[1]:
        raise SystemExit("trace-run's encoder gave other bytes than the official encoder")
    out["bytes_per_span"] = len(results[0]) / len(spans)
    if len(results) == 2:
        out.update(_post_only(endpoint, results[1]))
    return out


# -- driver (runs with the harness's python) ------------------------------------------------------


def run_all(short: bool = False, configs=("bare", "tracerun", "otel", "ddtrace")) -> tuple:
    import subprocess

    sys.path.insert(0, HERE)
    import venvs
    from overhead import APP_CPU, Helper, pinned
    from stats import median, table

    batches, repeats = (4, 1) if short else (20, 3)
    sink = Helper("sink")
    cases = []
    if "tracerun" in configs:
        cases += [("API only (no SDK)", "tracerun", [], "noop"),
                  ("bare SDK, span not sampled (always_off)", "tracerun", [], "sdk_off"),
                  ("bare SDK + BatchSpanProcessor + OTLP/HTTP", "tracerun", [], "sdk"),
                  ("trace-run", "tracerun", ["trace-run"], "global")]
    if "otel" in configs:
        cases += [("opentelemetry-instrument", "otel", ["opentelemetry-instrument"], "global")]
    if "ddtrace" in configs:
        cases += [("ddtrace-run (ddtrace's own tracer)", "ddtrace", ["ddtrace-run"], "ddtrace")]
    samples: dict = {c[0]: [] for c in cases}
    try:
        for _ in range(repeats):
            for label, venv, launcher, mode in cases:
                env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DD_", "PYTHON"))}
                env.update({"PATH": os.path.join(venvs.path(venv), "bin") + os.pathsep + env.get("PATH", ""),
                            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SERVICE_NAME": "microspan",
                            "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
                            "DD_TRACE_AGENT_URL": sink.url, "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
                            "DD_REMOTE_CONFIGURATION_ENABLED": "false", "DD_TRACE_STARTUP_LOGS": "false"})
                before = sink.stats()["spans"]
                cmd = pinned(APP_CPU) + [venvs.bin_path(venv, x) for x in launcher] + [
                    venvs.bin_path(venv), os.path.abspath(__file__), mode, sink.url, str(batches)]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/tmp")
                if res.returncode != 0:
                    raise SystemExit("microspan %s failed:\n%s" % (label, res.stderr[-2000:]))
                out = json.loads(res.stdout.strip().splitlines()[-1])
                time.sleep(0.2)
                out["received"] = sink.stats()["spans"] - before
                samples[label].append(out)
    finally:
        sink.stop()
    rows, data = [], {}
    for label, _venv, _launcher, mode in cases:
        s = samples[label]
        req, exp = median([x["request_us"] for x in s]), median([x["export_us"] for x in s])
        enc = median([x["encode_us"] for x in s]) if "encode_us" in s[0] else None
        ours = median([x["tracerun_encode_us"] for x in s]) if "tracerun_encode_us" in s[0] else None
        lost = sum(x["spans"] for x in s) - sum(x["received"] for x in s) if mode not in ("noop", "sdk_off") else 0
        rows.append([label, "%.1f" % req, "%.1f" % exp if mode not in ("noop", "sdk_off") else "-",
                     "%.1f" % (req + exp),
                     "%.1f (%.0f B/span)" % (enc, median([x["bytes_per_span"] for x in s])) if enc else "",
                     "%.1f (same bytes)" % ours if ours else "", s[0]["provider"], lost])
        data[label] = {"request_us": round(req, 2), "export_us": round(exp, 2), "encode_us": enc and round(enc, 2),
                       "tracerun_encode_us": ours and round(ours, 2), "spans_not_received": lost,
                       "provider": s[0]["provider"]}
    text = ("### Per span, start to exported bytes (%d x %d spans, 5 attributes, median of %d process(es))\n\n"
            % (batches, BATCH, repeats)
            + table(["pipeline", "request thread us", "export (encode+POST) us", "total us",
                     "official encoder alone us", "trace-run encoder alone us", "provider", "spans not received"],
                    rows))
    posts = [x for label, *_ in cases for x in samples[label] if "post_requests" in x]
    if posts:
        post_rows = []
        for name in ("requests", "urllib3"):
            cpu = median([x["post_" + name]["cpu_us"] for x in posts])
            wall = median([x["post_" + name]["wall_us"] for x in posts])
            post_rows.append([name, "%.0f" % cpu, "%.0f" % wall])
            data["post_" + name] = {"cpu_us": round(cpu), "wall_us": round(wall)}
        text += ("\n\nOne %d-span batch (%d bytes, trace-run's encoding) POSTed by each of the SDK's transports, "
                 "per POST (best of 5 x 50, median of %d process(es)):\n\n"
                 % (BATCH, round(BATCH * posts[0]["bytes_per_span"]), len(posts))
                 + table(["transport", "CPU us", "wall us"], post_rows))
    return text, data


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] in ("noop", "sdk", "sdk_off", "global", "ddtrace"):
        print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
    else:
        text, _ = run_all(short="--short" in sys.argv)
        print(text)
