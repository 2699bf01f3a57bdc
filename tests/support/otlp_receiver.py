"""An OTLP receiver for tests: gRPC and HTTP/protobuf, in this process.

Spans arrive from programs run under trace-run in subprocesses; tests read
them as plain `Span` records and also the raw bytes (to prove that no secret
left the process).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

# The gRPC side runs in a process of its own and forwards each request here:
# gRPC's threads in the test process would make its many forks (every
# subprocess) abort now and again in gRPC's at-fork handlers.
_GRPC_SIDECAR = r"""
import json, sys, urllib.request
from concurrent import futures
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
forward = "http://127.0.0.1:%s/grpc-forward" % sys.argv[1]

class Service(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        meta = json.dumps(dict(context.invocation_metadata()))
        req = urllib.request.Request(forward, data=request.SerializeToString(),
                                     headers={"X-Grpc-Metadata": meta}, method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        return trace_service_pb2.ExportTraceServiceResponse()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop(0)
"""

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class Span:
    """One received span, flattened for assertions."""

    def __init__(self, span, resource: dict, scope: str):
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex() or None
        self.name = span.name
        self.kind = KINDS.get(span.kind, str(span.kind))
        self.attributes = _attrs(span.attributes)
        self.status = STATUS.get(span.status.code, str(span.status.code))
        self.status_message = span.status.message
        self.events = [(e.name, _attrs(e.attributes)) for e in span.events]
        self.links = [(link.trace_id.hex(), link.span_id.hex()) for link in span.links]
        self.resource = resource
        self.service = resource.get("service.name")
        self.scope = scope
        self.start = span.start_time_unix_nano
        self.end = span.end_time_unix_nano
        self.trace_state = span.trace_state
        self.flags = span.flags

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6

    def __repr__(self) -> str:
        return "<Span %s %s %s trace=%s id=%s parent=%s %s>" % (
            self.name, self.kind, self.status, self.trace_id[:8], self.span_id[:8],
            (self.parent_id or "-")[:8], self.service)


class Receiver:
    """Collects spans from both transports; `wait_for` polls until a condition holds."""

    def __init__(self, keep_alive: bool = False):
        self._lock = threading.Lock()
        self.requests: list = []  # raw ExportTraceServiceRequest bytes
        self.spans: list = []
        self.http_status = 200  # tests may make the HTTP endpoint fail
        self.http_calls = 0
        self.grpc_calls = 0
        self.headers_seen: list = []
        self.paths_seen: list = []  # request targets of OTLP/HTTP posts, query included
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path == "/grpc-forward":
                    receiver.grpc_calls += 1
                    receiver.headers_seen.append(json.loads(self.headers["X-Grpc-Metadata"]))
                    receiver._add(body)
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.http_calls += 1
                receiver.headers_seen.append(dict(self.headers.items()))
                receiver.paths_seen.append(self.path)
                status = receiver.http_status
                if status == 200 and self.path.split("?", 1)[0].rstrip("/").endswith("/v1/traces"):
                    encoding = (self.headers.get("Content-Encoding") or "").lower()
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    receiver._add(body)
                    out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                else:
                    status = status if status != 200 else 404
                    out = b""
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        if keep_alive:  # as collectors do: the exporter's connection stays open in its pool
            Handler.protocol_version = "HTTP/1.1"
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> Receiver:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self._grpc = subprocess.Popen(
            [sys.executable, "-c", _GRPC_SIDECAR, str(self.http_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.grpc_port = int(self._grpc.stdout.readline())
        return self

    def stop(self) -> None:
        try:
            self._grpc.stdin.close()
            self._grpc.wait(timeout=5)
        except Exception:
            self._grpc.kill()
        self._http.shutdown()
        self._http.server_close()

    @property
    def http_endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self.http_port

    @property
    def grpc_endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self.grpc_port

    def env(self, protocol: str = "http/protobuf", **extra) -> dict:
        """Environment for a program under trace-run exporting here quickly."""
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.grpc_endpoint if protocol == "grpc" else self.http_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        env.update({k: str(v) for k, v in extra.items()})
        return env

    # -- data -----------------------------------------------------------------------
    def _add(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for rs in request.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans.append(Span(span, resource, ss.scope.name))
        with self._lock:
            self.requests.append(body)
            self.spans.extend(spans)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.spans.clear()
            self.headers_seen.clear()

    def raw_bytes(self) -> bytes:
        with self._lock:
            return b"".join(self.requests)

    def wait_for(self, predicate=None, timeout: float = 15.0, count: int = None) -> list:
        """Poll until predicate(spans) is true (or `count` spans arrived); return the spans."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if count is not None and len(spans) >= count:
                return spans
            if predicate is not None and predicate(spans):
                return spans
            if time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def by_name(self, name: str) -> list:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def traces(self) -> dict:
        out: dict = {}
        with self._lock:
            for s in self.spans:
                out.setdefault(s.trace_id, []).append(s)
        return out
