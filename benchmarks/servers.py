"""Helper processes of the overhead benchmark (stdlib only, each in its own process).

    python servers.py sink PORTFILE        span-counting receiver: OTLP/HTTP (POST /v1/traces) and
                                           the Datadog agent's API (PUT /v0.4|/v0.5/traces, GET /info)
    python servers.py grpc-sink PORTFILE   the same counting for OTLP/gRPC (needs grpcio: run it
                                           with the `sink` venv's python); stats over HTTP
    python servers.py downstream PORTFILE  tiny HTTP server the app calls with `requests`
    python servers.py drive URL SECONDS    load driver when `wrk` is missing (one connection
                                           at a time, like `wrk -c1`); prints JSON

The sinks keep the bodies they receive as they are and decode them when `GET /stats` is asked
(after a run; or, in a thread beside the answers, when more than 256 MB wait), so that decoding takes no
CPU from the load driver during a measured run and never delays an answer. OTLP is decoded with only
the protobuf framing needed (ResourceSpans > ScopeSpans > Span, and the span name); Datadog payloads
with msgpack_lite.py.
`GET /stats` returns {"spans", "kept", "exports", "bytes", "names", "paths"} as JSON: "kept" are the
spans a backend keeps (for ddtrace, those of traces with sampling priority > 0; for OTLP, all).
The PORTFILE holds the port, or for grpc-sink "GRPC_PORT STATS_PORT".
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _varint(buf: bytes, i: int) -> tuple:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value or bytes) of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield field, wire, value


def span_names(body: bytes) -> list:
    """Names of the spans in an ExportTraceServiceRequest."""
    names = []
    for f1, w1, resource_spans in _fields(body):
        if f1 != 1 or w1 != 2:
            continue
        for f2, w2, scope_spans in _fields(resource_spans):
            if f2 != 2 or w2 != 2:
                continue
            for f3, w3, span in _fields(scope_spans):
                if f3 != 2 or w3 != 2:
                    continue
                name = ""
                for f4, w4, value in _fields(span):
                    if f4 == 5 and w4 == 2:
                        name = value.decode("utf-8", "replace")
                        break
                names.append(name)
    return names


class Received:
    """What a sink got: bodies kept raw during a run, decoded when the stats are read.

    Past DECODE_AT bytes waiting (the long memory runs) they are decoded by a thread of their own, never on
    the way to an answer: a sink that stalled its answer while it decoded (as this one did until session 22,
    16 MB in: ~0.2 s on an OTLP batch's answer) filled the queue of an agent exporting ~20k spans/s, and that
    agent's spans were dropped by the sink's doing (FastAPI /plain under trace-run, on the fastest hosts)."""

    DECODE_AT = 256 << 20  # bytes waiting before they are decoded anyway, beside the answers

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list = []
        self.pending_bytes = 0
        self.decoder = None  # the thread decoding what was waiting past DECODE_AT, while it runs
        self.stats = {"spans": 0, "kept": 0, "exports": 0, "bytes": 0, "names": {}, "paths": {}, "errors": 0}

    def add(self, path: str, body: bytes) -> None:
        with self.lock:
            s = self.stats
            s["exports"] += 1
            s["bytes"] += len(body)
            s["paths"][path] = s["paths"].get(path, 0) + 1
            self.pending.append((path, body))
            self.pending_bytes += len(body)
            if self.pending_bytes > self.DECODE_AT and self.decoder is None:
                bodies, self.pending, self.pending_bytes = self.pending, [], 0
                self.decoder = threading.Thread(target=self._decode_aside, args=(bodies,), daemon=True)
                self.decoder.start()

    def snapshot(self) -> bytes:
        decoder = self.decoder
        if decoder is not None:
            decoder.join()
        with self.lock:
            self._count(self._decode(self.pending))
            self.pending, self.pending_bytes = [], 0
            return json.dumps(self.stats).encode()

    def _decode_aside(self, bodies: list) -> None:
        counted = self._decode(bodies)
        with self.lock:
            self._count(counted)
            self.decoder = None

    @staticmethod
    def _decode(bodies: list) -> tuple:
        """(spans, kept, names, errors) of `bodies`."""
        from msgpack_lite import datadog_spans

        spans = kept = errors = 0
        names: dict = {}
        for path, body in bodies:
            try:
                got = datadog_spans(path, body) if "/traces" in path and path.startswith("/v0.") else \
                    [(n, True) for n in span_names(body)]
            except (ValueError, IndexError, KeyError, TypeError):
                errors += 1
                continue
            spans += len(got)
            for name, keep in got:
                kept += keep
                if keep:
                    names[name] = names.get(name, 0) + 1
        return spans, kept, names, errors

    def _count(self, counted: tuple) -> None:
        spans, kept, names, errors = counted
        s = self.stats
        s["spans"] += spans
        s["kept"] += kept
        s["errors"] += errors
        for name, n in names.items():
            s["names"][name] = s["names"].get(name, 0) + n


RECEIVED = Received()
# What the Datadog agent (7.x) answers on /info, less what would switch features on in the tracer.
AGENT_INFO = {"version": "7.60.0", "endpoints": ["/v0.4/traces", "/v0.5/traces", "/info", "/debugger/v1/input",
                                                "/debugger/v2/input", "/debugger/v1/diagnostics"],
              "client_drop_p0s": False, "span_meta_structs": False, "config": {"statsd_port": 0}}


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, *args) -> None:
        pass

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        path = self.path.split("?")[0]
        if path.endswith("/v1/traces") or (path.startswith("/v0.") and path.endswith("/traces")):
            RECEIVED.add(path, body)
        else:  # not spans (the microbenchmark's POST-only requests, ddtrace's other endpoints)
            with RECEIVED.lock:
                RECEIVED.stats["paths"][path] = RECEIVED.stats["paths"].get(path, 0) + 1
        if path.startswith("/v0."):  # the Datadog agent answers with the sampling rates to apply
            self._reply(200, b'{"rate_by_service": {"service:,env:": 1.0}}', "application/json")
        else:
            self._reply(200, b"", "application/x-protobuf")

    do_PUT = do_POST

    def do_GET(self) -> None:
        if self.path.startswith("/info"):
            self._reply(200, json.dumps(AGENT_INFO).encode(), "application/json")
            return
        self._reply(200, RECEIVED.snapshot(), "application/json")


def serve_grpc(portfile: str) -> None:
    """OTLP/gRPC receiver: TraceService/Export bodies counted like the HTTP sink's."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    def export(request: bytes, context) -> bytes:
        RECEIVED.add("/v1/traces", request)
        return b""  # an empty ExportTraceServiceResponse

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stats = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    stats.daemon_threads = True
    _write_port(portfile, "%d %d" % (port, stats.server_address[1]))
    stats.serve_forever()


class _Downstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _write_port(portfile: str, text: str) -> None:
    with open(portfile + ".tmp", "w") as f:
        f.write(text)
    os.replace(portfile + ".tmp", portfile)


def serve(handler, portfile: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    _write_port(portfile, str(server.server_address[1]))
    server.serve_forever()


def drive(url: str, seconds: float) -> dict:
    """GET url over and over, one connection at a time, for `seconds`; latencies in µs."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (u.path or "/", u.netloc)).encode()
    addr = (u.hostname, u.port or 80)
    lat, errors = [], 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        try:
            with socket.create_connection(addr, timeout=10) as s:
                s.sendall(request)
                chunks = []
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
            ok = b"".join(chunks)[9:12] == b"200"
        except OSError:
            ok = False
        lat.append((time.perf_counter() - t0) * 1e6)
        errors += 0 if ok else 1
    elapsed = time.perf_counter() - start
    lat.sort()

    def p(q):
        return lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 0.0

    return {"requests": len(lat), "errors": errors, "rps": len(lat) / elapsed,
            "p50_us": p(0.50), "p90_us": p(0.90), "p99_us": p(0.99)}


def main(argv) -> int:
    mode = argv[1]
    if mode == "sink":
        serve(_Sink, argv[2])
    elif mode == "grpc-sink":
        serve_grpc(argv[2])
    elif mode == "downstream":
        serve(_Downstream, argv[2])
    elif mode == "drive":
        print(json.dumps(drive(argv[2], float(argv[3]))))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
