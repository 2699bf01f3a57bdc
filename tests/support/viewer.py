"""`trace-run view` in a subprocess for tests: free ports, a temporary store, JSON helpers,
and OTLP requests built by hand (so tests control every id, time and attribute)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

from support import TRACE_RUN, clean_env

_UI = re.compile(r"open (http://[^/\s]+)/")
_HTTP = re.compile(r"OTLP/HTTP\s+(http://\S+)/v1/traces")
_GRPC = re.compile(r"OTLP/gRPC\s+(\S+:\d+)")


class Viewer:
    """A running `trace-run view`; ports are 0 (chosen by the OS) unless given."""

    def __init__(self, db: str, *args: str, env: dict = None, ui_port: int = 0, http_port: int = 0,
                 grpc_port: int = 0, command: list = None):
        self.db = db
        self.cmd = (command or [TRACE_RUN, "view"]) + [
            "--db", db, "--ui-port", str(ui_port), "--otlp-http-port", str(http_port),
            "--otlp-grpc-port", str(grpc_port)] + list(args)
        self.env = env if env is not None else clean_env()
        self.proc = None
        self.banner = ""

    def start(self, timeout: float = 30) -> Viewer:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "trace-run python app.py" in line:  # the banner's last line
                break
        self.banner = "".join(lines)
        ui, http, grpc = _UI.search(self.banner), _HTTP.search(self.banner), _GRPC.search(self.banner)
        if not (ui and http):
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            raise AssertionError("viewer did not start: exit %s\nstdout:\n%s%s\nstderr:\n%s"
                                 % (self.proc.returncode, self.banner, out, err))
        self.ui, self.http = ui.group(1), http.group(1)
        self.grpc = grpc.group(1) if grpc else None
        return self

    def stop(self, timeout: float = 20) -> tuple:
        """SIGTERM, wait; returns (exit code, rest of stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err

    def __enter__(self) -> Viewer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------
    def get(self, path: str):
        """(status, headers, parsed JSON or bytes)."""
        try:
            with urllib.request.urlopen(self.ui + path, timeout=30) as resp:
                status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        if (headers.get("Content-Type") or "").startswith("application/json"):
            return status, headers, json.loads(body)
        return status, headers, body

    def json(self, path: str):
        status, _, body = self.get(path)
        assert status == 200, (path, status, body)
        return body

    def post(self, body: bytes, content_type: str = "application/x-protobuf", path: str = "/v1/traces",
             headers: dict = None):
        req = urllib.request.Request(self.http + path, data=body, method="POST",
                                     headers=dict({"Content-Type": content_type}, **(headers or {})))
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_trace(self, trace_id: str, spans: int = 1, timeout: float = 20) -> dict:
        """Poll /api/traces/<id> until it holds `spans` spans; return it (or fail)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            status, _, body = self.get("/api/traces/" + trace_id)
            last = body
            if status == 200 and len(body["spans"]) >= spans:
                return body
            time.sleep(0.1)
        raise AssertionError("trace %s with %d spans never arrived; last answer %r" % (trace_id, spans, last))

    def wait_list(self, predicate, query: str = "", timeout: float = 20) -> list:
        deadline = time.monotonic() + timeout
        traces = []
        while time.monotonic() < deadline:
            traces = self.json("/api/traces" + query)["traces"]
            if predicate(traces):
                return traces
            time.sleep(0.1)
        raise AssertionError("the trace list never matched; last %r" % traces)


# -- OTLP requests built by hand --------------------------------------------------------------
def any_value(v):
    from opentelemetry.proto.common.v1 import common_pb2

    out = common_pb2.AnyValue()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, bytes):
        out.bytes_value = v
    elif isinstance(v, (list, tuple)):
        out.array_value.values.extend(any_value(x) for x in v)
    elif isinstance(v, dict):
        out.kvlist_value.values.extend(key_values(v))
    else:
        out.string_value = str(v)
    return out


def key_values(attrs: dict) -> list:
    from opentelemetry.proto.common.v1 import common_pb2

    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def span(trace_id: str, span_id: str, name: str, service: str, start_ns: int, duration_ms: float,
         parent: str = "", kind: int = 2, error: bool = False, attrs: dict = None, **extra) -> dict:
    """A span description for `request`."""
    return dict(trace_id=trace_id, span_id=span_id, parent=parent, name=name, service=service, start=start_ns,
                end=start_ns + int(duration_ms * 1e6), kind=kind, error=error, attrs=attrs or {}, **extra)


def request(spans: list, resource: dict = None):
    """An ExportTraceServiceRequest: one ResourceSpans per service."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    req = trace_service_pb2.ExportTraceServiceRequest()
    by_service: dict = {}
    for s in spans:
        by_service.setdefault(s["service"], []).append(s)
    for service, group in by_service.items():
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(key_values(dict({"service.name": service}, **(resource or {}))))
        ss = rs.scope_spans.add()
        ss.scope.name = "tests.viewer"
        ss.scope.version = "1.0"
        for s in group:
            p = ss.spans.add()
            p.trace_id = bytes.fromhex(s["trace_id"])
            p.span_id = bytes.fromhex(s["span_id"])
            if s["parent"]:
                p.parent_span_id = bytes.fromhex(s["parent"])
            p.name = s["name"]
            p.kind = s["kind"]
            p.start_time_unix_nano = s["start"]
            p.end_time_unix_nano = s["end"]
            p.attributes.extend(key_values(s["attrs"]))
            if s["error"]:
                p.status.code = trace_pb2.Status.STATUS_CODE_ERROR
                p.status.message = s.get("message", "failed")
            for ev in s.get("events", ()):
                e = p.events.add()
                e.name, e.time_unix_nano = ev[0], ev[1]
                e.attributes.extend(key_values(ev[2]))
            for link in s.get("links", ()):
                lk = p.links.add()
                lk.trace_id, lk.span_id = bytes.fromhex(link[0]), bytes.fromhex(link[1])
    return req


def tid(n: int) -> str:
    return "%032x" % (0xABC0000000000000000 + n)


def sid(n: int) -> str:
    return "%016x" % (0x5000000000000 + n)


def now_ns() -> int:
    return time.time_ns()


def sdk_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
