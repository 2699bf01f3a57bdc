"""A gRPC unary client over HTTP/2 (RFC 9113), stdlib only: what an OTLP exporter needs, no more.

One `Channel` holds at most one connection (TCP with prior knowledge for plaintext, TLS with ALPN
"h2" otherwise) and makes one call at a time on it, a new stream each (odd ids), reusing the
connection from call to call. Request DATA is sent within the peer's frame size and flow-control
windows (waiting for its WINDOW_UPDATEs); what arrives is acknowledged (SETTINGS, PING) and its
window given back. The answer is read up to a cap. A failed call raises `GrpcError` with a gRPC
status code, the way grpcio would report it: a connection that failed, timed out, got GOAWAY or
misbehaved is closed, and the next call connects anew. A forked child never touches its parent's
socket: it forgets it (os.register_at_fork) and connects on its own.

Plain `socket`, `ssl` and `threading`, looked up when used: under gevent or eventlet monkey-patching
the client is cooperative like any other socket code of the program.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import threading
import time
import weakref
import zlib
from urllib.parse import unquote

from . import hpack, unreachable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW, S_MAX_FRAME, S_MAX_HEADER_LIST = range(1, 7)

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = 2 ** 31 - 1
HEADER_LIST_LIMIT = 64 * 1024  # what we accept of headers + trailers (and advertise)

# gRPC status codes (grpc/status.h)
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, \
    RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, \
    DATA_LOSS, UNAUTHENTICATED = range(17)
CODE_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")

# an HTTP status other than 200 without a grpc-status (the gRPC spec's http-grpc-status-mapping.md)
_HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}
# RST_STREAM error codes as gRPC reports them (REFUSED_STREAM: the server never processed it)
_RST_TO_GRPC = {0x7: UNAVAILABLE, 0x8: CANCELLED, 0xB: RESOURCE_EXHAUSTED, 0xC: PERMISSION_DENIED}

_live: weakref.WeakSet = weakref.WeakSet()  # every Channel, for the at-fork reset


def code_name(code: int) -> str:
    return CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else str(code)


class GrpcError(Exception):
    """A call that did not succeed. `sent`: the whole request went out (the server may have it);
    `trailers`: the answer's trailers, if any came ({name: value}, names lowercase, str);
    `answered`: the server did answer (an answer over the cap: its status was never read)."""

    def __init__(self, code: int, message: str, sent: bool = False, trailers=None, answered: bool = False):
        super().__init__("%s: %s" % (code_name(code), message))
        self.code = code
        self.message = message
        self.sent = sent
        self.trailers = trailers or {}
        self.answered = answered


class _ConnectionError(Exception):
    """The connection is unusable (the call fails with `code`; the connection is closed)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def grpc_timeout(seconds: float) -> str:
    """The grpc-timeout header: at most 8 digits and a unit."""
    micros = max(1, int(seconds * 1e6))
    for unit, scale in (("u", 1), ("m", 1000), ("S", 1000000), ("M", 60000000)):
        value = -(-micros // scale)
        if value < 100000000:
            return "%d%s" % (value, unit)
    return "99999999H"


def gzip_compress(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # the gzip format (grpc-encoding: gzip)
    return compressor.compress(data) + compressor.flush()


def _inflate(data: bytes, encoding: str, cap: int) -> bytes:
    if encoding == "gzip":
        wbits = 31
    elif encoding == "deflate":
        wbits = 15
    else:
        raise GrpcError(INTERNAL, "the answer is compressed with %r, which was not asked for" % encoding)
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise GrpcError(INTERNAL, "the answer's compressed message is corrupt (%s)" % exc)
    if len(out) > cap:
        raise GrpcError(RESOURCE_EXHAUSTED, "the answer is larger than %d bytes" % cap, answered=True)
    return out


class _Stream:
    __slots__ = ("id", "window", "headers", "trailers", "data", "ended", "reset", "sent", "blocks")

    def __init__(self, stream_id: int, window: int):
        self.id = stream_id
        self.window = window
        self.headers = None  # the first header block (list of (name, value) bytes)
        self.trailers = None
        self.data = bytearray()
        self.ended = False  # the server's END_STREAM
        self.reset = None  # an RST_STREAM error code
        self.sent = False  # our END_STREAM went out


class _Connection:
    """One HTTP/2 connection; used by one call at a time (the Channel's lock)."""

    def __init__(self, sock, answer_cap: int):
        self.sock = sock
        self.identity = _identity(sock)
        self.buffer = bytearray()
        self.decoder = hpack.Decoder(max_header_list_size=HEADER_LIST_LIMIT)
        self.next_id = 1
        self.peer_window = DEFAULT_WINDOW  # the connection's send window
        self.peer_initial = DEFAULT_WINDOW  # a new stream's send window
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.goaway = None  # the last stream id the server will process, once it said GOAWAY
        self.answer_cap = answer_cap
        self.stream = None  # the call under way
        self._pending_block = None  # (stream id, flags, fragments) until END_HEADERS
        settings = struct.pack(">HIHIHI", S_ENABLE_PUSH, 0, S_MAX_HEADER_LIST, HEADER_LIST_LIMIT,
                               S_INITIAL_WINDOW, DEFAULT_WINDOW)
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, settings))

    def handshake(self, deadline: float) -> None:
        """Read the server's preface, a SETTINGS frame, before the first request: its frame size and
        windows hold from the first byte of DATA (and a server that is not HTTP/2 is found out here)."""
        try:
            kind, flags, stream_id, payload = self.read_frame(deadline)
        except _ConnectionError as exc:  # bytes that are no frame: an HTTP/1 server, something else
            raise _ConnectionError(UNAVAILABLE, "the server did not start HTTP/2 (%s)" % exc.message)
        if kind != SETTINGS or flags & ACK or stream_id:
            raise _ConnectionError(UNAVAILABLE, "the server did not start HTTP/2 (no SETTINGS first)")
        self.handle(kind, flags, stream_id, payload, deadline)

    # -- sending ----------------------------------------------------------------------
    def send(self, data: bytes, deadline: float) -> None:
        _settimeout(self.sock, deadline)
        self.sock.sendall(data)

    # -- receiving --------------------------------------------------------------------
    def _take_frame(self):
        """The first whole frame in the buffer, taken out of it; None if there is none yet."""
        if len(self.buffer) < 9:
            return None
        length = int.from_bytes(self.buffer[:3], "big")
        if length > DEFAULT_MAX_FRAME:  # we never raise SETTINGS_MAX_FRAME_SIZE
            raise _ConnectionError(INTERNAL, "a frame of %d bytes, over the frame size" % length)
        if len(self.buffer) < 9 + length:
            return None
        kind, flags = self.buffer[3], self.buffer[4]
        stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
        payload = bytes(self.buffer[9:9 + length])
        del self.buffer[:9 + length]
        return kind, flags, stream_id, payload

    def read_frame(self, deadline: float) -> tuple:
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            _settimeout(self.sock, deadline)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise _ConnectionError(UNAVAILABLE, "the server closed the connection")
            self.buffer += chunk

    def poll(self, deadline: float) -> None:
        """Between calls: read and answer what arrived meanwhile (SETTINGS, PING, GOAWAY), without
        waiting; a connection the server closed meanwhile raises _ConnectionError."""
        sock = self.sock
        while True:
            if not (getattr(sock, "pending", None) and sock.pending()):
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                except ValueError:  # a descriptor over FD_SETSIZE: not checked, the call finds out
                    break
                if not readable:
                    break
            sock.setblocking(False)
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):  # TLS records without data (session tickets)
                break
            if not chunk:
                raise _ConnectionError(UNAVAILABLE, "the server closed the connection")
            self.buffer += chunk
        while True:
            frame = self._take_frame()
            if frame is None:
                return
            self.handle(*frame, deadline)

    def handle(self, kind: int, flags: int, stream_id: int, payload: bytes, deadline: float) -> None:
        """Act on one frame from the server."""
        stream = self.stream
        if self._pending_block is not None and kind != CONTINUATION:
            raise _ConnectionError(INTERNAL, "a header block interrupted (HTTP/2 protocol error)")
        if kind == DATA:
            data = _unpad(payload, flags)
            if payload:  # give the window back (padding included)
                update = _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload)))
                if stream is not None and stream_id == stream.id and not flags & END_STREAM:
                    update += _frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", len(payload)))
                self.send(update, deadline)
            if stream is not None and stream_id == stream.id:
                if len(stream.data) + len(data) > self.answer_cap + 5:
                    raise GrpcError(RESOURCE_EXHAUSTED, "the answer is larger than %d bytes" % self.answer_cap,
                                    sent=stream.sent, answered=True)
                stream.data += data
                if flags & END_STREAM:
                    stream.ended = True
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                fragment = _unpad(payload, flags)
                if flags & PRIORITY_FLAG:
                    fragment = fragment[5:]
                self._pending_block = (stream_id, flags, [fragment])
            else:
                if self._pending_block is None or self._pending_block[0] != stream_id:
                    raise _ConnectionError(INTERNAL, "an unexpected CONTINUATION (HTTP/2 protocol error)")
                self._pending_block[2].append(payload)
                if sum(len(f) for f in self._pending_block[2]) > HEADER_LIST_LIMIT * 2:
                    raise _ConnectionError(INTERNAL, "a header block over %d bytes" % (HEADER_LIST_LIMIT * 2))
            if flags & END_HEADERS:
                block_stream, block_flags, fragments = self._pending_block
                self._pending_block = None
                try:
                    fields = self.decoder.decode(b"".join(fragments))
                except hpack.HPACKError as exc:
                    raise _ConnectionError(INTERNAL, "the server's headers cannot be decoded (%s)" % exc)
                if stream is not None and block_stream == stream.id:
                    if stream.headers is None:
                        stream.headers = fields
                    else:
                        stream.trailers = fields
                    if block_flags & END_STREAM:
                        stream.ended = True
        elif kind == RST_STREAM:
            if stream is not None and stream_id == stream.id and len(payload) >= 4:
                stream.reset = struct.unpack(">I", payload[:4])[0]
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
                self.send(_frame(SETTINGS, ACK, 0, b""), deadline)
        elif kind == PING:
            if not flags & ACK:
                self.send(_frame(PING, ACK, 0, payload[:8]), deadline)
        elif kind == GOAWAY:
            if len(payload) >= 8:
                last, code = struct.unpack(">II", payload[:8])
                self.goaway = last & 0x7FFFFFFF
                if stream is not None and stream.id > self.goaway:
                    raise _ConnectionError(UNAVAILABLE, "the server is going away (GOAWAY %d)" % code)
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF if len(payload) >= 4 else 0
            if stream_id == 0:
                self.peer_window += increment
            elif stream is not None and stream_id == stream.id:
                stream.window += increment
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(INTERNAL, "a PUSH_PROMISE though push is off (HTTP/2 protocol error)")
        # PRIORITY and unknown frame types are ignored

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - len(payload) % 6, 6):
            key, value = struct.unpack(">HI", payload[i:i + 6])
            if key == S_INITIAL_WINDOW:
                if value > MAX_WINDOW:
                    raise _ConnectionError(INTERNAL, "a window over 2^31-1 (HTTP/2 flow-control error)")
                if self.stream is not None:
                    self.stream.window += value - self.peer_initial
                self.peer_initial = value
            elif key == S_MAX_FRAME:
                if 16384 <= value <= 16777215:
                    self.peer_max_frame = value
            # HEADER_TABLE_SIZE: our header blocks never use the dynamic table; the others do not
            # concern one call at a time

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            _let_go(sock, self.identity)


