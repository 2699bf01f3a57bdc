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

from . import log
from .otlp_encoder import Encoder

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_NEEDS = ("_stub", "_client", "_channel", "_initialize_channel_and_stub")


class _SerializedStub:
    """TraceServiceStub's Export, taking and returning bytes (the SDK ignores the response)."""

    def __init__(self, channel):
        self.Export = channel.unary_unary(EXPORT_METHOD)


class OTLPGrpcSpanExporter(OTLPSpanExporter):
    accepts_encoded = False  # True once the serialized stub is in place

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        missing = [name for name in _NEEDS if not hasattr(self, name)]
        if missing:
            log.debug("this OTLP/gRPC exporter lacks %s; using the official encoder" % missing)
            return
        self._encoder = Encoder()
        self._stub = _SerializedStub  # also used when the SDK reconnects
        self._client = _SerializedStub(self._channel)
        self.accepts_encoded = True

    def _translate_data(self, data: Sequence):
        encoder = getattr(self, "_encoder", None)
        return super()._translate_data(data) if encoder is None else encoder.encode(data)
