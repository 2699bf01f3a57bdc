"""Helper processes of the overhead benchmark (stdlib only, each in its own process).

    python servers.py sink PORTFILE        OTLP/HTTP receiver that counts spans (and names)
    python servers.py downstream PORTFILE  tiny HTTP server the app calls with `requests`
    python servers.py drive URL SECONDS    load driver when `wrk` is missing (one connection
                                           at a time, like `wrk -c1`); prints JSON

The sink decodes only the protobuf framing it needs (ResourceSpans > ScopeSpans >
Span, and the span name), so it stays cheap and independent of any OTel package.
`GET /stats` on the sink returns {"spans", "exports", "bytes", "names"} as JSON.
"""

from __future__ import annotations

import gzip
import json
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


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    lock = threading.Lock()
    stats = {"spans": 0, "exports": 0, "bytes": 0, "names": {}}

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
        names = span_names(body) if self.path.endswith("/v1/traces") else []
        with self.lock:
            s = self.stats
            s["spans"] += len(names)
            s["exports"] += 1
            s["bytes"] += len(body)
            for n in names:
                s["names"][n] = s["names"].get(n, 0) + 1
        self._reply(200, b"", "application/x-protobuf")

    def do_GET(self) -> None:
        with self.lock:
            body = json.dumps(self.stats).encode()
        self._reply(200, body, "application/json")


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


def serve(handler, portfile: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with open(portfile + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os

    os.replace(portfile + ".tmp", portfile)
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
