"""OTLP/gRPC receiver: TraceService/Export with the request kept as bytes, so a malformed
message gets INVALID_ARGUMENT (grpcio's own deserializer would answer INTERNAL)."""

from __future__ import annotations

from concurrent import futures

import grpc

from . import otlp_decode
from .store import Store

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def make_server(host: str, port: int, store: Store):
    """A started grpc server and the port it listens on."""

    def export(body: bytes, context):
        try:
            rows = otlp_decode.rows(otlp_decode.parse_protobuf(body))
        except otlp_decode.BadRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not store.submit(rows):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the viewer's store is behind; retry later")
        return b""  # an empty ExportTraceServiceResponse

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(export),  # no (de)serializers: raw bytes
    })
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="trace-run-view-grpc"),
        handlers=[handler],
        options=[("grpc.max_receive_message_length", otlp_decode.MAX_BODY), ("grpc.so_reuseport", 0)],
    )
    bound = server.add_insecure_port(("[%s]:%d" if ":" in host else "%s:%d") % (host, port))
    if not bound:
        raise OSError("cannot listen on %s:%d" % (host, port))
    server.start()
    return server, bound