def _identity(sock):
    try:
        st = os.fstat(sock.fileno())
        return st.st_dev, st.st_ino
    except (OSError, ValueError):
        return None


def _let_go(sock, identity) -> None:
    """Close `sock`, unless its descriptor is no longer it (the program closed it and may have
    opened something under the same number): then forget the number without closing it."""
    try:
        if identity is not None and _identity(sock) == identity:
            sock.close()
        else:
            sock.detach()
    except Exception:
        pass


def _settimeout(sock, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("deadline")
    sock.settimeout(remaining)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload


def _unpad(payload: bytes, flags: int) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise _ConnectionError(INTERNAL, "bad padding (HTTP/2 protocol error)")
    return payload[1:len(payload) - payload[0]]


class Channel:
    """Calls to one server. `tls` is an ssl.SSLContext (ALPN h2 is set on it) or None for plaintext."""

    def __init__(self, host: str, port: int, tls=None, authority: str = None, answer_cap: int = 64 * 1024,
                 user_agent: str = None):
        self.host = host
        self.port = port
        self.tls = tls
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
        self.authority = authority or ("[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port))
        self.scheme = "https" if tls is not None else "http"
        self.answer_cap = answer_cap
        self.user_agent = user_agent
        self._connection = None
        self._closed = False
        _live.add(self)

    def _lock(self):
        # made on first use (after gevent/eventlet patched threading, if the program uses them)
        return self.__dict__.get("_call_lock") or self.__dict__.setdefault("_call_lock", threading.Lock())

    def after_fork_in_child(self) -> None:
        """The parent's connection is the parent's: forget it (without writing to it)."""
        self.__dict__.pop("_call_lock", None)
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def reconnect(self) -> None:
        """The next call makes a new connection (the one in place is closed, or as its call ends)."""
        lock = self._lock()
        if lock.acquire(False):
            try:
                self._drop()
            finally:
                lock.release()

    def close(self) -> None:
        """Closes the connection now, or (a call under way) as that call ends; never waits for it."""
        self._closed = True
        self.reconnect()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _connect(self, deadline: float) -> _Connection:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=remaining)
        except OSError as exc:
            unreachable.note(exc)
            raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
                if sock.selected_alpn_protocol() != "h2":
                    raise _ConnectionError(UNAVAILABLE, "the server did not agree to HTTP/2 (ALPN h2) over TLS")
            connection = _Connection(sock, self.answer_cap)
            connection.handshake(deadline)
            return connection
        except BaseException:
            sock.close()
            raise

    def unary(self, path: str, message: bytes, metadata=(), timeout: float = 10.0, compress: bool = False) -> bytes:
        """Call `path` with `message` (serialized); the answer's message, or GrpcError."""
        deadline = time.monotonic() + timeout
        if self._closed:
            raise GrpcError(UNAVAILABLE, "the channel is closed")
        with self._lock():
            connection = self._connection
            if connection is not None and (connection.sock is None or connection.goaway is not None
                                           or connection.next_id > 2 ** 31 - 1
                                           or _identity(connection.sock) != connection.identity):
                self._drop()  # GOAWAY, ids used up, or the program closed our descriptor: a new one
                connection = None
            stream = None
            if connection is not None:
                try:
                    connection.poll(deadline)
                except Exception:  # closed or broken meanwhile: a new connection, not a failed call
                    self._drop()
                    connection = None
                if connection is not None and connection.goaway is not None:
                    self._drop()
                    connection = None
            settled = False  # the connection is left between calls (else, whatever interrupted us: dropped)
            try:
                if connection is None:
                    connection = self._connection = self._connect(deadline)
                stream = _Stream(connection.next_id, connection.peer_initial)
                connection.next_id += 2
                connection.stream = stream
                answer = self._call(connection, stream, path, message, metadata, timeout, deadline, compress)
                settled = True
                return answer
            except GrpcError:
                settled = stream is not None and stream.ended  # else the answer was not read to its end
                raise
            except _ConnectionError as exc:
                self._drop()
                raise GrpcError(exc.code, exc.message, sent=stream is not None and stream.sent)
            except (socket.timeout, TimeoutError):
                self._drop()
                raise GrpcError(DEADLINE_EXCEEDED, "no answer within %.3gs" % timeout,
                                sent=stream is not None and stream.sent)
            except ssl.SSLError as exc:
                self._drop()
                raise GrpcError(UNAVAILABLE, "TLS: %s" % (exc.reason or exc), sent=stream is not None and stream.sent)
            except OSError as exc:
                self._drop()
                raise GrpcError(UNAVAILABLE, "%s: %s" % (type(exc).__name__, exc.strerror or exc),
                                sent=stream is not None and stream.sent)
            except Exception as exc:  # a bug of ours or a peer we did not foresee: this call fails, not the program
                self._drop()
                raise GrpcError(INTERNAL, "%s: %s" % (type(exc).__name__, exc), sent=stream is not None and stream.sent)
            finally:
                if connection is not None:
                    connection.stream = None
                if self._closed or not settled:
                    self._drop()

    def _call(self, connection, stream, path, message, metadata, timeout, deadline, compress) -> bytes:
        headers = [(":method", "POST"), (":scheme", self.scheme), (":path", path), (":authority", self.authority),
                   ("te", "trailers"), ("content-type", "application/grpc"), ("grpc-timeout", grpc_timeout(timeout))]
        if compress:
            headers.append(("grpc-encoding", "gzip"))
        headers.append(("grpc-accept-encoding", "identity,gzip"))
        names = set()
        for name, value in metadata:
            names.add(name)
            headers.append((name, value))
        if self.user_agent and "user-agent" not in names:
            headers.append(("user-agent", self.user_agent))
        block = hpack.encode(headers)
        body = gzip_compress(message) if compress else message
        body = struct.pack(">BI", 1 if compress else 0, len(body)) + body

        # HEADERS (+ CONTINUATION) within the peer's frame size
        size = connection.peer_max_frame
        pieces = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
        out = bytearray(_frame(HEADERS, END_HEADERS if len(pieces) == 1 else 0, stream.id, pieces[0]))
        for i, piece in enumerate(pieces[1:], 2):
            out += _frame(CONTINUATION, END_HEADERS if i == len(pieces) else 0, stream.id, piece)

        # DATA within the frame size and both send windows; wait for WINDOW_UPDATE when they are spent
        view = memoryview(body)
        offset = 0
        while offset < len(body):
            room = min(connection.peer_max_frame, connection.peer_window, stream.window, len(body) - offset)
            if room > 0:
                last = offset + room == len(body)
                out += _frame(DATA, END_STREAM if last else 0, stream.id, view[offset:offset + room].tobytes())
                offset += room
                connection.peer_window -= room
                stream.window -= room
                if len(out) < 256 * 1024 and not last:
                    continue
            if out:
                connection.send(bytes(out), deadline)
                out = bytearray()
            if offset == len(body):
                break
            # blocked on a window (or the server answered early): read what the server says
            while min(connection.peer_window, stream.window) <= 0 and not stream.ended and stream.reset is None:
                connection.handle(*connection.read_frame(deadline), deadline)
            if stream.ended or stream.reset is not None:
                break  # an answer before the whole request: the server will not read the rest
        stream.sent = offset == len(body)
        while not stream.ended and stream.reset is None:
            connection.handle(*connection.read_frame(deadline), deadline)
        if not stream.sent and stream.reset is None:
            # the server answered without reading the whole request: tell it we stop sending
            connection.send(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", 0)), deadline)
        return self._answer(stream)

    def _answer(self, stream) -> bytes:
        if stream.headers is None:
            code = _RST_TO_GRPC.get(stream.reset, INTERNAL)
            raise GrpcError(code, "the stream was reset (HTTP/2 error %s)" % stream.reset, sent=stream.sent)
        headers = _text(stream.headers)
        trailers = _text(stream.trailers) if stream.trailers is not None else headers  # or Trailers-Only
        status = headers.get(":status", "")
        if status != "200":
            try:
                http = int(status)
            except ValueError:
                http = 0
            if "grpc-status" not in trailers:
                raise GrpcError(_HTTP_TO_GRPC.get(http, UNKNOWN), "HTTP status %s" % status, sent=stream.sent,
                                trailers=trailers)
        if stream.reset is not None and "grpc-status" not in trailers:
            raise GrpcError(_RST_TO_GRPC.get(stream.reset, INTERNAL),
                            "the stream was reset (HTTP/2 error %s)" % stream.reset, sent=stream.sent)
        if "grpc-status" not in trailers:
            raise GrpcError(INTERNAL if stream.ended else UNKNOWN, "the answer has no grpc-status",
                            sent=stream.sent, trailers=trailers)
        try:
            code = int(trailers["grpc-status"])
        except ValueError:
            code = UNKNOWN
        if code != OK:
            raise GrpcError(code, unquote(trailers.get("grpc-message", ""), errors="replace"), sent=stream.sent,
                            trailers=trailers)
        content_type = headers.get("content-type", "")
        if not content_type.startswith("application/grpc"):
            raise GrpcError(UNKNOWN, "the answer's content-type is %r" % content_type, sent=stream.sent)
        data = bytes(stream.data)
        if not data:
            return b""
        if len(data) < 5:
            raise GrpcError(INTERNAL, "a truncated answer message", sent=stream.sent)
        flag, length = struct.unpack(">BI", data[:5])
        if length > self.answer_cap:
            raise GrpcError(RESOURCE_EXHAUSTED, "the answer is larger than %d bytes" % self.answer_cap,
                            sent=stream.sent, answered=True)
        message = data[5:5 + length]
        if len(message) < length:
            raise GrpcError(INTERNAL, "a truncated answer message", sent=stream.sent)
        if flag & 1:
            message = _inflate(message, headers.get("grpc-encoding", "identity"), self.answer_cap)
        return message


def _text(fields) -> dict:
    out = {}
    for name, value in fields:
        out[name.decode("latin-1")] = value.decode("latin-1")
    return out


def _after_fork_in_child() -> None:
    for channel in list(_live):
        try:
            channel.after_fork_in_child()
        except Exception:
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)
