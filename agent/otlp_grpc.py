"""The SDK's OTLP/gRPC span exporter, sending bytes from trace-run's encoder.

Channel, TLS, headers, compression, retries and reconnection stay the SDK's;
its stub is swapped for one whose Export method takes the request already
serialized (see otlp_encoder), so no protobuf objects are built per span.
An SDK whose exporter lacks the internals used here keeps its stock behaviour
(`build` says so at debug level), never an error.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from trace_run.core import compat, log

from .otlp_encoder import Encoder

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _SerializedStub:
    """TraceServiceStub's Export, taking and returning bytes (the SDK ignores the response);
    remembers whether the last call ran out of time waiting for its answer."""

    def __init__(self, channel):
        self._export = channel.unary_unary(EXPORT_METHOD)
        self.deadline_exceeded = False

    def Export(self, *args, **kwargs):
        import grpc

        try:
            return self._export(*args, **kwargs)
        except grpc.RpcError as error:
            self.deadline_exceeded = error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            raise


class OTLPGrpcSpanExporter(OTLPSpanExporter):
    accepts_encoded = False  # True once the serialized stub is in place
    unanswered = False  # the last export timed out waiting for an answer (see exporthealth)

    def export(self, spans: Sequence):
        client = compat.grpc_client(self)
        if isinstance(client, _SerializedStub):
            client.deadline_exceeded = False
        result = super().export(spans)
        self.unanswered = (result is not SpanExportResult.SUCCESS
                           and getattr(compat.grpc_client(self), "deadline_exceeded", False))
        return result

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        missing = compat.grpc_exporter_missing(self, OTLPSpanExporter)
        if missing:
            log.debug("this OTLP/gRPC exporter lacks %s; using the official encoder" % missing)
            return
        self._encoder = Encoder()
        compat.set_grpc_stub(self, _SerializedStub)
        self.accepts_encoded = True

    def _translate_data(self, data: Sequence):
        encoder = getattr(self, "_encoder", None)
        return super()._translate_data(data) if encoder is None else encoder.encode(data)
