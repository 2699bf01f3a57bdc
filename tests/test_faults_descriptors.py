"""A program that closes every descriptor and opens its own: the exporter never writes to (or
closes) a descriptor it no longer owns, and later spans still arrive over a new connection."""

from __future__ import annotations

import pytest
from support import clean_env, run_traced, write_script
from support.otlp_receiver import Receiver

CLOSES_EVERYTHING = """
    import os, socket, stat, sys, time
    from opentelemetry import trace
    from trace_run.agent import runtime

    port, mode, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    tracer = trace.get_tracer("fd-test")

    def exporter_fds():
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                    continue
                s = socket.socket(fileno=os.dup(int(name)))
            except OSError:
                continue
            try:
                if s.getpeername()[1] == port:
                    found.append(int(name))
            except OSError:
                pass
            finally:
                s.close()
        return found

    with tracer.start_as_current_span("before-close"):
        pass
    deadline = time.monotonic() + 20
    while runtime.stats()[0]["exported"] < 1 and time.monotonic() < deadline:  # its connection is back in the pool
        time.sleep(0.05)
    (target,) = exporter_fds()
    exporter = runtime.state()["processors"][0][1].exporter
    print("transport", type(getattr(getattr(exporter, "_client", None), "_transport", exporter)).__name__)

    os.closerange(3, 1024)  # as a daemonizer does
    fillers = []
    while (fd := os.open(os.devnull, os.O_RDONLY)) != target:
        fillers.append(fd)
    if mode == "file":  # the program's own file gets the exporter's old number
        os.close(fd)
        mine = open(out_path, "w")
    else:  # one end of the program's socket pair: urllib3 would take it for a live connection
        a, peer = socket.socketpair()
        os.dup2(a.fileno(), target)
        a.close()
        peer.setblocking(False)
        mine = os.fdopen(target, "w")
    for fd in fillers:
        os.close(fd)
    write = mine.write
    assert mine.fileno() == target, (mine.fileno(), target)

    write("program line 1\\n")
    mine.flush()
    for i in range(3):
        with tracer.start_as_current_span("after-close-%d" % i):
            pass
        time.sleep(0.4)  # a batch is exported meanwhile
    write("program line 2\\n")
    mine.close()
    if mode == "socket":
        with open(out_path, "wb") as f:
            f.write(peer.recv(1 << 20))
    print("reused", target)
"""


@pytest.fixture
def keepalive_receiver():
    """A receiver answering HTTP/1.1, as collectors do: the exporter keeps its connection pooled."""
    r = Receiver(keep_alive=True).start()
    yield r
    r.stop()


@pytest.mark.parametrize("mode,transport,extra", [
    ("file", "Urllib3", {}),
    ("socket", "Urllib3", {}),
    ("file", "Requests", {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}),
    ("file", "Requests", {"OTEL_TRACE_RUN_OTLP_ENCODER": "sdk"}),
    # trace-run's own gRPC client (grpcio's C core owns its sockets: not covered, see README)
    ("file", "OTLPGrpcH2SpanExporter", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}),
    ("socket", "OTLPGrpcH2SpanExporter", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}),
], ids=["file-urllib3", "socket-urllib3", "file-requests", "file-sdk-exporter", "file-grpc", "socket-grpc"])
def test_descriptors_closed_under_the_exporter_are_never_written(tmp_path, keepalive_receiver, mode, transport, extra):
    receiver = keepalive_receiver
    script = write_script(tmp_path, CLOSES_EVERYTHING)
    out = tmp_path / "mine.txt"
    extra = dict(extra)
    protocol = extra.pop("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    port = receiver.grpc_port if protocol == "grpc" else receiver.http_port
    proc = run_traced(["python", script, str(port), mode, str(out)],
                      env=clean_env(**receiver.env(protocol, **extra)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert transport in proc.stdout.split("\n", 1)[0], proc.stdout  # the SDK transport this case means to exercise
    assert "reused " in proc.stdout, proc.stdout
    assert out.read_bytes() == b"program line 1\nprogram line 2\n"  # nothing of ours, nothing of theirs lost
    wanted = {"before-close", "after-close-0", "after-close-1", "after-close-2"}
    spans = receiver.wait_for(lambda ss: wanted <= {s.name for s in ss}, timeout=10)
    assert sorted(s.name for s in spans) == sorted(wanted)  # later spans went over a new connection
    assert "Bad file descriptor" not in proc.stderr and "not exported" not in proc.stderr, proc.stderr
