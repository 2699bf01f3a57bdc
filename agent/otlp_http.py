"""The SDK's OTLP/HTTP span exporter with trace-run's encoder in place of the official one.

Transport, retries, TLS, compression, headers and the size limit stay the
SDK's: only the step from spans to bytes changes (see otlp_encoder). The
exporter's internals it relies on are checked when it is built; an SDK without
them gets the stock `export` and a debug line, never an error.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from . import log
from .otlp_encoder import Encoder

_NEEDS = ("_client", "_metrics", "_max_request_size", "_shutdown")


class FastOTLPSpanExporter(OTLPSpanExporter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._encoder = Encoder()
        missing = [name for name in _NEEDS if not hasattr(self, name)]
        if missing or not hasattr(self._client, "export"):
            log.debug("this OTLP/HTTP exporter lacks %s; using the official encoder" % (missing or "_client.export"))
            self.export = super().export  # type: ignore[method-assign]

    def export(self, spans: Sequence) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = self._encoder.encode(spans)
            except Exception as error:  # as the stock exporter: the batch fails, the program goes on
                log.warning("spans not encoded (%s: %s); this batch is dropped" % (type(error).__name__, error))
                result.error = error
                return SpanExportResult.FAILURE
            limit = self._max_request_size
            if limit and 0 < limit < len(data):
                log.warning("a batch of %d spans is %d bytes, over the %d-byte request limit; it is dropped "
                            "(lower OTEL_BSP_MAX_EXPORT_BATCH_SIZE)" % (len(spans), len(data), limit))
                result.error = ValueError("request too large")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
