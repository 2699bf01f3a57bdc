"""Bad input from the operator and from the network: garbage in every variable of the registry,
fuzzed propagation headers against a real server, and a bug planted in one instrumentor."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tempfile

import pytest
from apps.fault_servers import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import HERE, TRACE_RUN, clean_env, run_traced, write_script
from support.otlp_receiver import Receiver
from test_faults_endpoint import split_stderr
from test_faults_process import _wait_port
from trace_run.core import config

APP = os.path.join(HERE, "apps", "fault_app.py")
GARBAGE = {"bool": "maybe", "int": "lots", "enum": "carrier-pigeon", "url": "not a url",
           "kvlist": "garbage-without-equals", "list": "(((garbage", "str": "(((garbage", "path": "(((garbage"}
ALWAYS_WARNED = ("bool", "int", "enum", "url", "kvlist")  # kinds where garbage is detectable on its own


@pytest.mark.parametrize("name", [v.name for v in config.VARIABLES])
def test_each_variable_parses_garbage_with_at_most_one_warning(monkeypatch, capsys, name):
    var = config.BY_NAME[name]
    monkeypatch.setenv(name, GARBAGE[var.kind])
    config.reset()
    try:
        config.get(name)
        config.get(name)
        config.validate_all()
    finally:
        config.reset()
    lines = [line for line in capsys.readouterr().err.splitlines() if name in line]
    # kinds the registry checks alone warn once; the others (names, regexes, paths) are checked where used
    assert len(lines) == (1 if var.kind in ALWAYS_WARNED else 0), lines


def test_every_variable_garbage_at_once_program_unchanged_one_warning_each():
    args = ["--spans", "3", "--requests", "2", "--exit", "3"]
    bare = subprocess.run([sys.executable, APP, *args], env=clean_env(), capture_output=True, text=True, timeout=60)
    env = clean_env()
    for var in config.VARIABLES:
        env[var.name] = GARBAGE[var.kind]
    proc = run_traced(["python", APP, *args], env=env, timeout=60)
    ours, theirs = split_stderr(proc.stderr)
    assert (proc.returncode, proc.stdout, theirs) == (bare.returncode, bare.stdout, bare.stderr.splitlines())
    for var in config.VARIABLES:
        about = [line for line in ours if (var.name + "=") in line or (var.name + " ") in line]
        if var.kind in ALWAYS_WARNED or var.name in NAMED_AT_SET_UP:
            assert len(about) == 1, (var.name, ours)
        else:
            assert len(about) <= 1, (var.name, ours)


# Checked when the SDK is set up (they may name installed plugins); all of them bad at once: each is named.
NAMED_AT_SET_UP = ("OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_PROPAGATORS")


def test_bad_values_are_reported_as_the_process_starts():
    # a program that imports nothing trace-run traces still hears about them, once each
    env = clean_env(OTEL_BSP_SCHEDULE_DELAY="lots", OTEL_EXPORTER_OTLP_COMPRESSION="zip",
                    OTEL_RESOURCE_ATTRIBUTES="team", OTEL_TRACES_SAMPLER="parentbased_traceidratio")
    proc = run_traced(["python", "-c", "print('hi')"], env=env, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "hi\n"), proc.stderr
    assert sorted(proc.stderr.splitlines()) == [
        "trace-run: warning: OTEL_BSP_SCHEDULE_DELAY='lots' is invalid (not a whole number); using 5000",
        "trace-run: warning: OTEL_EXPORTER_OTLP_COMPRESSION='zip' is invalid (expected one of none, gzip); "
        "using none",
        "trace-run: warning: OTEL_RESOURCE_ATTRIBUTES has entries that are not key=value ('team'); they are ignored",
    ], proc.stderr


# -- propagation input from the network ------------------------------------------------------

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                      max_size=300)
HEX = st.text("0123456789abcdefABCDEF-", min_size=0, max_size=40)
PROPAGATION = st.fixed_dictionaries({}, optional={
    "traceparent": st.one_of(HEADER_TEXT, st.builds("-".join, st.lists(HEX, min_size=1, max_size=6))),
    "tracestate": st.one_of(HEADER_TEXT, st.builds(",".join, st.lists(HEADER_TEXT, max_size=40))),
    "baggage": st.one_of(HEADER_TEXT, st.builds(",".join, st.lists(HEADER_TEXT, max_size=80))),
    "b3": st.one_of(HEADER_TEXT, st.builds("-".join, st.lists(HEX, min_size=1, max_size=5))),
    "X-B3-TraceId": HEX, "X-B3-SpanId": HEX, "X-B3-ParentSpanId": HEX,
    "X-B3-Sampled": st.sampled_from(["0", "1", "true", "d", "", "2"]), "X-B3-Flags": HEADER_TEXT,
})


def _rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


@pytest.fixture(scope="module")
def fuzz_server():
    receiver = Receiver().start()
    port = free_port()
    env = clean_env(**receiver.env(OTEL_PROPAGATORS="tracecontext,baggage,b3,b3multi"))
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([TRACE_RUN, "python", os.path.join(HERE, "apps", "fault_workers_app.py"), str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
    proc.err = err
    _wait_port(port, proc)
    for _ in range(20):  # warm up before measuring memory
        _send(port, {})
    yield port, proc, _rss_kib(proc.pid)
    proc.terminate()
    proc.wait(timeout=20)
    receiver.stop()


def _send(port: int, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.putrequest("GET", "/work")
    for key, value in headers.items():
        conn.putheader(key, value.encode("latin-1"))
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=PROPAGATION)
def test_fuzzed_propagation_headers_never_fail_a_request(fuzz_server, headers):
    port, proc, _ = fuzz_server
    assert _send(port, headers) == 200
    assert proc.poll() is None


def test_after_fuzzing_no_errors_and_memory_bounded(fuzz_server):
    port, proc, rss_before = fuzz_server
    # ~50 KB each (the server's own limit is 64 KB per line), far over the baggage and tracestate limits
    big = {"baggage": ",".join("k%d=%s" % (i, "v" * 200) for i in range(250)),
           "tracestate": ",".join("v%d=%s" % (i, "x" * 200) for i in range(250))}
    for _ in range(50):
        assert _send(port, big) == 200
    grown = _rss_kib(proc.pid) - rss_before
    assert grown < 30 * 1024, "RSS grew by %d KiB" % grown
    proc.terminate()
    proc.wait(timeout=20)
    proc.err.seek(0)
    err = proc.err.read()
    assert "Traceback" not in err and "instrumentation error" not in err, err[-3000:]
    extra = "\n".join(line for line in err.splitlines() if '"GET /work HTTP/1.1"' not in line)  # not access logs
    assert len(extra) < 5000, "the server's stderr was flooded: %r" % extra[:500]


# -- a bug in one instrumentor -----------------------------------------------------------------

ISOLATION = """
    import http.server, sqlite3, threading, urllib.request
    import requests

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"hi")
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/x" % server.server_address[1]
    print(requests.get(url, timeout=5).text)
    print(urllib.request.urlopen(url, timeout=5).read().decode())
    db = sqlite3.connect(":memory:")
    print(db.execute("SELECT 40 + 2").fetchone()[0])
    try:
        requests.get("http://127.0.0.1:1/refused", timeout=5)
    except requests.ConnectionError as exc:
        print("program sees its own error:", type(exc).__name__)
"""


def test_bug_in_one_instrumentor_reaches_neither_program_nor_others(tmp_path, receiver):
    script = write_script(tmp_path, ISOLATION)
    bare = subprocess.run([sys.executable, script], env=clean_env(), capture_output=True, text=True, timeout=60)
    env = clean_env(**receiver.env(), OTEL_TRACE_RUN_TEST_FAULT="requests", OTEL_TRACE_RUN_RAISE_ERRORS="false")
    proc = run_traced(["python", script], env=env, timeout=60)
    ours, theirs = split_stderr(proc.stderr)
    assert (proc.returncode, proc.stdout, theirs) == (bare.returncode, bare.stdout, bare.stderr.splitlines())
    assert proc.stdout.splitlines()[-1] == "program sees its own error: ConnectionError"
    assert len(ours) == 1 and "instrumentation error in requests" in ours[0], ours
    spans = receiver.wait_for(lambda ss: {"GET", "SELECT"} <= {s.name.split()[0] for s in ss}, timeout=10)
    scopes = {s.scope.rsplit(".", 1)[-1] for s in spans}
    assert "requests" not in scopes  # the broken one made nothing
    assert {"urllib", "sqlite3"} <= scopes, scopes  # the others work on
