"""A grpcio OTLP trace service answering each call as a script says, in a process of its own
(gRPC's threads in the test process would make its forks abort now and again).

Modes, one per call (the last one repeats): `ok`; `code:NAME[:message]` (fails with that status,
e.g. `code:UNAVAILABLE`, `code:PERMISSION_DENIED:no such tenant`); `huge:BYTES` (ok, with an answer
that big); `retryinfo:SECONDS` (UNAVAILABLE
with a google.rpc.RetryInfo asking for that delay); `sleep:SECONDS` (then ok). Every call is
recorded (mode, span ids, metadata); spans are kept only from calls answered ok.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

_SERVER = r"""
import json, sys, time
from concurrent import futures
import grpc
from google.rpc import status_pb2  # noqa: F401  (ships with grpcio-status / googleapis-common-protos)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

script = json.loads(sys.argv[1])
port = int(sys.argv[2])
tls = json.loads(sys.argv[3])
calls = []

class Service(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        mode = script[min(len(calls), len(script) - 1)]
        calls.append(mode)
        ids = [s.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        meta = dict(context.invocation_metadata())
        print(json.dumps({"mode": mode, "spans": ids, "metadata": meta, "size": request.ByteSize()}), flush=True)
        if mode.startswith("sleep:"):
            time.sleep(float(mode.split(":")[1]))
        elif mode.startswith("code:"):
            _, name, *message = mode.split(":", 2)
            context.abort(getattr(grpc.StatusCode, name), message[0] if message else "scripted")
        elif mode.startswith("retryinfo:"):
            from google.protobuf.duration_pb2 import Duration
            from google.rpc.error_details_pb2 import RetryInfo
            seconds = float(mode.split(":")[1])
            info = RetryInfo(retry_delay=Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9)))
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "come back later")
        elif mode.startswith("huge:"):  # an answer of that many bytes (a partial success's message)
            answer = trace_service_pb2.ExportTraceServiceResponse()
            answer.partial_success.error_message = "x" * int(mode.split(":")[1])
            return answer
        return trace_service_pb2.ExportTraceServiceResponse()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                     options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
if tls:
    read = lambda p: open(p, "rb").read()
    creds = grpc.ssl_server_credentials([(read(tls["key"]), read(tls["cert"]))],
                                        root_certificates=read(tls["ca"]) if tls.get("ca") else None,
                                        require_client_auth=bool(tls.get("ca")))
    port = server.add_secure_port("127.0.0.1:%d" % port, creds)
else:
    port = server.add_insecure_port("127.0.0.1:%d" % port)
server.start()
print(json.dumps({"port": port}), flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop(0)
"""


class ScriptedGrpcServer:
    def __init__(self, script=("ok",), port: int = 0, tls: dict = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self._proc = subprocess.Popen([sys.executable, "-c", _SERVER, json.dumps(list(script)), str(port),
                                       json.dumps(tls or {})],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        first = self._proc.stdout.readline()
        if not first:
            raise RuntimeError("the scripted gRPC server did not start")
        self.port = json.loads(first)["port"]
        self.calls: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.calls.append(json.loads(line))

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def span_ids(self) -> list:
        return [i for c in self.calls if c["mode"] == "ok" or c["mode"].startswith("sleep:") for i in c["spans"]]

    def wait_calls(self, n: int, timeout: float = 15.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.calls)

    def stop(self) -> None:
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
        except Exception:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(2)
