"""`trace-run view`'s store and API, through a real viewer process: filters, paging, the
service map, --max-spans dropping the oldest traces whole, restarts, one viewer per file,
--print, the pages' routes and headers."""

from __future__ import annotations

import re
import subprocess

import pytest
from support import TRACE_RUN, clean_env
from support.viewer import Viewer, request, sid, span, tid

T0 = 1_750_000_000_000_000_000  # a fixed start, so time filters are exact


@pytest.fixture
def viewer(tmp_path):
    v = Viewer(str(tmp_path / "view.sqlite3")).start()
    yield v
    v.stop()


def _send(viewer: Viewer, spans: list, resource: dict = None) -> None:
    status, body = viewer.post(request(spans, resource).SerializeToString())
    assert status == 200, body


def _ids(traces: list) -> list:
    return [t["trace_id"] for t in traces]


def _fill(viewer: Viewer) -> None:
    """Five traces, one second apart: 1 (web->db, slow, error), 2 (web), 3 (worker, orphan child),
    4 (web, attr), 5 (web->pay, a child whose parent arrives later)."""
    s = T0
    _send(viewer, [
        span(tid(1), sid(10), "GET /a", "web", s, 900, attrs={"http.route": "/a"}),
        span(tid(1), sid(11), "SELECT", "db", s + 1000, 800, parent=sid(10), kind=3, error=True,
             attrs={"db.system.name": "postgresql"}),
        span(tid(2), sid(20), "GET /b", "web", s + 10**9, 20, attrs={"user.vip": True}),
        span(tid(3), sid(31), "job", "worker", s + 2 * 10**9, 50, parent=sid(30), kind=1),
        span(tid(3), sid(32), "step", "worker", s + 2 * 10**9 + 5, 10, parent=sid(31), kind=1),
        span(tid(4), sid(40), "GET /c", "web", s + 3 * 10**9, 30, attrs={"customer.id": 7, "ratio": 0.5}),
        span(tid(5), sid(51), "charge", "pay", s + 4 * 10**9 + 100, 300, parent=sid(50), error=True),
    ], resource={"deployment.environment": "test"})
    viewer.wait_list(lambda ts: len(ts) == 5)
    _send(viewer, [span(tid(5), sid(50), "POST /checkout", "web", s + 4 * 10**9, 400, kind=2)],
          resource={"deployment.environment": "prod"})
    viewer.wait_trace(tid(5), spans=2)


def test_list_summary_roots_and_missing_parents(viewer):
    _fill(viewer)
    traces = viewer.json("/api/traces")["traces"]
    assert _ids(traces) == [tid(5), tid(4), tid(3), tid(2), tid(1)]  # newest first
    t1, t3, t5 = traces[4], traces[2], traces[0]
    assert t1 == {"trace_id": tid(1), "root_service": "web", "root_name": "GET /a", "start_ns": str(T0),
                  "duration_ms": 900.0, "span_count": 2, "service_count": 2, "error_count": 1,
                  "services": ["db", "web"], "missing_parents": 0}
    # no root arrived: the earliest span stands in, and the orphan is counted
    assert (t3["root_name"], t3["missing_parents"], t3["span_count"]) == ("job", 1, 2)
    # the root arrived after its child: it becomes the root, the trace starts with it
    assert (t5["root_service"], t5["root_name"], t5["missing_parents"]) == ("web", "POST /checkout", 0)
    assert (t5["start_ns"], t5["duration_ms"], t5["services"]) == (str(T0 + 4 * 10**9), 400.0, ["pay", "web"])
    trace3 = viewer.json("/api/traces/" + tid(3))["spans"]
    assert [(s["name"], s["missing_parent"]) for s in trace3] == [("job", True), ("step", False)]


