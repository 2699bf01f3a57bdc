"""OTLP/HTTP span export with trace-run's encoder, on the SDK's own HTTP client.

The SDK's `_OTLPHTTPClient` (reached through core.compat) (retries with backoff, Retry-After, gzip/deflate,
headers, timeout) and one of its transports send the bytes; only the step from
spans to bytes is ours (see otlp_encoder). The transport is the SDK's urllib3 one
when requests, the stock exporter's, would send the same request (see
`http_transport`): requests re-reads the environment on every call and
costs two to three times the CPU per batch, paid on the program's GIL. Not subclassing the
stock OTLPSpanExporter keeps protobuf and the generated OTLP classes out of
the process (~2.7 MiB and ~30 ms of imports). An SDK without these pieces gets
the stock exporter instead (`build` says so at debug level), never an error.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from trace_run.core import compat

from .http_transport import urllib3_sends_the_same
from .otlp_answer import capped
from .otlp_encoder import Encoder, encode_request, hand_over
from .otlp_retry import Retrying

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the stock exporter's default limit


def warm(endpoint: str) -> None:
    """Import what building the exporter for `endpoint` imports (before a fork: once, in the parent).
    With the urllib3 transport requests is never imported (~4 MiB less in a program without it)."""
    import importlib

    compat.otlp_http_client()
    name, _ = _transport_class(endpoint, None)
    importlib.import_module(name)  # the transport imports its library only when it is built


def _transport_class(endpoint: str, session) -> tuple:
    """("urllib3" or "requests", the SDK's transport class): urllib3 where it sends the same request
    as requests would, and no requests Session was given."""
    if session is None and urllib3_sends_the_same(endpoint):
        try:
            return "urllib3", compat.http_transport("urllib3")[0]
        except ImportError:  # an SDK with only the requests transport
            pass
    return "requests", compat.http_transport("requests")[0]


class OTLPHTTPSpanExporter(SpanExporter):
    accepts_encoded = True  # takes otlp_encoder.Encoded items as well as spans
    unanswered = False  # the last export timed out waiting for an answer

    def __init__(self, endpoint: str, headers: dict, timeout_s: float, compression: str,
                 verify=True, cert=None, session=None):
        import logging

        client_class, Compression, stock_headers = compat.otlp_http_client()
        # as the stock exporter: its Content-Type and User-Agent, the user's headers over them
        lowered = {k.lower() for k in headers}
        headers = {k: v for k, v in stock_headers.items() if k.lower() not in lowered} | dict(headers)
        self.transport, transport_class = _transport_class(endpoint, session)
        self._client = client_class(
            transport=capped(transport_class)(verify=verify, cert=cert, session=session),
            endpoint=endpoint,
            kind="spans",
            timeout=timeout_s,
            compression=Compression.GZIP if compression == "gzip" else Compression.NONE,
            headers=headers,
            # the SDK exporter's logger: its failures are silenced and reported the same way
            logger=logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter"),
        )
        self._retrying = Retrying(self._client)
        self._encoder = Encoder()
        self._shutdown = False
        self.max_request_bytes = MAX_REQUEST_BYTES

    def export(self, spans: Sequence) -> SpanExportResult:
        """Sends `spans` (on the export thread), handing the GIL over between framing and sending: a
        request thread back from its socket waits for the GIL as long as this thread runs Python, and
        the framing's end and the HTTP client's first stretch (urllib3's, ~0.3 ms) made one stretch
        of ~0.9 ms for a 512-span batch (benchmarks/README.md, the GIL section)."""
        if self._shutdown:
            return SpanExportResult.FAILURE
        data = encode_request(self._encoder, spans, self.max_request_bytes)
        if data is None:
            return SpanExportResult.FAILURE
        hand_over()
        sent, unanswered = self._retrying.send(data)
        # the request went out and no answer came in time: the collector may have it (see exporthealth)
        self.unanswered = unanswered
        return SpanExportResult.SUCCESS if sent else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._retrying.stop()
            self._client.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
