"""`trace-run view`'s receivers, end to end: programs under trace-run (OTLP/HTTP and gRPC), the
SDK's stock exporters, OTLP JSON and gzip, a trace joined across two services, malformed and
oversized requests, and a load running while the API is queried."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from support import HERE, TRACE_RUN, clean_env, python, run_traced, write_script
from support.viewer import Viewer, request, sid, span, tid

APPS = os.path.join(HERE, "apps")
SERVICE = os.path.join(APPS, "http_service.py")

# A traced program: one span of its own, one sqlite3 span, and the proof that the viewer
# added no module to it.
PROGRAM = """
import json, sqlite3, sys
from opentelemetry import trace
with trace.get_tracer("app").start_as_current_span("work") as s:
    s.set_attribute("order.id", 42)
    sqlite3.connect(":memory:").execute("SELECT 1").fetchall()
    print(json.dumps({"trace_id": "%032x" % s.get_span_context().trace_id,
                      "viewer_modules": sorted(m for m in sys.modules if "viewer" in m)}))
"""


@pytest.fixture
def viewer(tmp_path):
    v = Viewer(str(tmp_path / "view.sqlite3")).start()
    yield v
    v.stop()


def _run_program(tmp_path, **env) -> dict:
    script = write_script(tmp_path, PROGRAM)
    proc = run_traced([python(), script], env=clean_env(OTEL_BSP_SCHEDULE_DELAY="50", **env), check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def _assert_program_trace(trace: dict, service: str) -> None:
    spans = {s["name"]: s for s in trace["spans"]}
    work = spans["work"]
    assert work["parent_span_id"] == "" and work["service"] == service and work["kind"] == "INTERNAL"
    assert work["attributes"]["order.id"] == 42 and work["resource"]["service.name"] == service
    assert work["scope"]["name"] == "app" and not work["missing_parent"]
    db = [s for s in trace["spans"] if s["attributes"].get("db.system.name") == "sqlite"]
    assert len(db) == 1 and db[0]["parent_span_id"] == work["span_id"] and db[0]["kind"] == "CLIENT"
    assert int(db[0]["start_ns"]) >= int(work["start_ns"]) and db[0]["duration_ms"] >= 0


def test_traced_program_over_otlp_http_adds_no_viewer_module(viewer, tmp_path):
    out = _run_program(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=viewer.http, OTEL_SERVICE_NAME="http-app")
    assert out["viewer_modules"] == []
    _assert_program_trace(viewer.wait_trace(out["trace_id"], spans=2), "http-app")


def test_traced_program_over_otlp_grpc(viewer, tmp_path):
    out = _run_program(tmp_path, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_SERVICE_NAME="grpc-app",
                       OTEL_EXPORTER_OTLP_ENDPOINT="http://" + viewer.grpc)
    _assert_program_trace(viewer.wait_trace(out["trace_id"], spans=2), "grpc-app")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_default_configuration_needs_no_setting(tmp_path):
    """The viewer on its default OTLP/HTTP port receives a program run with no OTEL_* at all."""
    deadline = time.monotonic() + 60
    while not _port_free(4318):  # another test of this kind may hold it for a moment
        assert time.monotonic() < deadline, "port 4318 stays busy"
        time.sleep(0.5)
    with Viewer(str(tmp_path / "v.sqlite3"), http_port=4318) as v:
        assert "send here with no setting" in v.banner
        out = _run_program(tmp_path)
        _assert_program_trace(v.wait_trace(out["trace_id"], spans=2), "unknown_service:app.py")


SDK_SCRIPT = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
if sys.argv[1] == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=sys.argv[2], insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http import Compression
    exporter = OTLPSpanExporter(endpoint=sys.argv[2] + "/v1/traces", compression=Compression.Gzip)
provider = TracerProvider(resource=Resource.create({"service.name": "sdk-" + sys.argv[1]}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("stock", "9.9")
with tracer.start_as_current_span("parent", kind=trace.SpanKind.SERVER) as p:
    p.set_attribute("list", [1, 2, 3])
    with tracer.start_as_current_span("child", links=[trace.Link(p.get_span_context(), {"why": "test"})]) as c:
        c.add_event("boom", {"exception.message": "x"})
        c.set_status(trace.Status(trace.StatusCode.ERROR, "bad thing"))
print("%032x" % p.get_span_context().trace_id)
provider.shutdown()
"""


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sdk_stock_exporters(viewer, tmp_path, protocol):
    script = write_script(tmp_path, SDK_SCRIPT)
    endpoint = viewer.http if protocol == "http" else "http://" + viewer.grpc
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, script, protocol, endpoint], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    trace_id = proc.stdout.split()[-1]
    trace = viewer.wait_trace(trace_id, spans=2)
    spans = {s["name"]: s for s in trace["spans"]}
    parent, child = spans["parent"], spans["child"]
    assert parent["kind"] == "SERVER" and parent["attributes"]["list"] == [1, 2, 3]
    assert parent["service"] == "sdk-" + protocol and parent["scope"] == {"name": "stock", "version": "9.9"}
    assert child["parent_span_id"] == parent["span_id"] and child["status_code"] == "ERROR"
    assert child["status_message"] == "bad thing"
    assert [(e["name"], e["attributes"]) for e in child["events"]] == [("boom", {"exception.message": "x"})]
    assert child["links"] == [{"trace_id": trace_id, "span_id": parent["span_id"], "attributes": {"why": "test"}}]
    listed = viewer.json("/api/traces?trace_id=" + trace_id)["traces"]
    assert len(listed) == 1 and listed[0]["error_count"] == 1 and listed[0]["root_name"] == "parent"