@pytest.mark.parametrize("query, expected", [
    ("?service=web", [5, 4, 2, 1]),
    ("?service=db", [1]),
    ("?service=nobody", []),
    ("?name=step", [3]),
    ("?name=SELECT&service=web", [1]),
    ("?min_duration_ms=300", [5, 1]),
    ("?min_duration_ms=400.5", [1]),
    ("?errors=1", [5, 1]),
    ("?errors=1&service=pay", [5]),
    ("?attr=customer.id%3D7", [4]),
    ("?attr=user.vip%3Dtrue", [2]),
    ("?attr=ratio%3D0.5", [4]),
    ("?attr=db.system.name%3Dpostgresql", [1]),
    ("?attr=deployment.environment%3Dprod", [5]),
    ("?attr=deployment.environment%3Dtest", [5, 4, 3, 2, 1]),
    ("?attr=customer.id%3D8", []),
    ("?trace_id=" + tid(3).upper(), [3]),
    ("?start_ns=%d&end_ns=%d" % (T0 + 10**9, T0 + 3 * 10**9), [4, 3, 2]),
    ("?before_ns=%d&limit=2" % (T0 + 3 * 10**9), [3, 2]),
    ("?limit=1", [5]),
])
def test_filters(viewer, query, expected):
    _fill(viewer)
    assert _ids(viewer.json("/api/traces" + query)["traces"]) == [tid(n) for n in expected]


def test_bad_queries_answer_400_and_unknown_trace_404(viewer):
    for query in ("?min_duration_ms=slow", "?limit=x", "?trace_id=xyz", "?attr=novalue", "?before_ns=1.5"):
        status, _, body = viewer.get("/api/traces" + query)
        assert status == 400 and list(body) == ["error"] and body["error"], (query, body)
    status, _, body = viewer.get("/api/traces/" + tid(77))
    assert status == 404 and "no trace" in body["error"]
    assert viewer.get("/api/nothing")[0] == 404


def test_services_edges_counts_and_percentiles(viewer):
    spans = []
    for i in range(100):  # 100 calls web -> pay of 1..100 ms; every tenth an error; pay -> bank once
        spans.append(span(tid(100 + i), sid(1000 + i), "POST /checkout", "web", T0 + i, 200))
        spans.append(span(tid(100 + i), sid(2000 + i), "POST /pay", "pay", T0 + i + 1, i + 1, parent=sid(1000 + i),
                          error=i % 10 == 0))
    spans.append(span(tid(100), sid(3000), "POST /bank", "bank", T0 + 5, 3, parent=sid(2000)))
    spans.append(span(tid(100), sid(3001), "local", "bank", T0 + 6, 1, parent=sid(3000)))  # same service
    _send(viewer, spans[:150])
    _send(viewer, spans[150:])
    viewer.wait_list(lambda ts: len(ts) == 100, "?limit=500")
    services = viewer.json("/api/services")
    assert services["services"] == ["bank", "pay", "web"]
    assert services["edges"] == [
        {"parent": "pay", "child": "bank", "calls": 1, "errors": 0, "p50_ms": 3.0, "p99_ms": 3.0},
        {"parent": "web", "child": "pay", "calls": 100, "errors": 10, "p50_ms": 50.0, "p99_ms": 99.0},
    ]
    assert viewer.json("/api/span_names?service=bank")["names"] == ["POST /bank", "local"]
    assert viewer.json("/api/span_names")["names"] == ["POST /bank", "POST /checkout", "POST /pay", "local"]


def test_edge_counted_when_the_parent_arrives_after_the_child(viewer):
    _send(viewer, [span(tid(1), sid(2), "GET /x", "back", T0 + 1, 5, parent=sid(1))])
    viewer.wait_trace(tid(1))
    assert viewer.json("/api/services")["edges"] == []
    _send(viewer, [span(tid(1), sid(1), "GET", "front", T0, 9, kind=3)])
    viewer.wait_trace(tid(1), spans=2)
    assert viewer.json("/api/services")["edges"] == [
        {"parent": "front", "child": "back", "calls": 1, "errors": 0, "p50_ms": 5.0, "p99_ms": 5.0}]


def test_duplicate_spans_are_stored_once(viewer):
    spans = [span(tid(1), sid(1), "a", "s", T0, 5), span(tid(1), sid(2), "b", "s", T0, 1, parent=sid(1))]
    _send(viewer, spans)
    _send(viewer, spans)  # an exporter's retry
    viewer.wait_trace(tid(1), spans=2)
    _send(viewer, [span(tid(2), sid(3), "later", "s", T0 + 10, 1)])
    viewer.wait_trace(tid(2))
    assert len(viewer.json("/api/traces/" + tid(1))["spans"]) == 2
    assert viewer.json("/api/traces?trace_id=" + tid(1))["traces"][0]["span_count"] == 2


