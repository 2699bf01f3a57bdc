"""OTLP/gRPC span export with trace-run's encoder on trace-run's own gRPC client (grpc_h2), not grpcio.

grpcio's runtime (its C core, threads and arenas) is most of what exporting over gRPC added to a
worker's memory; this exporter sends the same request with the standard library. It follows the
SDK's gRPC exporter where the user can see it: the endpoint rules (http:// plaintext, https:// TLS,
no scheme: TLS unless insecure), metadata (the user's headers, lowercased, and the SDK's
user-agent), gzip, the timeout as the call's deadline, and retries (the same retryable codes,
backoff with jitter or the server's RetryInfo, within the timeout). `OTEL_TRACE_RUN_GRPC_CLIENT=grpcio`
switches back to the SDK's exporter (otlp_grpc).
"""

from __future__ import annotations

import base64
import random
import ssl
import time
from typing import Sequence
from urllib.parse import urlsplit

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from trace_run.core import log

from . import grpc_h2
from .otlp_answer import ANSWER_CAP
from .otlp_encoder import Encoder, encode_request
from .quiet_wait import QuietEvent, wait_for_quiet

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # as the OTLP/HTTP exporter: a bigger batch is dropped, not sent
SERVER_RECEIVE_LIMIT = 4 * 1024 * 1024  # gRPC servers' default largest message
MAX_TRIES = 6  # as the SDK's gRPC exporter
RETRYABLE = frozenset([grpc_h2.CANCELLED, grpc_h2.DEADLINE_EXCEEDED, grpc_h2.RESOURCE_EXHAUSTED, grpc_h2.ABORTED,
                       grpc_h2.OUT_OF_RANGE, grpc_h2.UNAVAILABLE, grpc_h2.DATA_LOSS])
_VALID_KEY = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def user_agent() -> str:
    """The SDK gRPC exporter's user-agent (its version module does not import grpc)."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.version import __version__
    except ImportError:
        from opentelemetry.sdk.version import __version__
    return "OTel-OTLP-Exporter-Python/" + __version__


def warm(endpoint: str = "") -> None:
    """What building the exporter imports (before a fork: once, in the parent)."""
    import ssl  # noqa: F401
    import zlib  # noqa: F401


def target(endpoint: str, insecure: bool) -> tuple:
    """(host, port, tls?) as the SDK's gRPC exporter reads its endpoint: the address of a URL (its
    path ignored), or the whole text as host:port; https:// always TLS, else TLS unless `insecure`."""
    parts = urlsplit(endpoint)
    tls = parts.scheme == "https" or not insecure
    address = parts.netloc if parts.netloc else endpoint
    if address.startswith("["):  # [v6]:port
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    return host, int(port) if port else 443, tls


def metadata(headers: dict) -> list:
    """(key, value) pairs as gRPC metadata: keys lowercased; a key gRPC would refuse is left out,
    said once (its name only)."""
    out = []
    for key, value in (headers or {}).items():
        key = str(key).strip().lower()
        value = str(value)
        if not key or not set(key) <= _VALID_KEY or key.startswith(":") or \
                any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
            log.warning_once("grpc-metadata-" + key, "OTLP header %r is not valid gRPC metadata; it is not sent"
                             % key)
            continue
        out.append((key, value))
    return out


def tls_context(certificate=None, client_key=None, client_certificate=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certificate) if certificate else ssl.create_default_context()
    if client_certificate:
        context.load_cert_chain(client_certificate, keyfile=client_key or None)
    return context


def retry_delay(trailers: dict):
    """Seconds from a google.rpc.RetryInfo in the trailers, or None."""
    raw = trailers.get("google.rpc.retryinfo-bin")
    if not raw:
        return None
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4))
        fields = _fields(data)
        duration = _fields(fields.get(1, b""))
        return duration.get(1, 0) + duration.get(2, 0) / 1e9
    except Exception:
        return None


def partial_success(answer: bytes) -> tuple:
    """(rejected spans, error message) of an ExportTraceServiceResponse; (0, "") when it has none."""
    try:
        partial = _fields(_fields(answer).get(1, b""))
        message = partial.get(2, b"")
        return partial.get(1, 0), message.decode("utf-8", "replace") if isinstance(message, bytes) else ""
    except Exception:
        return 0, ""