def test_otlp_json_with_hex_ids_enum_ints_and_string_ints(viewer):
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
        "scopeSpans": [{"scope": {"name": "j"}, "spans": [{
            "traceId": trace_id, "spanId": span_id, "parentSpanId": "", "name": "json span", "kind": 3,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000250000000",
            "attributes": [{"key": "n", "value": {"intValue": "7"}},
                           {"key": "ok", "value": {"boolValue": True}},
                           {"key": "raw", "value": {"bytesValue": "AAE="}},
                           {"key": "m", "value": {"kvlistValue": {"values": [
                               {"key": "a", "value": {"doubleValue": 1.5}}]}}}],
            "status": {"code": 2, "message": "nope"}}]}]}]}
    status, answer = viewer.post(gzip.compress(json.dumps(body).encode()), "application/json",
                                 headers={"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(answer) == {}
    s = viewer.wait_trace(trace_id)["spans"][0]
    assert (s["span_id"], s["name"], s["kind"], s["service"]) == (span_id, "json span", "CLIENT", "json-svc")
    assert s["attributes"] == {"n": 7, "ok": True, "raw": "AAE=", "m": {"a": 1.5}}
    assert (s["start_ns"], s["end_ns"], s["duration_ms"]) == ("1700000000000000000", "1700000000250000000", 250.0)
    assert (s["status_code"], s["status_message"]) == ("ERROR", "nope")


def _service(name: str, port: int, viewer: Viewer) -> subprocess.Popen:
    env = clean_env(OTEL_SERVICE_NAME=name, OTEL_EXPORTER_OTLP_ENDPOINT=viewer.http, OTEL_BSP_SCHEDULE_DELAY="50")
    return subprocess.Popen([TRACE_RUN, sys.executable, SERVICE, str(port), "make_server"], env=env, cwd=APPS,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=20) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_two_services_joined_in_one_trace_and_on_the_map(viewer):
    ports = _free_port(), _free_port()
    procs = [_service("frontend", ports[0], viewer), _service("backend", ports[1], viewer)]
    try:
        front, back = ("http://127.0.0.1:%d" % p for p in ports)
        _get(back + "/items/1")  # both up (the backend's own trace is a one-service trace)
        assert _get(front + "/call/requests?to=%s/items/7" % back)["status"] == 200
        assert _get(front + "/call/requests?to=%s/fail" % back)["status"] == 500
        listed = viewer.wait_list(lambda ts: len([t for t in ts if t["service_count"] == 2]) == 2,
                                  "?service=frontend")
    finally:
        for p in procs:
            p.terminate()
            p.communicate(timeout=20)
    ok, failed = sorted((t for t in listed if t["service_count"] == 2), key=lambda t: t["error_count"])
    assert ok["services"] == ["backend", "frontend"] and ok["root_service"] == "frontend"
    assert ok["root_name"] == "GET /call/<client>" and ok["missing_parents"] == 0 and ok["span_count"] == 3
    trace = viewer.wait_trace(ok["trace_id"], spans=3)["spans"]
    root = [s for s in trace if not s["parent_span_id"]]
    assert len(root) == 1 and root[0]["service"] == "frontend" and root[0]["kind"] == "SERVER"
    client = [s for s in trace if s["parent_span_id"] == root[0]["span_id"]]
    assert len(client) == 1 and client[0]["kind"] == "CLIENT" and client[0]["service"] == "frontend"
    server = [s for s in trace if s["parent_span_id"] == client[0]["span_id"]]
    assert len(server) == 1 and server[0]["service"] == "backend" and server[0]["name"] == "GET /items/<int:item_id>"
    assert not any(s["missing_parent"] for s in trace)
    assert failed["error_count"] >= 1
    services = viewer.json("/api/services")
    assert {"frontend", "backend"} <= set(services["services"])
    edges = [e for e in services["edges"] if (e["parent"], e["child"]) == ("frontend", "backend")]
    assert len(edges) == 1 and edges[0]["calls"] == 2 and edges[0]["errors"] == 1, services
    assert 0 < edges[0]["p50_ms"] <= edges[0]["p99_ms"]
    assert viewer.json("/api/span_names?service=backend")["names"] == ["GET /fail", "GET /items/<int:item_id>"]


def _raw_post(viewer: Viewer, headers: dict, body: bytes) -> int:
    host, port = viewer.http[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\n" + "".join("%s: %s\r\n" % kv for kv in headers.items())
        s.sendall(head.encode() + b"\r\n" + body)
        answer = s.recv(4096).decode("latin-1")
    return int(answer.split()[1])


def _still_works(viewer: Viewer, n: int) -> None:
    status, _ = viewer.post(request([span(tid(n), sid(n), "after", "svc", time.time_ns(), 1)]).SerializeToString())
    assert status == 200
    viewer.wait_trace(tid(n))


def test_malformed_and_oversized_http_requests_get_errors_and_the_viewer_keeps_working(viewer):
    proto, js = "application/x-protobuf", "application/json"
    assert viewer.post(b"\xff\xff\xff garbage", proto)[0] == 400
    assert viewer.post(b"{not json", js)[0] == 400
    assert viewer.post(b"[1, 2]", js)[0] == 400
    assert viewer.post(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}).encode(),
                       js)[0] == 400
    assert viewer.post(b"not gzip", proto, headers={"Content-Encoding": "gzip"})[0] == 400
    bad_ids = request([span("00" * 16, sid(1), "x", "s", 1, 1)])
    bad_ids.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01\x02"
    assert viewer.post(bad_ids.SerializeToString(), proto)[0] == 400
    status, body = viewer.post(b"{}", js, path="/v1/metrics")
    assert status == 404
    # over 32 MiB: announced (the body is never read) and hidden in a gzip bomb
    assert _raw_post(viewer, {"Content-Type": proto, "Content-Length": str(33 << 20)}, b"x" * 1000) == 413
    bomb = gzip.compress(b"\0" * (33 << 20))
    assert viewer.post(bomb, proto, headers={"Content-Encoding": "gzip"})[0] == 413
    _still_works(viewer, 1)


def test_malformed_and_oversized_grpc_requests_get_status_codes(viewer):
    import grpc

    channel = grpc.insecure_channel(viewer.grpc, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    try:
        with pytest.raises(grpc.RpcError) as bad:
            export(b"\xff\xff\xff garbage", timeout=20)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as big:
            export(b"\x0a" + b"\x80\x80\x80\x11" + b"\0" * (34 << 20), timeout=60)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        good = request([span(tid(2), sid(2), "grpc ok", "svc", time.time_ns(), 1)]).SerializeToString()
        assert export(good, timeout=20) == b""
    finally:
        channel.close()
    viewer.wait_trace(tid(2))
    _still_works(viewer, 3)


def test_load_while_the_api_is_queried(viewer):
    """8 senders x 50 requests x 50 spans while the list, a trace and the map are read."""
    errors: list = []

    def send(worker: int) -> None:
        try:
            for i in range(50):
                base = worker * 100000 + i * 100
                spans = [span(tid(base), sid(base), "root", "load-%d" % (worker % 3), time.time_ns(), 5)]
                spans += [span(tid(base), sid(base + k), "child %d" % k, "load-%d" % ((worker + k) % 3),
                               time.time_ns(), 1, parent=sid(base)) for k in range(1, 50)]
                status, _ = viewer.post(request(spans).SerializeToString())
                if status != 200:
                    errors.append(status)
        except Exception as exc:
            errors.append(exc)

    senders = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for t in senders:
        t.start()
    reads = 0
    while any(t.is_alive() for t in senders):
        listed = viewer.json("/api/traces?limit=20")["traces"]
        if listed:
            trace = viewer.json("/api/traces/" + listed[0]["trace_id"])
            assert trace["trace_id"] == listed[0]["trace_id"] and trace["spans"]
        viewer.json("/api/services")
        viewer.json("/api/traces?service=load-1&min_duration_ms=1")
        reads += 1
    for t in senders:
        t.join()
    assert errors == [] and reads > 0
    deadline = time.monotonic() + 30
    while True:
        listed = viewer.json("/api/traces?limit=500")["traces"]
        if len(listed) == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(listed) == 400 and all(t["span_count"] == 50 and t["missing_parents"] == 0 for t in listed)
    assert {t["root_name"] for t in listed} == {"root"}
    edges = viewer.json("/api/services")["edges"]
    # each trace: 49 children; those of another service than the root's are edges
    assert sum(e["calls"] for e in edges) == sum(
        sum(1 for k in range(1, 50) if (w + k) % 3 != w % 3) for w in range(8)) * 50


def test_host_other_than_localhost_warns_no_authentication(tmp_path):
    v = Viewer(str(tmp_path / "h.sqlite3"), "--host", "0.0.0.0").start()
    code, _, err = v.stop()
    assert "no authentication" in err and code == 0, err


def test_viewer_started_under_trace_run_does_not_trace_itself(tmp_path):
    """`trace-run python -m trace_run.viewer` pointed at its own receiver: only the sent trace arrives."""
    port = _free_port()
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:%d" % port, OTEL_BSP_SCHEDULE_DELAY="50")
    v = Viewer(str(tmp_path / "self.sqlite3"), env=env, http_port=port,
               command=[TRACE_RUN, sys.executable, "-m", "trace_run.viewer"]).start()
    try:
        v.post(request([span(tid(9), sid(9), "sent", "svc", time.time_ns(), 1)]).SerializeToString())
        v.wait_trace(tid(9))
        for _ in range(5):
            v.json("/api/traces")
        time.sleep(1.5)  # several export intervals of an agent, had one started
        assert [t["trace_id"] for t in v.json("/api/traces")["traces"]] == [tid(9)]
        assert v.json("/api/services")["services"] == ["svc"]
    finally:
        v.stop()


def test_trace_run_help_mentions_view_and_double_dash_runs_a_program_named_view(tmp_path):
    proc = run_traced(["--help"])
    assert "trace-run view" in proc.stdout
    tool = tmp_path / "view"
    tool.write_text("#!/bin/sh\necho my own view \"$@\"\n")
    tool.chmod(0o755)
    env = clean_env()
    env["PATH"] = str(tmp_path) + os.pathsep + env["PATH"]
    proc = run_traced(["--", "view", "file.txt"], env=env)
    assert (proc.returncode, proc.stdout) == (0, "my own view file.txt\n"), proc.stderr