def test_max_spans_drops_the_oldest_traces_whole(tmp_path):
    with Viewer(str(tmp_path / "small.sqlite3"), "--max-spans", "10") as v:
        for n in range(1, 7):  # six traces of three spans, sent one after the other; the first's root is "old"
            _send(v, [span(tid(n), sid(n * 10 + k), "s%d" % k, "svc" if k == 1 or n > 1 and k == 0 else
                           "old" if k == 0 else "other", T0 + n * 10**9 + k, n, parent=sid(n * 10) if k else "")
                      for k in range(3)])
            v.wait_trace(tid(n), spans=3)
            if n == 1:
                assert v.json("/api/services")["services"] == ["old", "other", "svc"]
        listed = v.json("/api/traces")["traces"]
        services = v.json("/api/services")
        edges = services["edges"]
        assert services["services"] == ["other", "svc"]  # "old" went with the first trace
        gone = v.get("/api/traces/" + tid(3))[0]
    assert _ids(listed) == [tid(6), tid(5), tid(4)]  # 9 spans kept; a fourth trace would make 12
    assert all(t["span_count"] == 3 for t in listed) and gone == 404
    # the map forgets the dropped traces' calls too (one svc -> other call per trace, of n ms)
    assert edges == [{"parent": "svc", "child": "other", "calls": 3, "errors": 0, "p50_ms": 5.0, "p99_ms": 6.0}]


def test_restart_keeps_the_data(tmp_path):
    db = str(tmp_path / "keep.sqlite3")
    with Viewer(db) as v:
        _send(v, [span(tid(1), sid(1), "kept", "svc", T0, 5),
                  span(tid(1), sid(2), "child", "other", T0 + 1, 2, parent=sid(1))])
        before = v.wait_trace(tid(1), spans=2)
    with Viewer(db) as v:
        assert "(2 spans" in v.banner
        assert v.json("/api/traces/" + tid(1)) == before
        assert v.json("/api/services")["edges"][0]["calls"] == 1
        _send(v, [span(tid(2), sid(3), "new", "svc", T0 + 10, 1)])
        v.wait_trace(tid(2))
        assert _ids(v.json("/api/traces")["traces"]) == [tid(2), tid(1)]


