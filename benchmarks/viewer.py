"""`trace-run view` under load: ingest over OTLP/HTTP, page latency with a million spans stored,
and the viewer's memory while the store grows.

    .venv/bin/python benchmarks/viewer.py [--fill 1000000] [--ingest 400000] [--senders 4] [--json FILE]

1. Fill a fresh store directly (Store.insert, no HTTP: filling is not what is measured) with
   `--fill` spans, minus what step 2 sends: traces of 10 spans over 3 services, plus one
   1,000-span trace.
2. Start `trace-run view` on it and send `--ingest` spans over OTLP/HTTP protobuf (bodies of
   500 spans built beforehand, `--senders` keep-alive connections): spans/s from the first
   request to the last span readable through the API. The viewer's RSS is sampled meanwhile.
3. With the store full, time the API: the trace list (plain and filtered) and the 1,000-span
   trace, each 30 times (median and p95 of the wall time of one GET on a warm connection).

Targets (issue 18): >= 10,000 spans/s ingest; list < 100 ms; 1,000-span trace < 200 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats import median, pct  # noqa: E402
from trace_run.viewer.store import Store  # noqa: E402

TRACE_RUN = os.path.join(os.path.dirname(sys.executable), "trace-run")
SERVICES = ("web", "orders", "payments")
NAMES = ("GET /orders/<id>", "SELECT orders", "POST /pay", "redis GET", "publish orders")
T0 = time.time_ns() - 3600 * 10**9


def _row(trace: int, span: int, parent: int, start: int, dur_ns: int, service: str, name: str, error: bool):
    attrs = json.dumps({"http.request.method": "GET", "http.route": name, "order.id": trace % 1000,
                        "server.address": "127.0.0.1"}, separators=(",", ":"))
    resource = json.dumps({"service.name": service, "telemetry.sdk.language": "python"}, separators=(",", ":"))
    return ("%032x" % trace, "%016x" % span, "%016x" % parent if parent else "", name, 2 if not parent else 3,
            service, start, start + dur_ns, 2 if error else 0, "boom" if error else "", attrs, "[]", "[]", resource,
            '{"name":"bench","version":""}')


def fill(path: str, spans: int) -> str:
    """Direct insertion; returns the id of the 1,000-span trace."""
    store = Store(path, max_spans=10**9)
    big = 1 << 100  # inserted last: --max-spans drops the oldest traces first
    rows = [_row(big, 1, 0, T0, 900 * 10**6, "web", "GET /big", False)]
    rows += [_row(big, k, k // 2, T0 + k * 1000, 10**6, SERVICES[k % 3], NAMES[k % 5], k % 97 == 0)
             for k in range(2, 1001)]
    done, trace = 1000, 1
    rnd = random.Random(1)
    while done < spans:
        batch = []
        for _ in range(2000):
            start = T0 + trace * 3 * 10**6
            batch.append(_row(trace, trace << 4, 0, start, 50 * 10**6, "web", "GET /orders/<id>", False))
            for k in range(1, 10):
                batch.append(_row(trace, (trace << 4) + k, (trace << 4) + (k - 1) // 3, start + k * 1000,
                                  rnd.randrange(1, 40) * 10**6, SERVICES[k % 3], NAMES[k % 5], rnd.random() < 0.01))
            trace += 1
        store.insert(batch)
        done += len(batch)
    store.insert(rows)
    store.close()
    return "%032x" % big


def bodies(spans: int, per_request: int = 500) -> list:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    out = []
    base = 1 << 110
    sent = 0
    while sent < spans:
        req = ExportTraceServiceRequest()
        for service in SERVICES:
            rs = req.resource_spans.add()
            rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
            rs.scope_spans.add().scope.name = "bench"
        for i in range(per_request):
            n = sent + i
            trace, k = base + n // 10, n % 10
            s = req.resource_spans[k % 3].scope_spans[0].spans.add()
            s.trace_id = trace.to_bytes(16, "big")
            s.span_id = ((trace << 4) + k).to_bytes(16, "big")[8:]
            if k:
                s.parent_span_id = ((trace << 4) + (k - 1) // 3).to_bytes(16, "big")[8:]
            s.name = NAMES[k % 5]
            s.kind = 2 if k == 0 else 3
            s.start_time_unix_nano = time.time_ns() + k * 1000
            s.end_time_unix_nano = s.start_time_unix_nano + 2 * 10**6
            for key, value in (("http.request.method", "GET"), ("http.route", NAMES[k % 5]),
                               ("server.address", "127.0.0.1")):
                s.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
            s.attributes.append(KeyValue(key="order.id", value=AnyValue(int_value=n)))
        out.append(req.SerializeToString())
        sent += per_request
    return out


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_viewer(db: str):
    proc = subprocess.Popen([TRACE_RUN, "view", "--db", db, "--ui-port", "0", "--otlp-http-port", "0",
                             "--otlp-grpc-port", "-1"], stdout=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    banner = ""
    while "trace-run python app.py" not in banner:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("viewer did not start:\n" + banner)
        banner += line
    ui = int(banner.split("open http://127.0.0.1:")[1].split("/")[0])
    otlp = int(banner.split("OTLP/HTTP  http://127.0.0.1:")[1].split("/")[0])
    return proc, ui, otlp


def get(conn: http.client.HTTPConnection, path: str) -> tuple:
    t = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    return time.perf_counter() - t, resp.status, body


def ingest(ui: int, otlp: int, payloads: list, senders: int, pid: int) -> dict:
    queue = list(payloads)
    lock = threading.Lock()
    failures = []

    def send():
        conn = http.client.HTTPConnection("127.0.0.1", otlp, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(resp.status)
        conn.close()

    # the last trace of the last body: readable means everything before it is stored too
    last = json.dumps(None)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    req.ParseFromString(payloads[0])  # queue.pop() sends payloads[0] last
    last = max(s.trace_id for rs in req.resource_spans for s in rs.scope_spans[0].spans).hex()
    samples = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=send) for _ in range(senders)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples.append((round(time.perf_counter() - t0, 1), rss_kb(pid)))
        time.sleep(0.5)
    for t in threads:
        t.join()
    posted = time.perf_counter() - t0
    api = http.client.HTTPConnection("127.0.0.1", ui, timeout=60)
    while get(api, "/api/traces/" + last)[1] != 200:
        time.sleep(0.01)
    stored = time.perf_counter() - t0
    samples.append((round(stored, 1), rss_kb(pid)))
    spans = len(payloads) * 500
    return {"spans": spans, "failures": len(failures), "posted_s": round(posted, 2), "stored_s": round(stored, 2),
            "spans_per_s": round(spans / stored), "rss_kb_samples": samples}


def latency(ui: int, big: str, rounds: int = 30) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", ui, timeout=60)
    queries = {
        "list": "/api/traces",
        "list service=payments": "/api/traces?service=payments",
        "list errors=1": "/api/traces?errors=1",
        "list min_duration_ms=30": "/api/traces?min_duration_ms=30",
        "list name=POST /pay": "/api/traces?name=POST%20/pay",
        "trace 1,000 spans": "/api/traces/" + big,
        "services": "/api/services",
    }
    out = {}
    for label, path in queries.items():
        times = []
        for _ in range(rounds if label != "services" else 3):
            dt, status, body = get(conn, path)
            assert status == 200, (path, status, body[:200])
            times.append(dt * 1000)
        if label.startswith("trace"):
            assert len(json.loads(body)["spans"]) == 1000
        out[label] = {"median_ms": round(median(times), 1), "p95_ms": round(pct(times, 95), 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fill", type=int, default=1_000_000)
    ap.add_argument("--ingest", type=int, default=400_000)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "viewer-latest.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.sqlite3")
        t = time.perf_counter()
        big = fill(db, args.fill - args.ingest)
        print("filled %d spans directly in %.1f s" % (args.fill - args.ingest, time.perf_counter() - t), flush=True)
        payloads = bodies(args.ingest)
        proc, ui, otlp = start_viewer(db)
        try:
            result = {"ingest": ingest(ui, otlp, payloads, args.senders, proc.pid)}
            print("ingest over OTLP/HTTP: %(spans)d spans in %(stored_s)s s = %(spans_per_s)d spans/s "
                  "(failures: %(failures)d)" % result["ingest"], flush=True)
            rss = [kb for _, kb in result["ingest"]["rss_kb_samples"]]
            print("viewer RSS during ingest (MB, every 0.5 s): %s" % " ".join(str(kb // 1024) for kb in rss),
                  flush=True)
            result["latency_with_spans_stored"] = args.fill
            result["latency"] = latency(ui, big)
            for label, row in result["latency"].items():
                print("  %-26s median %7.1f ms  p95 %7.1f ms" % (label, row["median_ms"], row["p95_ms"]))
            result["db_mb"] = round(os.path.getsize(db) / 2**20)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    result["cpus"] = os.cpu_count()
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
