"""trace-run's own OTLP/gRPC client (agent/grpc_h2.py, agent/hpack.py, agent/otlp_grpc_h2.py) against
grpcio servers: HPACK's RFC vectors, programs under trace-run, TLS, metadata, gzip, big batches,
retries, errors, timeouts, restarts, forks and gevent; and grpc never imported on this path."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest
from apps.fault_servers import make_ca
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import clean_env, run_traced, write_script
from support.grpc_script import ScriptedGrpcServer
from support.otlp_receiver import Receiver
from trace_run.agent import grpc_h2, hpack
from trace_run.agent.otlp_grpc_h2 import OTLPGrpcH2SpanExporter, partial_success, retry_delay, target

# -- HPACK: RFC 7541 Appendix C ----------------------------------------------------------------

C3 = [  # requests without Huffman coding (C.3), then with it (C.4): the same headers
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
C4 = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]
REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com"),
     (b"cache-control", b"no-cache")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"), (b":authority", b"www.example.com"),
     (b"custom-key", b"custom-value")],
]
REQUEST_TABLES = [  # the dynamic table after each request, newest first, and its size
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    ([(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 164),
]
C5 = [  # responses, table size 256, without Huffman coding (C.5), then with it (C.6)
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d "
    "546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f "
    "6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b "
    "2076 6572 7369 6f6e 3d31",
]
C6 = [
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 "
    "8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 "
    "dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
]
DATE1, DATE2 = b"Mon, 21 Oct 2013 20:13:21 GMT", b"Mon, 21 Oct 2013 20:13:22 GMT"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", b"https://www.example.com")],
    [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", b"https://www.example.com")],
    [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2), (b"location", b"https://www.example.com"),
     (b"content-encoding", b"gzip"), (b"set-cookie", COOKIE)],
]
RESPONSE_TABLES = [
    ([(b"location", b"https://www.example.com"), (b"date", DATE1), (b"cache-control", b"private"),
      (b":status", b"302")], 222),
    ([(b":status", b"307"), (b"location", b"https://www.example.com"), (b"date", DATE1),
      (b"cache-control", b"private")], 222),
    ([(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)], 215),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("blocks,expected,tables,size", [
    (C3, REQUESTS, REQUEST_TABLES, 4096), (C4, REQUESTS, REQUEST_TABLES, 4096),
    (C5, RESPONSES, RESPONSE_TABLES, 256), (C6, RESPONSES, RESPONSE_TABLES, 256),
], ids=["C.3", "C.4-huffman", "C.5", "C.6-huffman"])
def test_hpack_rfc7541_appendix_c(blocks, expected, tables, size):
    decoder = hpack.Decoder(max_table_size=size)
    for block, headers, (table, table_size) in zip(blocks, expected, tables):
        assert decoder.decode(_hex(block)) == headers
        assert decoder.table == table and decoder.size == table_size


def test_hpack_rfc7541_c2_literals_and_c1_integers():
    decoder = hpack.Decoder()
    assert decoder.decode(_hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")) == \
        [(b"custom-key", b"custom-header")]
    assert decoder.size == 55
    assert hpack.Decoder().decode(_hex("040c 2f73 616d 706c 652f 7061 7468")) == [(b":path", b"/sample/path")]
    never = hpack.Decoder()
    assert never.decode(_hex("1008 7061 7373 776f 7264 0673 6563 7265 74")) == [(b"password", b"secret")]
    assert never.table == []
    assert hpack.Decoder().decode(b"\x82") == [(b":method", b"GET")]
    # C.1: 10 and 1337 with a 5-bit prefix, 42 at an octet boundary
    assert hpack.encode_integer(10, 5) == b"\x0a" and hpack.decode_integer(b"\x0a", 0, 5) == (10, 1)
    assert hpack.encode_integer(1337, 5) == b"\x1f\x9a\x0a" and hpack.decode_integer(b"\x1f\x9a\x0a", 0, 5) == (1337, 3)
    assert hpack.encode_integer(42, 8) == b"\x2a"


def test_hpack_huffman_is_the_rfc_code_and_strict():
    # C.4.1's "www.example.com" both ways; every byte value round-trips
    assert hpack.huffman_encode(b"www.example.com") == _hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
    every = bytes(range(256)) * 2
    assert hpack.huffman_decode(hpack.huffman_encode(every)) == every
    with pytest.raises(hpack.HPACKError):
        hpack.huffman_decode(hpack.huffman_encode(b"a") + b"\xff")  # 8+ bits of padding
    with pytest.raises(hpack.HPACKError):
        hpack.huffman_decode(b"\x00")  # padding not all ones ("0" = 5 bits of '0', then 000)
    with pytest.raises(hpack.HPACKError):
        hpack.Decoder(max_table_size=256).decode(b"\x3f\xe1\x1f")  # a size update over what we allowed


def test_hpack_encoded_requests_decode_to_the_same_headers():
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/x.Y/Z"), ("te", "trailers"),
               ("x-long", "v" * 300), ("user-agent", "u")]
    assert hpack.Decoder().decode(hpack.encode(headers)) == [(k.encode(), v.encode()) for k, v in headers]


def test_dynamic_table_size_update_evicts():
    decoder = hpack.Decoder()
    decoder.decode(_hex(C3[0]))
    assert decoder.table
    assert decoder.decode(b"\x20") == [] and decoder.table == [] and decoder.size == 0


# -- the exporter, in this process ----------------------------------------------------------------


def _spans(n: int = 3, attribute_bytes: int = 10) -> list:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("grpc-h2")
    for i in range(n):
        with tracer.start_as_current_span("span-%d" % i, attributes={"blob": "%d" % i + "x" * attribute_bytes}):
            pass
    return list(memory.get_finished_spans())


@pytest.fixture(scope="module")
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def test_exported_bytes_are_the_encoders_and_metadata_arrives(receiver):
    from trace_run.agent.otlp_encoder import Encoder

    receiver.clear()
    spans = _spans()
    exporter = OTLPGrpcH2SpanExporter(receiver.grpc_endpoint, insecure=True, timeout_s=5,
                                      headers={"X-Tenant": "t1", "api-key": "secret"})
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans) is SpanExportResult.SUCCESS  # the same connection, a new stream
        assert receiver.requests == [Encoder().encode(spans)] * 2
        meta = receiver.headers_seen[0]
        assert meta["x-tenant"] == "t1" and meta["api-key"] == "secret"  # lowercased, as gRPC metadata
        assert meta["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    finally:
        exporter.shutdown()


class _Relay:
    """A TCP relay counting the bytes from the client to the server."""

    def __init__(self, port: int):
        self.up = 0
        self.accepted = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._target = port
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src, dst, up):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if up:
                    self.up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self._listener.close()


def test_gzip_compresses_on_the_wire_and_arrives_whole(receiver):
    receiver.clear()
    spans = _spans(200, attribute_bytes=2000)  # ~400 KB, very compressible
    relay = _Relay(receiver.grpc_port)
    exporter = OTLPGrpcH2SpanExporter("http://127.0.0.1:%d" % relay.port, insecure=True, timeout_s=5,
                                      compression="gzip")
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert len(receiver.spans) == 200
        assert relay.up < len(receiver.requests[0]) / 10, (relay.up, len(receiver.requests[0]))
    finally:
        exporter.shutdown()
        relay.stop()


def test_a_batch_over_one_mib_crosses_the_flow_control_windows(receiver):
    from trace_run.agent.otlp_encoder import Encoder

    receiver.clear()
    spans = _spans(600, attribute_bytes=4000)  # ~2.4 MB: many DATA frames, many WINDOW_UPDATEs
    exporter = OTLPGrpcH2SpanExporter(receiver.grpc_endpoint, insecure=True, timeout_s=10)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        data = Encoder().encode(spans)
        assert len(data) > 2 * 1024 * 1024 and receiver.requests == [data]
    finally:
        exporter.shutdown()


def test_unavailable_then_ok_is_retried_and_delivered_once():
    server = ScriptedGrpcServer(["code:UNAVAILABLE", "ok"])
    relay = _Relay(server.port)
    exporter = OTLPGrpcH2SpanExporter("http://127.0.0.1:%d" % relay.port, insecure=True, timeout_s=10)
    spans = _spans(4)
    try:
        started = time.monotonic()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        waited = time.monotonic() - started
        calls = server.wait_calls(2)
        connections = relay.accepted
    finally:
        relay.stop()
        exporter.shutdown()
        server.stop()
    assert [c["mode"] for c in calls] == ["code:UNAVAILABLE", "ok"]
    assert len(server.span_ids) == 4 == len(set(server.span_ids))
    assert connections == 2  # as the SDK renews its channel after UNAVAILABLE
    assert 0.75 <= waited < 5  # the SDK's first backoff: 1 s +-20 %


def test_retry_info_sets_the_backoff():
    server = ScriptedGrpcServer(["retryinfo:0.2", "ok"])
    exporter = OTLPGrpcH2SpanExporter(server.endpoint, insecure=True, timeout_s=10)
    try:
        started = time.monotonic()
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
        assert 0.15 <= time.monotonic() - started < 0.75
    finally:
        exporter.shutdown()
        server.stop()


def test_a_non_retryable_status_is_not_retried():
    server = ScriptedGrpcServer(["code:PERMISSION_DENIED:no such tenant", "ok"])
    exporter = OTLPGrpcH2SpanExporter(server.endpoint, insecure=True, timeout_s=10)
    try:
        assert exporter.export(_spans(2)) is SpanExportResult.FAILURE
        assert not exporter.unanswered
        time.sleep(0.3)
        assert [c["mode"] for c in server.calls] == ["code:PERMISSION_DENIED:no such tenant"]
    finally:
        exporter.shutdown()
        server.stop()


def test_a_huge_answer_is_read_only_up_to_the_cap_and_not_retried():
    server = ScriptedGrpcServer(["huge:50000000", "ok"])  # 50 MB
    exporter = OTLPGrpcH2SpanExporter(server.endpoint, insecure=True, timeout_s=20)
    try:
        started = time.monotonic()
        assert exporter.export(_spans(2)) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 5
        assert not exporter.unanswered  # it answered; its status was never read
        assert exporter.channel._connection is None  # the rest is not read: that connection is closed
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS  # a new one
        assert [c["mode"] for c in server.wait_calls(2)] == ["huge:50000000", "ok"]  # not sent twice
    finally:
        exporter.shutdown()
        server.stop()


def test_grpc_message_and_trailers_only_answers():
    server = ScriptedGrpcServer(["code:INVALID_ARGUMENT:100% bad / \u00e9"])
    channel = grpc_h2.Channel("127.0.0.1", server.port)
    try:
        with pytest.raises(grpc_h2.GrpcError) as caught:
            channel.unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export", b"", timeout=5)
        assert caught.value.code == grpc_h2.INVALID_ARGUMENT
        assert caught.value.message == "100% bad / \u00e9"  # percent-decoded
        assert caught.value.sent
        # unimplemented method: grpcio answers Trailers-Only
        with pytest.raises(grpc_h2.GrpcError) as caught:
            channel.unary("/no.Such/Method", b"", timeout=5)
        assert caught.value.code == grpc_h2.UNIMPLEMENTED
    finally:
        channel.close()
        server.stop()


def test_no_answer_within_the_timeout_is_unanswered():
    server = ScriptedGrpcServer(["sleep:3"])
    exporter = OTLPGrpcH2SpanExporter(server.endpoint, insecure=True, timeout_s=1)
    try:
        started = time.monotonic()
        assert exporter.export(_spans(2)) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 2.5
        assert exporter.unanswered  # sent, no answer: the collector may have it
    finally:
        exporter.shutdown()
        server.stop()


def test_a_silent_listener_or_nothing_listening_fail_and_nothing_was_sent():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        # connected, but no HTTP/2 preface came back in time: the request never went out
        exporter = OTLPGrpcH2SpanExporter("http://127.0.0.1:%d" % port, insecure=True, timeout_s=0.5)
        started = time.monotonic()
        assert exporter.export(_spans(1)) is SpanExportResult.FAILURE and not exporter.unanswered
        assert time.monotonic() - started < 1.5
    finally:
        listener.close()
    exporter = OTLPGrpcH2SpanExporter("http://127.0.0.1:%d" % port, insecure=True, timeout_s=0.5)
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE and not exporter.unanswered


def test_server_restarted_between_batches_reconnects():
    first = ScriptedGrpcServer(["ok"])
    port = first.port
    exporter = OTLPGrpcH2SpanExporter(first.endpoint, insecure=True, timeout_s=10)
    try:
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
        first.stop()
        second = ScriptedGrpcServer(["ok"], port=port)
        try:
            started = time.monotonic()
            assert exporter.export(_spans(2)) is SpanExportResult.SUCCESS
            assert time.monotonic() - started < 0.5  # no backoff: the dead connection was seen before sending
            assert len(second.wait_calls(1)) == 1 and len(second.span_ids) == 2
        finally:
            second.stop()
    finally:
        exporter.shutdown()


FORK_SCRIPT = r"""
import os, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_run.agent.otlp_grpc_h2 import OTLPGrpcH2SpanExporter

memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
tracer = provider.get_tracer("grpc-h2")

def spans(n):
    memory.clear()
    for i in range(n):
        with tracer.start_as_current_span("span-%d" % i):
            pass
    return list(memory.get_finished_spans())

exporter = OTLPGrpcH2SpanExporter(sys.argv[1], insecure=True, timeout_s=5)
assert exporter.export(spans(1)) is SpanExportResult.SUCCESS
parent_connection = exporter.channel._connection
assert parent_connection is not None
pid = os.fork()
if pid == 0:  # the child: no connection inherited, a new one works
    code = 1
    try:
        if exporter.channel._connection is None and exporter.export(spans(2)) is SpanExportResult.SUCCESS:
            code = 0 if exporter.channel._connection is not parent_connection else 2
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
# the parent's connection was not touched by the child: it goes on
sent = exporter.export(spans(3)) is SpanExportResult.SUCCESS
print("parent", sent, exporter.channel._connection is parent_connection)
exporter.shutdown()
"""


def test_forked_child_exports_on_its_own_connection(receiver, tmp_path):
    # in a process of its own: a fork of the test process would copy whatever threads and at-fork hooks
    # other tests left in it (an xdist worker once hung there)
    receiver.clear()
    script = write_script(tmp_path, FORK_SCRIPT, "fork_export.py")
    proc = run_traced([sys.executable, script, receiver.grpc_endpoint], trace_run=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["child 0", "parent True True"], proc.stdout + proc.stderr
    assert len(receiver.wait_for(count=6)) == 6


def test_partial_success_and_retry_info_are_read():
    # ExportTraceServiceResponse{partial_success{rejected_spans: 3, error_message: "too old"}}
    assert partial_success(b"\x0a\x0b\x08\x03\x12\x07too old") == (3, "too old")
    assert partial_success(b"") == (0, "")
    import base64

    # RetryInfo{retry_delay{seconds: 2, nanos: 500000000}}, base64 without padding as gRPC sends it
    raw = base64.b64encode(b"\x0a\x08\x08\x02\x10\x80\xca\xb5\xee\x01").decode().rstrip("=")
    assert retry_delay({"google.rpc.retryinfo-bin": raw}) == 2.5
    assert retry_delay({}) is None


def test_endpoint_rules_follow_the_sdk():
    assert target("http://collector:4317", insecure=True) == ("collector", 4317, False)
    assert target("https://collector:4317", insecure=True) == ("collector", 4317, True)
    assert target("collector:4317", insecure=False) == ("collector", 4317, True)
    assert target("collector:4317", insecure=True) == ("collector", 4317, False)
    assert target("http://[::1]:4317/ignored/path", insecure=True) == ("::1", 4317, False)
    assert target("http://collector", insecure=True) == ("collector", 443, False)


def test_grpc_timeout_header():
    assert grpc_h2.grpc_timeout(10) == "10000000u"
    assert grpc_h2.grpc_timeout(1000) == "1000000m"
    assert grpc_h2.grpc_timeout(0.0000001) == "1u"


# -- programs under trace-run ----------------------------------------------------------------------

PROGRAM = r"""
import sys
from opentelemetry import trace
tracer = trace.get_tracer("h2-app")
with tracer.start_as_current_span("parent"):
    with tracer.start_as_current_span("child"):
        pass
