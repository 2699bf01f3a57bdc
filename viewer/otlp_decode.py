"""OTLP trace requests (protobuf or the OTLP JSON mapping) -> flat span rows for the store."""

from __future__ import annotations

import base64
import json
import zlib

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MAX_BODY = 32 * 1024 * 1024  # bytes of one request, compressed or not

_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class BadRequest(ValueError):
    """The body is not an OTLP trace request (400 / INVALID_ARGUMENT)."""


class TooLarge(ValueError):
    """The body, or what it inflates to, exceeds MAX_BODY (413 / RESOURCE_EXHAUSTED)."""


def inflate(body: bytes, encoding: str) -> bytes:
    """gzip/deflate with a cap on the output, so a small bomb cannot fill memory."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest("unsupported Content-Encoding %r" % encoding)
    d = zlib.decompressobj(47 if encoding == "gzip" else 15)  # 47: gzip or zlib header
    try:
        out = d.decompress(body, MAX_BODY + 1)
    except zlib.error as exc:
        raise BadRequest("body is not valid %s: %s" % (encoding, exc))
    if len(out) > MAX_BODY or d.unconsumed_tail:
        raise TooLarge("body inflates to more than %d bytes" % MAX_BODY)
    return out


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadRequest("body is not an OTLP protobuf ExportTraceServiceRequest: %s" % exc)
    return request


def _hex_ids_to_base64(node) -> None:
    # The OTLP JSON mapping writes ids as hex where proto3 JSON expects base64.
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise BadRequest("%s %r is not hex" % (key, value[:40]))
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("body is not JSON: %s" % exc)
    if not isinstance(data, dict):
        raise BadRequest("body is not an OTLP JSON object")
    _hex_ids_to_base64(data)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise BadRequest("body is not an OTLP JSON ExportTraceServiceRequest: %s" % str(exc)[:200])
    return request


def _value(v):
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, which)


def attributes(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


def rows(request: ExportTraceServiceRequest) -> list:
    """One tuple per span, in the store's column order (see store.SPAN_COLUMNS)."""
    out = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        service = resource.get("service.name")
        service = service if isinstance(service, str) and service else "unknown_service"
        resource_json = _dumps(resource)
        for ss in rs.scope_spans:
            scope_json = _dumps({"name": ss.scope.name, "version": ss.scope.version})
            for s in ss.spans:
                if len(s.trace_id) != 16 or len(s.span_id) != 8:
                    raise BadRequest("a span has a trace id of %d bytes or a span id of %d bytes (want 16 and 8)"
                                     % (len(s.trace_id), len(s.span_id)))
                start = s.start_time_unix_nano
                end = max(s.end_time_unix_nano, start)
                events = [{"name": e.name, "time_ns": str(e.time_unix_nano), "attributes": attributes(e.attributes)}
                          for e in s.events]
                links = [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                          "attributes": attributes(link.attributes)} for link in s.links]
                out.append((
                    s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, int(s.kind), service,
                    start, end, int(s.status.code), s.status.message, _dumps(attributes(s.attributes)),
                    _dumps(events) if events else "[]", _dumps(links) if links else "[]", resource_json, scope_json,
                ))
    return out
