"""The benchmark's span-counting sink (benchmarks/servers.py): it counts every span it is sent, and past its
threshold decodes beside its answers, never before one (an answer it held back while decoding filled a fast
agent's queue, and the benchmark charged the agent with the drops)."""

from __future__ import annotations

import importlib.util
import os
import threading

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.join(os.path.dirname(HERE), "benchmarks")


@pytest.fixture()
def servers(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)  # (servers imports msgpack_lite from beside it)
    spec = importlib.util.spec_from_file_location("bench_servers", os.path.join(BENCHMARKS, "servers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _body(names: list) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for name in names:
        span = scope.spans.add()
        span.name = name
        span.trace_id = b"\x01" * 16
        span.span_id = b"\x02" * 8
    return request.SerializeToString()


def test_counts_every_span_below_the_threshold(servers):
    received = servers.Received()
    for _ in range(3):
        received.add("/v1/traces", _body(["GET /plain", "SELECT"]))
    stats = received.snapshot()
    assert b'"spans": 6' in stats and b'"GET /plain": 3' in stats and b'"SELECT": 3' in stats
    assert b'"exports": 3' in stats and b'"errors": 0' in stats


def test_past_the_threshold_decodes_aside_and_counts_the_same(servers, monkeypatch):
    received = servers.Received()
    body = _body(["GET /all"] * 50)
    received.DECODE_AT = 3 * len(body)  # the fourth body is past it
    decoded_on = []
    release = threading.Event()
    decode = servers.Received._decode

    def recording(bodies):
        decoded_on.append(threading.get_ident())
        release.wait(10)  # a long decode: the adds below must not wait for it
        return decode(bodies)

    monkeypatch.setattr(servers.Received, "_decode", staticmethod(recording))
    for _ in range(4):
        received.add("/v1/traces", body)
    assert decoded_on and decoded_on[0] != threading.get_ident()  # a thread of its own
    for _ in range(2):
        received.add("/v1/traces", body)  # answered while the decode runs (one decoder at a time)
    assert len(decoded_on) == 1 and received.pending_bytes == 2 * len(body)
    release.set()
    stats = received.snapshot()  # waits for the decoder, then decodes the rest
    assert b'"spans": 300' in stats and b'"GET /all": 300' in stats and b'"exports": 6' in stats
    assert received.decoder is None and received.pending == []


def test_a_body_it_cannot_decode_is_an_error_not_a_span(servers):
    received = servers.Received()
    received.add("/v1/traces", b"\x0a\xff")  # a length past the end
    received.add("/v1/traces", _body(["ok"]))
    stats = received.snapshot()
    assert b'"errors": 1' in stats and b'"spans": 1' in stats