trace.get_tracer_provider().force_flush()
print(sorted(m for m in sys.modules if m == "grpc" or m.startswith(("grpc.", "google.protobuf"))))
"""


@pytest.mark.parametrize("client", ["trace-run", "grpcio"])
def test_program_spans_arrive_over_grpc_with_ids_and_parents(tmp_path, receiver, client):
    receiver.clear()
    env = clean_env(OTEL_TRACE_RUN_GRPC_CLIENT=client, **receiver.env("grpc"))
    proc = run_traced(["python", write_script(tmp_path, PROGRAM)], env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    spans = receiver.wait_for(count=2)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"parent", "child"} and len(spans) == 2
    assert by_name["child"].trace_id == by_name["parent"].trace_id
    assert by_name["child"].parent_id == by_name["parent"].span_id and by_name["parent"].parent_id is None
    if client == "trace-run":
        assert proc.stdout.strip() == "[]"  # neither grpc nor protobuf was imported
    else:
        assert "'grpc'" in proc.stdout


def test_non_retryable_error_is_counted_failed_with_the_usual_message(tmp_path):
    server = ScriptedGrpcServer(["code:UNAUTHENTICATED:bad key"])
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=server.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                    OTEL_BSP_SCHEDULE_DELAY="100", OTEL_TRACE_RUN_EXIT_TIMEOUT="3000")
    try:
        proc = run_traced(["python", write_script(tmp_path, PROGRAM)], env=env)
        time.sleep(0.2)
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stdout.strip() == "[]"
    lines = proc.stderr.splitlines()
    assert len(server.calls) == 1, server.calls  # not retried
    assert any("exporting spans to http://127.0.0.1:%d (grpc) failed" % server.port in line for line in lines), lines
    assert any("2 of 2 spans were not exported" in line for line in lines), lines
    assert "unanswered" not in proc.stderr and "without an answer" not in proc.stderr, lines


def test_tls_and_mutual_tls_with_the_test_ca(tmp_path_factory, tmp_path):
    ca = make_ca(tmp_path_factory.mktemp("h2ca"))
    for mutual in (False, True):
        tls = {"cert": ca["server_cert"], "key": ca["server_key"], "ca": ca["ca"] if mutual else None}
        server = ScriptedGrpcServer(["ok"], tls=tls)
        extra = {"OTEL_EXPORTER_OTLP_CERTIFICATE": ca["ca"]}
        if mutual:
            extra.update(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=ca["client_cert"],
                         OTEL_EXPORTER_OTLP_CLIENT_KEY=ca["client_key"])
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="https://127.0.0.1:%d" % server.port,
                        OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_BSP_SCHEDULE_DELAY="100", **extra)
        try:
            proc = run_traced(["python", write_script(tmp_path, PROGRAM)], env=env)
            server.wait_calls(1)
        finally:
            server.stop()
        assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.strip() == "[]", proc.stderr
        assert len(server.span_ids) == 2, mutual
    # mutual TLS required, no client certificate: refused, reported, the program unchanged
    server = ScriptedGrpcServer(["ok"], tls={"cert": ca["server_cert"], "key": ca["server_key"], "ca": ca["ca"]})
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="https://127.0.0.1:%d" % server.port,
                    OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_CERTIFICATE=ca["ca"],
                    OTEL_BSP_SCHEDULE_DELAY="100", OTEL_TRACE_RUN_EXIT_TIMEOUT="1000")
    try:
        proc = run_traced(["python", write_script(tmp_path, PROGRAM)], env=env)
    finally:
        server.stop()
    assert proc.returncode == 0 and server.span_ids == [] and "2 of 2 spans were not exported" in proc.stderr


FORKING = r"""
import os, sys
from opentelemetry import trace
tracer = trace.get_tracer("fork-app")
with tracer.start_as_current_span("before-fork"):
    pass
