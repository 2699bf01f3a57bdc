"""A collector that answers 200 with a huge body (issue 14, item 12): the traced program reads at most a
small part of it, whichever transport sends the batch, and its output is unchanged."""

from __future__ import annotations

import re
import socket
import threading

import pytest
from support import clean_env, run_traced, write_script

HUGE = 300 * 1024 * 1024

APP = r"""
from opentelemetry import trace
tracer = trace.get_tracer("answer-app")
for i in range(20):
    with tracer.start_as_current_span("work-%d" % i):
        pass
print("spans made", flush=True)
trace.get_tracer_provider().force_flush()  # the export (and its answer) happens here
with open("/proc/self/status") as f:
    peak = [line for line in f if line.startswith("VmHWM:")][0].split()[1]
print("peak KiB", peak, flush=True)
"""


class HugeAnswerServer:
    """Reads each OTLP/HTTP request whole, then answers 200 with HUGE bytes, generated as they are sent."""

    def __init__(self):
        self.requests = 0
        self.sent = 0  # body bytes the client took before it closed the connection
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.endpoint = "http://127.0.0.1:%d" % self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        reader = conn.makefile("rb")
        try:
            while True:
                head = {}
                line = reader.readline()
                if not line:
                    return
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = line.decode("latin-1").partition(":")
                    head[key.strip().lower()] = value.strip()
                reader.read(int(head.get("content-length", "0")))
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                             b"Content-Length: %d\r\n\r\n" % HUGE)
                chunk = b"\0" * (1024 * 1024)
                for _ in range(HUGE // len(chunk)):
                    conn.sendall(chunk)
                    self.sent += len(chunk)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self._sock.close()


EXTRA = {
    "urllib3": {},
    "requests": {"HTTPS_PROXY": "http://127.0.0.1:9"},  # requests sends then (the proxy is not for http://)
    "stock-exporter": {"OTEL_TRACE_RUN_OTLP_ENCODER": "sdk"},
}


@pytest.mark.parametrize("transport", sorted(EXTRA))
def test_huge_200_answer_is_read_only_in_part(tmp_path, transport):
    server = HugeAnswerServer()
    extra = EXTRA[transport]
    try:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_TRACE_RUN_EXIT_TIMEOUT="3000",
                        OTEL_LOG_LEVEL="debug", **extra)
        proc = run_traced(["python", write_script(tmp_path, APP)], env=env, timeout=120)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("spans made\npeak KiB "), proc.stdout
    peak = int(re.search(r"peak KiB (\d+)", proc.stdout).group(1))
    assert server.requests >= 1
    assert peak < 120 * 1024, "the program grew to %d KiB reading the answer" % peak
    assert server.sent < 100 * 1024 * 1024  # the client closed the connection early
