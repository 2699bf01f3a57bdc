"""In-process tests of the viewer's OTLP decoding: the OTLP JSON mapping gives the same rows as
protobuf for any request (hypothesis), and inflating is capped."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from support.viewer import request, span
from trace_run.viewer import otlp_decode

_scalars = st.one_of(st.text(max_size=20), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                     st.floats(allow_nan=False, allow_infinity=False), st.binary(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3)), max_leaves=6)
_spans = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.text(max_size=20),
                            st.dictionaries(st.text(min_size=1, max_size=10), _values, max_size=4),
                            st.integers(0, 2**63), st.integers(0, 10**9), st.booleans(), st.integers(0, 5)),
                  min_size=1, max_size=5)


def otlp_json(req) -> bytes:
    """The OTLP JSON mapping of a request: proto3 JSON with ids in hex rather than base64."""
    data = json_format.MessageToDict(req)

    def hexify(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId"):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hexify(value)
        elif isinstance(node, list):
            for item in node:
                hexify(item)

    hexify(data)
    return json.dumps(data).encode()


@settings(max_examples=60, deadline=None)
@given(_spans)
def test_json_and_protobuf_decode_to_the_same_rows(described):
    spans = [span("%032x" % (i + 1), "%016x" % (i + 1), name, service, start, dur / 1e6,
                  parent="%016x" % i if i else "", kind=kind, error=error, attrs=attrs,
                  events=[("e", start, attrs)], links=[("%032x" % 9, "%016x" % 9)])
             for i, (service, name, attrs, start, dur, error, kind) in enumerate(described)]
    req = request(spans)
    from_proto = otlp_decode.rows(otlp_decode.parse_protobuf(req.SerializeToString()))
    from_json = otlp_decode.rows(otlp_decode.parse_json(otlp_json(req)))
    assert from_proto == from_json
    assert sorted(r[1] for r in from_proto) == sorted(s["span_id"] for s in spans)
    for row in from_proto:
        attrs = json.loads(row[10])
        assert set(attrs) == set(next(s["attrs"] for s in spans if s["span_id"] == row[1]))


def test_json_ids_must_be_hex_and_bodies_must_be_objects():
    for body in (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', b"[]", b"nul"):
        with pytest.raises(otlp_decode.BadRequest):
            otlp_decode.rows(otlp_decode.parse_json(body))


def test_inflate_is_capped_and_checked():
    small = b"x" * 1000
    assert otlp_decode.inflate(gzip.compress(small), "gzip") == small
    assert otlp_decode.inflate(zlib.compress(small), "deflate") == small
    assert otlp_decode.inflate(small, "") == small
    with pytest.raises(otlp_decode.TooLarge):
        otlp_decode.inflate(gzip.compress(b"\0" * (otlp_decode.MAX_BODY + 1)), "gzip")
    with pytest.raises(otlp_decode.BadRequest):
        otlp_decode.inflate(b"not gzip", "gzip")
    with pytest.raises(otlp_decode.BadRequest):
        otlp_decode.inflate(small, "br")