def test_second_viewer_on_the_same_file_is_refused(tmp_path):
    db = str(tmp_path / "one.sqlite3")
    with Viewer(db) as first:
        proc = subprocess.run([TRACE_RUN, "view", "--db", db, "--ui-port", "0", "--otlp-http-port", "0",
                               "--otlp-grpc-port", "0"], env=clean_env(), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, proc
        assert proc.stderr.count("\n") == 1 and db in proc.stderr and "in use by another viewer" in proc.stderr
        assert "(pid %d)" % first.proc.pid in proc.stderr
        _send(first, [span(tid(1), sid(1), "still mine", "svc", T0, 1)])  # the first one is unharmed
        first.wait_trace(tid(1))


def test_port_in_use_is_one_clear_line(tmp_path, viewer):
    port = viewer.ui.rsplit(":", 1)[1]
    proc = subprocess.run([TRACE_RUN, "view", "--db", str(tmp_path / "other.sqlite3"), "--ui-port", port,
                           "--otlp-http-port", "0", "--otlp-grpc-port", "0"], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("trace-run view: cannot listen on"), proc.stderr
    port = viewer.http.rsplit(":", 1)[1]  # the pages' port is free, the receiver's taken
    proc = subprocess.run([TRACE_RUN, "view", "--db", str(tmp_path / "other.sqlite3"), "--ui-port", "0",
                           "--otlp-http-port", port, "--otlp-grpc-port", "0"], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("trace-run view: cannot listen on"), proc.stderr
    port = viewer.grpc.rsplit(":", 1)[1]
    proc = subprocess.run([TRACE_RUN, "view", "--db", str(tmp_path / "other.sqlite3"), "--ui-port", "0",
                           "--otlp-http-port", "0", "--otlp-grpc-port", port], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot listen for OTLP/gRPC" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


TREE = re.compile(r"^  \|[ #]+\| (?P<indent> *)(?P<name>\S.*?)\s+(?P<kind>SERVER|CLIENT|INTERNAL)\s+[\d.]+ ms\s+"
                  r"(?P<status>ok|ERROR)")


def test_print_shows_the_joined_trace_as_a_tree(tmp_path):
    db = str(tmp_path / "print.sqlite3")
    with Viewer(db) as v:
        _send(v, [
            span(tid(1), sid(1), "POST /checkout", "web", T0, 100, attrs={"http.route": "/checkout"}),
            span(tid(1), sid(2), "POST", "web", T0 + 10**6, 80, parent=sid(1), kind=3),
            span(tid(1), sid(3), "POST /pay", "pay", T0 + 2 * 10**6, 70, parent=sid(2), error=True,
                 message="Payment timeout"),
            span(tid(1), sid(5), "orphan", "mail", T0 + 3 * 10**6, 1, parent=sid(4), kind=1),
        ])
        v.wait_trace(tid(1), spans=4)
        proc = subprocess.run([TRACE_RUN, "view", "--db", db, "--print", tid(1)], env=clean_env(),
                              capture_output=True, text=True, timeout=60)  # while the viewer runs
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "trace %s  service=web" % tid(1)
    rows = [(len(m["indent"]) // 2, m["name"], m["kind"], m["status"]) for m in map(TREE.match, lines) if m]
    assert rows == [(0, "POST /checkout", "SERVER", "ok"), (1, "POST", "CLIENT", "ok"),
                    (2, "POST /pay [pay]", "SERVER", "ERROR"), (0, "orphan", "INTERNAL", "ok")]
    assert any("! Payment timeout" in line for line in lines)
    assert "trace %s  service=mail  (continues remote parent %s)" % (tid(1), sid(4)) in lines
    missing = subprocess.run([TRACE_RUN, "view", "--db", db, "--print", tid(2)], env=clean_env(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stdout == "" and tid(2) in missing.stderr


def test_pages_static_files_and_security_headers(viewer):
    for path in ("/api/traces", "/static/../cli.py", "/static/.hidden", "/nowhere", "/api/services"):
        status, headers, _ = viewer.get(path)
        assert headers["Content-Security-Policy"] == "default-src 'self'; img-src 'self' data:; style-src 'self'"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert status == (200 if path.startswith("/api/") else 404), path
    assert viewer.get("/static/%2e%2e%2fcli.py")[0] == 404


def test_ingest_is_visible_quickly_and_the_store_answers_while_the_writer_is_busy(viewer):
    """A 2,000-span trace (one request) is readable whole, with every parent found."""
    spans = [span(tid(1), sid(1), "root", "svc", T0, 500)]
    spans += [span(tid(1), sid(k), "op %d" % (k % 7), "svc-%d" % (k % 4), T0 + k, 0.1, parent=sid(k // 2))
              for k in range(2, 2001)]
    _send(viewer, spans)
    trace = viewer.wait_trace(tid(1), spans=2000, timeout=60)
    assert not any(s["missing_parent"] for s in trace["spans"])
    assert viewer.json("/api/traces")["traces"][0]["service_count"] == 5


def test_restart_with_a_smaller_max_spans_drops_the_oldest_at_once(tmp_path):
    db = str(tmp_path / "shrink.sqlite3")
    with Viewer(db) as v:
        for n in range(1, 5):
            _send(v, [span(tid(n), sid(n * 10 + k), "s", "svc", T0 + n, 1, parent=sid(n * 10) if k else "")
                      for k in range(2)])
            v.wait_trace(tid(n), spans=2)
    with Viewer(db, "--max-spans", "5") as v:
        assert "(4 spans, at most 5)" in v.banner
        assert _ids(v.json("/api/traces")["traces"]) == [tid(4), tid(3)]


def test_a_file_that_is_not_a_store_and_bad_options_get_one_line(tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    for args, says in (([str(junk)], "cannot use %s as the store" % junk),
                       ([str(tmp_path / "ok.sqlite3"), "--max-spans", "0"], "--max-spans must be at least 1")):
        proc = subprocess.run([TRACE_RUN, "view", "--ui-port", "0", "--otlp-http-port", "0", "--otlp-grpc-port",
                               "0", "--db"] + args, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith("trace-run view: " + says), proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert junk.read_bytes() == b"this is not a database" * 100  # left as it was