trace.get_tracer_provider().force_flush()  # the parent's connection exists now
pid = os.fork()
with tracer.start_as_current_span("in-child" if pid == 0 else "in-parent"):
    pass
if pid == 0:
    trace.get_tracer_provider().force_flush()
    sys.exit(0)
os.waitpid(pid, 0)
"""


def test_forked_program_parent_and_child_deliver_once(tmp_path, receiver):
    receiver.clear()
    proc = run_traced(["python", write_script(tmp_path, FORKING)], env=clean_env(**receiver.env("grpc")))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    receiver.wait_for(count=3)
    time.sleep(0.3)
    assert sorted(s.name for s in receiver.spans) == ["before-fork", "in-child", "in-parent"]


GEVENT = r"""
from gevent import monkey
monkey.patch_all()
import sys
import gevent
from opentelemetry import trace
tracer = trace.get_tracer("gevent-app")

def work(i):
    with tracer.start_as_current_span("greenlet-%d" % i):
        gevent.sleep(0.01)

gevent.joinall([gevent.spawn(work, i) for i in range(5)])
trace.get_tracer_provider().force_flush()
print(sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc.")))
"""


EVENTLET = r"""
import eventlet
eventlet.monkey_patch()
import sys
from opentelemetry import trace
tracer = trace.get_tracer("eventlet-app")

def work(i):
    with tracer.start_as_current_span("greenlet-%d" % i):
        eventlet.sleep(0.01)

pool = eventlet.GreenPool()
for i in range(5):
    pool.spawn(work, i)
pool.waitall()
trace.get_tracer_provider().force_flush()
print(sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc.")))
"""


@pytest.mark.parametrize("program", ["gevent", "eventlet"])
def test_monkey_patched_program_exports_over_grpc(tmp_path, receiver, program):
    receiver.clear()
    script = write_script(tmp_path, GEVENT if program == "gevent" else EVENTLET)
    proc = run_traced(["python", script], env=clean_env(**receiver.env("grpc")))
    ours = [line for line in proc.stderr.splitlines() if line.startswith("trace-run")]
    assert proc.returncode == 0 and ours == [] and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "[]"
    spans = receiver.wait_for(count=5)
    assert sorted(s.name for s in spans) == ["greenlet-%d" % i for i in range(5)]


def test_grpc_not_imported_on_the_default_path(monkeypatch):
    """In this process too: building the default gRPC exporter imports neither grpc nor protobuf."""
    import subprocess

    code = ("import sys\n"
            "from trace_run.agent import sdk\n"
            "spec = dict(sdk._resolve_otlp(), protocol='grpc', endpoint='http://127.0.0.1:4317')\n"
            "e = sdk.build_otlp_exporter(spec)\n"
            "print(type(e).__name__, sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'"
            " or m.startswith('google.protobuf')))\n")
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "OTLPGrpcH2SpanExporter []", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(OTEL_TRACE_RUN_GRPC_CLIENT="grpcio"),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("OTLPGrpcSpanExporter [") and "'grpc'" in out.stdout, out.stderr


# -- the protocol's corners, against a raw HTTP/2 server written here ------------------------------


class RawH2Server:
    """One HTTP/2 server connection at a time, answering each gRPC call as `mode` says, and recording
    what the client sent: frames (type, flags, stream, length) and the request messages."""

    def __init__(self, mode: str, window: int = 65535):
        self.mode = mode
        self.window = window  # our SETTINGS_INITIAL_WINDOW_SIZE (the client's send window per stream)
        self.frames: list = []
        self.messages: list = []
        self.connections = 0
        self.violations: list = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn, self.connections), daemon=True).start()

    @staticmethod
    def _frame(kind, flags, stream, payload=b""):
        return grpc_h2._frame(kind, flags, stream, payload)

    def _read(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _handle(self, conn, number):
        import struct

        decoder = hpack.Decoder()
        try:
            assert self._read(conn, 24) == grpc_h2.PREFACE
            conn.sendall(self._frame(grpc_h2.SETTINGS, 0, 0, struct.pack(">HI", grpc_h2.S_INITIAL_WINDOW, self.window)))
            windows: dict = {}
            conn_window = 65535
            bodies: dict = {}
            while True:
                head = self._read(conn, 9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big")
                payload = self._read(conn, length)
                self.frames.append((kind, flags, stream, length))
                if kind == grpc_h2.HEADERS:
                    decoder.decode(payload)
                    windows[stream] = self.window
                    bodies[stream] = b""
                    if self.mode == "goaway" and number == 1:
                        conn.sendall(self._frame(grpc_h2.GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
                        return
                    if self.mode == "refused" and number == 1:
                        conn.sendall(self._frame(grpc_h2.RST_STREAM, 0, stream, struct.pack(">I", 0x7)))
                    if self.mode == "ping":
                        conn.sendall(self._frame(grpc_h2.PING, 0, 0, b"12345678"))
                elif kind == grpc_h2.DATA:
                    windows[stream] -= length
                    conn_window -= length
                    if windows[stream] < 0 or conn_window < 0:
                        self.violations.append((stream, windows[stream], conn_window))
                    bodies[stream] += payload
                    # give the window back in small steps, as a slow server would
                    conn.sendall(self._frame(grpc_h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", length))
                                 + self._frame(grpc_h2.WINDOW_UPDATE, 0, stream, struct.pack(">I", length)))
                    windows[stream] += length
                    conn_window += length
                    if flags & grpc_h2.END_STREAM:
                        self.messages.append(bodies.pop(stream)[5:])
                        self._answer(conn, stream)
                elif kind == grpc_h2.PING and flags & grpc_h2.ACK:
                    self.messages.append(("ping-ack", payload))
        except (EOFError, OSError, AssertionError):
            pass
        finally:
            conn.close()

    def _answer(self, conn, stream):
        block = hpack.encode([(":status", "200"), ("content-type", "application/grpc"),
                              ("x-filler", "f" * 40000)])  # over one frame: HEADERS + CONTINUATION
        size = 16384
        pieces = [block[i:i + size] for i in range(0, len(block), size)]
        out = self._frame(grpc_h2.HEADERS, 0, stream, pieces[0])
        for i, piece in enumerate(pieces[1:], 2):
            out += self._frame(grpc_h2.CONTINUATION, grpc_h2.END_HEADERS if i == len(pieces) else 0, stream, piece)
        # ExportTraceServiceResponse{partial_success{rejected_spans: 1}}, then the trailers
        message = b"\x0a\x02\x08\x01"
        out += self._frame(grpc_h2.DATA, 0, stream, b"\x00" + len(message).to_bytes(4, "big") + message)
        out += self._frame(grpc_h2.HEADERS, grpc_h2.END_HEADERS | grpc_h2.END_STREAM, stream,
                           hpack.encode([("grpc-status", "0")]))
        conn.sendall(out)

    def stop(self):
        self._listener.close()


def test_flow_control_never_exceeds_a_small_window_and_continuation_is_read():
    from trace_run.agent.otlp_encoder import Encoder

    server = RawH2Server("ok", window=1000)  # the client may have 1000 bytes in flight per stream
    exporter = OTLPGrpcH2SpanExporter("http://127.0.0.1:%d" % server.port, insecure=True, timeout_s=10)
    spans = _spans(20, attribute_bytes=1000)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS  # answered in HEADERS + CONTINUATION
        assert server.messages == [Encoder().encode(spans)]
        data = [f for f in server.frames if f[0] == grpc_h2.DATA]
        assert len(data) > 20 and max(f[3] for f in data) <= 1000 and server.violations == []
    finally:
        exporter.shutdown()
        server.stop()


def test_ping_is_acknowledged():
    server = RawH2Server("ping")
    exporter = OTLPGrpcH2SpanExporter("http://127.0.0.1:%d" % server.port, insecure=True, timeout_s=5)
    try:
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS  # the ACK is read before the next call
        deadline = time.monotonic() + 5
        while ("ping-ack", b"12345678") not in server.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ("ping-ack", b"12345678") in server.messages
    finally:
        exporter.shutdown()
        server.stop()


@pytest.mark.parametrize("mode", ["goaway", "refused"])
def test_goaway_and_refused_stream_fail_retryably_and_the_retry_delivers(mode):
    server = RawH2Server(mode)
    exporter = OTLPGrpcH2SpanExporter("http://127.0.0.1:%d" % server.port, insecure=True, timeout_s=10)
    try:
        with pytest.raises(grpc_h2.GrpcError) as caught:
            exporter.channel.unary("/x/y", b"", timeout=5)
        assert caught.value.code == grpc_h2.UNAVAILABLE
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS  # on a new connection
        assert server.connections == 2
    finally:
        exporter.shutdown()
        server.stop()