def _varint(data: bytes, pos: int) -> tuple:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> dict:
    """The last value of each field number of a protobuf message: varints as ints, lengths as bytes."""
    out: dict = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        kind = key & 7
        if kind == 0:
            out[key >> 3], pos = _varint(data, pos)
        elif kind == 2:
            length, pos = _varint(data, pos)
            out[key >> 3] = data[pos:pos + length]
            pos += length
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError("wire type %d" % kind)
    return out


class OTLPGrpcH2SpanExporter(SpanExporter):
    accepts_encoded = True  # takes otlp_encoder.Encoded items as well as spans
    unanswered = False  # the last export timed out waiting for an answer (see exporthealth)

    def __init__(self, endpoint: str, insecure: bool = False, certificate=None, client_key=None,
                 client_certificate=None, headers: dict = None, timeout_s: float = 10.0, compression: str = "none"):
        host, port, tls = target(endpoint, insecure)
        context = tls_context(certificate, client_key, client_certificate) if tls else None
        self.endpoint = endpoint
        self.channel = grpc_h2.Channel(host, port, tls=context, answer_cap=ANSWER_CAP, user_agent=user_agent())
        self._metadata = metadata(headers)
        self._timeout = timeout_s
        self._compress = compression == "gzip"
        self._encoder = Encoder()
        self._shutdown = False
        self.max_request_bytes = MAX_REQUEST_BYTES

    def _stopping(self) -> QuietEvent:
        """Set at shutdown: a backoff ends then. Made on first use (after gevent/eventlet patched threading); its
        wait makes no object the garbage collector tracks (quiet_wait.py)."""
        return self.__dict__.get("_stop") or self.__dict__.setdefault("_stop", QuietEvent())

    def export(self, spans: Sequence) -> SpanExportResult:
        self.unanswered = False
        if self._shutdown:
            return SpanExportResult.FAILURE
        data = encode_request(self._encoder, spans, self.max_request_bytes)
        if data is None:
            return SpanExportResult.FAILURE
        if len(data) > SERVER_RECEIVE_LIMIT:
            log.warning_once("grpc-over-4mib", "an OTLP/gRPC request of %d bytes: gRPC servers refuse more "
                             "than %d by default (lower OTEL_TRACE_RUN_MAX_REQUEST_BYTES)"
                             % (len(data), SERVER_RECEIVE_LIMIT))
        try:
            return self._send(data)
        except Exception as error:  # never into the program: a failed export
            log.debug("OTLP/gRPC export failed (%s: %s)" % (type(error).__name__, error))
            return SpanExportResult.FAILURE

    def _send(self, data: bytes) -> SpanExportResult:
        deadline = time.monotonic() + self._timeout
        for attempt in range(MAX_TRIES):
            if attempt:
                wait_for_quiet()  # a retry starts when the program is not between a collection and a count
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise grpc_h2.GrpcError(grpc_h2.DEADLINE_EXCEEDED, "no time left")
                answer = self.channel.unary(EXPORT_METHOD, data, self._metadata, remaining, self._compress)
            except grpc_h2.GrpcError as error:
                if error.code == grpc_h2.UNAVAILABLE and attempt == 0:
                    self.channel.reconnect()  # as the SDK renews its channel: maybe another server next time
                backoff = retry_delay(error.trailers)
                if backoff is None:
                    backoff = 2 ** attempt * random.uniform(0.8, 1.2)
                # an answer over the cap came from the server (sending again would deliver the batch again)
                if (error.code not in RETRYABLE or error.answered or attempt + 1 == MAX_TRIES
                        or backoff > deadline - time.monotonic() or self._shutdown):
                    log.debug("OTLP/gRPC export to %s failed: %s, %s" % (
                        self.channel.authority, grpc_h2.code_name(error.code), error.message))
                    self.unanswered = error.code == grpc_h2.DEADLINE_EXCEEDED and error.sent
                    return SpanExportResult.FAILURE
                log.debug("OTLP/gRPC export to %s: %s (%s); retrying in %.2fs" % (
                    self.channel.authority, grpc_h2.code_name(error.code), error.message, backoff))
            else:
                rejected, message = partial_success(answer)
                if rejected or message:  # accepted; the collector says what it did not keep (as the SDK: no failure)
                    log.debug("the collector rejected %d spans of a batch: %s" % (rejected, message))
                return SpanExportResult.SUCCESS
            # out of the except block: the error, its traceback and frames are gone while it waits (a program
            # counting the objects the garbage collector tracks sees none of them come and go: otlp_retry.py)
            if self._stopping().wait(backoff):
                return SpanExportResult.FAILURE
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._stopping().set()
            self.channel.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
