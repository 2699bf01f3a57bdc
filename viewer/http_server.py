"""The viewer's HTTP side: the pages, the JSON API and the OTLP/HTTP receiver (POST /v1/traces).

One threaded server class serves both ports (UI and OTLP); each port answers every route,
so a misdirected exporter or browser still gets an answer rather than a reset.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

from . import api, otlp_decode
from .store import Store

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGES = {"/": "index.html", "/services": "services.html"}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".json": "application/json",
}
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'"),
    ("X-Content-Type-Options", "nosniff"),
)
# google.rpc.Status codes, for OTLP error bodies
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, NOT_FOUND = 3, 8, 14, 5


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def rpc_status(code: int, message: str) -> bytes:
    """A google.rpc.Status message (code = field 1, message = field 2), the OTLP/HTTP error body."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # exporters keep their connection open
    server_version = "trace-run-view"
    timeout = 300  # an idle connection's thread ends (exporters reconnect)
    store: Store  # set on the subclass made by make_server

    # -- plumbing ---------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:
        pass

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if not cache:
            self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    # -- GET: pages, static files, API ------------------------------------------------------------
    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        try:
            if path.startswith("/api/"):
                self._api(path, parse_qs(query, keep_blank_values=True))
            elif path in PAGES:
                self._static(PAGES[path])
            elif path.startswith("/trace/") and path.count("/") == 2:
                self._static("trace.html")
            elif path.startswith("/static/"):
                self._static(unquote(path[len("/static/"):]))
            else:
                self._json(404, {"error": "no page at %s" % path[:200]})
        except api.ApiError as exc:
            self._json(400, {"error": str(exc)})
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:  # e.g. the disk is full: an answer, and the server runs on
            self.close_connection = True
            self._json(500, {"error": "%s: %s" % (type(exc).__name__, str(exc)[:200])})

    do_HEAD = do_GET

    def _static(self, name: str) -> None:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            self._json(404, {"error": "no static file %r" % name[:200]})
            return
        try:
            with open(os.path.join(STATIC, name), "rb") as f:
                body = f.read()
        except OSError:
            self._json(404, {"error": "no static file %r" % name[:200]})
            return
        ext = os.path.splitext(name)[1].lower()
        self._send(200, body, CONTENT_TYPES.get(ext, "application/octet-stream"))

    def _api(self, path: str, params: dict) -> None:
        with self.store.reader() as db:
            if path == "/api/traces":
                self._json(200, api.list_traces(db, params))
            elif path.startswith("/api/traces/") and path.count("/") == 3:
                trace_id = path.rsplit("/", 1)[1]
                trace = api.get_trace(db, trace_id)
                if trace is None:
                    self._json(404, {"error": "no trace %s in the store" % trace_id[:64]})
                else:
                    self._json(200, trace)
            elif path == "/api/services":
                self._json(200, api.services(db))
            elif path == "/api/span_names":
                self._json(200, api.span_names(db, params))
            else:
                self._json(404, {"error": "no API at %s" % path[:200]})

    # -- POST /v1/traces: OTLP/HTTP -----------------------------------------------------------------
    def do_POST(self) -> None:
        path = self.path.partition("?")[0].rstrip("/")
        is_json = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() == "application/json"
        try:
            body = self._read_body()
            if path != "/v1/traces":
                self._otlp_error(404, NOT_FOUND, "no OTLP receiver at %s (POST /v1/traces)" % path[:200], is_json)
                return
            body = otlp_decode.inflate(body, self.headers.get("Content-Encoding", ""))
            request = otlp_decode.parse_json(body) if is_json else otlp_decode.parse_protobuf(body)
            rows = otlp_decode.rows(request)
        except otlp_decode.TooLarge as exc:
            self.close_connection = True
            self._otlp_error(413, RESOURCE_EXHAUSTED, str(exc), is_json)
            return
        except otlp_decode.BadRequest as exc:
            self._otlp_error(400, INVALID_ARGUMENT, str(exc), is_json)
            return
        if not self.store.submit(rows):
            self._otlp_error(503, UNAVAILABLE, "the viewer's store is behind; retry later", is_json)
            return
        if is_json:
            self._send(200, b"{}", "application/json")
        else:
            self._send(200, b"", "application/x-protobuf")

    def _read_body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise otlp_decode.BadRequest("Content-Length %r is not a number" % self.headers.get("Content-Length"))
        if length > otlp_decode.MAX_BODY:
            self.close_connection = True  # the body stays unread
            raise otlp_decode.TooLarge("body of %d bytes is over the limit of %d" % (length, otlp_decode.MAX_BODY))
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip() or b"x", 16)
            except ValueError:
                self.close_connection = True
                raise otlp_decode.BadRequest("malformed chunked body")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > otlp_decode.MAX_BODY:
                self.close_connection = True
                raise otlp_decode.TooLarge("body is over the limit of %d bytes" % otlp_decode.MAX_BODY)
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _otlp_error(self, status: int, code: int, message: str, is_json: bool) -> None:
        if is_json:
            self._send(status, json.dumps({"code": code, "message": message}).encode(), "application/json")
        else:
            self._send(status, rpc_status(code, message), "application/x-protobuf")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        sys.stderr.write("trace-run view: error answering %s: %r\n" % (client_address[0], exc))


def make_server(host: str, port: int, store: Store) -> Server:
    handler = type("BoundHandler", (Handler,), {"store": store})
    server_class = type("Server6", (Server,), {"address_family": socket.AF_INET6}) if ":" in host else Server
    return server_class((host, port), handler)
