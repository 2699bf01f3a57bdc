"""Misbehaving OTLP endpoints and a throw-away certificate authority, for the fault and secret tests.

FaultServer speaks just enough HTTP/1.1 on a raw socket to misbehave in the ways a
real collector or network does: hang, answer garbage, close mid-request, refuse
with 429/503 and Retry-After, fail TLS. Requests it accepts ("ok") are parsed
like the OTLP receiver does, so tests can count what arrived.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FaultServer:
    """One OTLP/HTTP (or raw TCP, for gRPC clients) endpoint with a script of behaviours.

    `script` is a list of modes used one per request, the last one repeating:
      ok | hang | garbage | garbage200 | close | status:<code>[:<retry-after>]
      | max:<bytes> (413 for a bigger body, else ok) | slow:<seconds> (takes the spans, answers later)
    """

    def __init__(self, script, port: int = 0, tls: ssl.SSLContext = None):
        self.script = list(script)
        self.tls = tls
        self.calls: list = []  # (monotonic time, mode) per request
        self.span_ids: list = []  # span ids (hex) of every accepted span, duplicates kept
        self.bodies: list = []
        self.errors: list = []
        self.too_big = 0  # requests refused by a max:<bytes> mode
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._held: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def _next_mode(self) -> str:
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.errors.append(exc)
                    conn.close()
                    return
            self._handle_requests(conn)
        except OSError:
            pass
        finally:
            if conn not in self._held:
                try:
                    conn.close()
                except OSError:
                    pass

    def _handle_requests(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        while True:
            head = _read_head(reader)
            if head is None:
                return
            mode = self._next_mode()
            with self._lock:
                self.calls.append((time.monotonic(), mode))
            if mode == "close":
                return  # headers read, body not: the connection drops mid-request
            length = int(head.get("content-length", "0"))
            body = reader.read(length)
            if mode == "hang":
                self._held.append(conn)
                self._stop.wait()
                return
            if mode == "garbage":
                conn.sendall(os.urandom(64) + b"\r\n\r\nnot http at all\r\n")
                return
            if mode == "garbage200":
                junk = os.urandom(200)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(junk) + junk)
                continue
            if mode.startswith("max:") and length > int(mode[4:]):  # a collector's request size limit
                with self._lock:
                    self.too_big += 1
                conn.sendall(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n")
                continue
            if mode.startswith("slow:"):  # takes the spans, answers after a while
                self._accept(body)
                if self._stop.wait(float(mode[5:])):
                    return
                self._answer_ok(conn)
                continue
            if mode.startswith("status:"):
                parts = mode.split(":")
                extra = ("Retry-After: %s\r\n" % parts[2]) if len(parts) > 2 else ""
                conn.sendall(("HTTP/1.1 %s Failing\r\n%sContent-Length: 0\r\n\r\n" % (parts[1], extra)).encode())
                continue
            self._accept(body)
            self._answer_ok(conn)

    @staticmethod
    def _answer_ok(conn: socket.socket) -> None:
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(out) + out)

    def _accept(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        ids = [span.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
        with self._lock:
            self.bodies.append(body)
            self.span_ids.extend(ids)

    def modes_seen(self) -> list:
        with self._lock:
            return [m for _, m in self.calls]

    def stop(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        for conn in self._held:
            try:
                conn.close()
            except OSError:
                pass


def _read_head(reader) -> dict:
    line = reader.readline(65536)
    if not line:
        return None
    head = {}
    while True:
        line = reader.readline(65536)
        if not line or line in (b"\r\n", b"\n"):
            break
        key, _, value = line.decode("latin-1").partition(":")
        head[key.strip().lower()] = value.strip()
    return head


# -- a test certificate authority (openssl CLI) -----------------------------------------


def _openssl(*args, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder, name: str = "ca") -> dict:
    """A CA plus a server certificate for 127.0.0.1/localhost and a client certificate, signed by it."""
    folder = str(folder)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=trace-run test %s" % name,
             "-keyout", name + ".key", "-out", name + ".pem", cwd=folder)
    ext = os.path.join(folder, name + "-server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    cext = os.path.join(folder, name + "-client.ext")
    with open(cext, "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for role, extfile in (("server", ext), ("client", cext)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % ("localhost" if role == "server" else
                 "trace-run client"), "-keyout", "%s-%s.key" % (name, role), "-out", "%s-%s.csr" % (name, role),
                 cwd=folder)
        _openssl("x509", "-req", "-in", "%s-%s.csr" % (name, role), "-CA", name + ".pem", "-CAkey", name + ".key",
                 "-CAcreateserial", "-days", "2", "-extfile", extfile, "-out", "%s-%s.pem" % (name, role), cwd=folder)
    return {
        "ca": os.path.join(folder, name + ".pem"),
        "server_cert": os.path.join(folder, name + "-server.pem"),
        "server_key": os.path.join(folder, name + "-server.key"),
        "client_cert": os.path.join(folder, name + "-client.pem"),
        "client_key": os.path.join(folder, name + "-client.key"),
    }


def server_tls_context(ca: dict, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca["server_cert"], ca["server_key"])
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca["ca"])
    return ctx
