"""gevent and eventlet hosts: the agent imports nothing they must patch first and starts no
thread before they patched, so HTTPS calls work in a monkey-patched worker, spans arrive with
their parent links, and neither library complains (now or at exit)."""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import threading
import time

import pytest
from apps.fault_servers import free_port, make_ca, server_tls_context
from support import TRACE_RUN, clean_env, run_traced, write_script

TRACE_ID = "5eed" * 8
PARENT = "ab" * 8
# What gevent, eventlet or the interpreter print when the agent got there first.
COMPLAINTS = ("MonkeyPatchWarning", "RecursionError", "Exception ignored", "were not greened", "Traceback")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """An HTTPS server (certificate from a CA made here) answering every GET with "ok"."""
    ca = make_ca(tmp_path_factory.mktemp("green-ca"))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = server_tls_context(ca).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"UPSTREAM": "https://127.0.0.1:%d/" % server.server_address[1], "UPSTREAM_CA": ca["ca"]}
    server.shutdown()
    server.server_close()


def _env(receiver, upstream, **extra) -> dict:
    env = clean_env(**receiver.env(), **upstream, OTEL_SERVICE_NAME="green", **extra)
    env.pop("PYTEST_CURRENT_TEST", None)  # eventlet keeps its "not greened" check quiet under pytest
    return env


def _assert_quiet(stderr: str) -> None:
    for complaint in COMPLAINTS:
        assert complaint not in stderr, stderr


def _assert_request_traced(receiver, upstream: dict, from_test: bool) -> None:
    """One SERVER span for GET /call, continuing its caller's trace (the test's traceparent, or the
    program's own traced client call); the HTTPS call to the upstream is a descendant of it."""
    def upstream_call(s):
        return s.kind == "CLIENT" and s.attributes.get("url.full", "").startswith(upstream["UPSTREAM"])

    spans = receiver.wait_for(lambda ss: any(upstream_call(s) for s in ss), timeout=20)
    by_id = {s.span_id: s for s in spans}
    servers = [s for s in spans if s.kind == "SERVER" and s.name == "GET /call"]
    assert len(servers) == 1, spans
    server = servers[0]
    if from_test:
        assert (server.trace_id, server.parent_id) == (TRACE_ID, PARENT), server
    else:
        assert by_id[server.parent_id].kind == "CLIENT" and by_id[server.parent_id].trace_id == server.trace_id
    calls = [s for s in spans if upstream_call(s)]
    for call in calls:
        assert call.status != "ERROR" and call.trace_id == server.trace_id, call
        ancestor = by_id.get(call.parent_id)
        while ancestor is not None and ancestor is not server:
            ancestor = by_id.get(ancestor.parent_id)
        assert ancestor is server, (call, spans)


def _get(port: int, path: str) -> tuple:
    headers = "traceparent: 00-%s-%s-01\r\n" % (TRACE_ID, PARENT)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n" % (path, headers)).encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _wait_port(port: int, proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("server exited: %s" % proc.communicate()[1])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not listen")


FLASK_APP = """
    import os

    import requests
    from flask import Flask

    app = Flask(__name__)

    @app.route("/call")
    def call():
        answer = requests.get(os.environ["UPSTREAM"], verify=os.environ["UPSTREAM_CA"], timeout=20)
        return "upstream %s %s" % (answer.status_code, answer.text)
"""


@pytest.mark.parametrize("worker", ["gevent", "gevent_pywsgi"])
def test_gunicorn_gevent_worker_https_call_works_traced_and_quiet(tmp_path, receiver, upstream, worker):
    write_script(tmp_path, FLASK_APP, "green_app.py")
    port = free_port()
    proc = subprocess.Popen([TRACE_RUN, "gunicorn", "-k", worker, "-w", "1", "-b", "127.0.0.1:%d" % port,
                             "--chdir", str(tmp_path), "green_app:app"], env=_env(receiver, upstream),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(port, proc)
        status, body = _get(port, "/call")
        assert (status, body) == (200, b"upstream 200 ok"), body
        _assert_request_traced(receiver, upstream, from_test=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    _assert_quiet(stderr)


def test_gevent_pywsgi_program_traced_and_quiet(tmp_path, receiver, upstream):
    # The program touches the OpenTelemetry API before it patches: harmless without the agent,
    # so it must stay harmless with it (the agent's export thread must not start before the patch).
    script = write_script(tmp_path, """
        from opentelemetry import trace
        from gevent import monkey

        monkey.patch_all()

        import urllib.request

        from gevent.pywsgi import WSGIServer
        from green_app import app

        server = WSGIServer(("127.0.0.1", 0), app, log=None)
        server.start()
        url = "http://127.0.0.1:%d/call" % server.server_port
        print(urllib.request.urlopen(url, timeout=30).read().decode(), flush=True)
        server.stop()
    """)
    write_script(tmp_path, FLASK_APP, "green_app.py")
    proc = run_traced(["python", script], env=_env(receiver, upstream), cwd=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout == "upstream 200 ok\n", proc.stderr
    _assert_request_traced(receiver, upstream, from_test=False)
    _assert_quiet(proc.stderr)


def test_eventlet_wsgi_program_traced_and_quiet(tmp_path, receiver, upstream):
    # eventlet.monkey_patch() imports psycopg2 (to green it) before it patches threading: our
    # psycopg2 hook sets the SDK up right there, which must create no lock or thread eventlet
    # cannot green.
    script = write_script(tmp_path, """
        import eventlet

        eventlet.monkey_patch()

        import urllib.request

        from eventlet import wsgi
        from green_app import app

        listener = eventlet.listen(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        server = eventlet.spawn(wsgi.server, listener, app, log_output=False)
        url = "http://127.0.0.1:%d/call" % port
        print(urllib.request.urlopen(url, timeout=30).read().decode(), flush=True)
        server.kill()
    """)
    write_script(tmp_path, FLASK_APP, "green_app.py")
    proc = run_traced(["python", script], env=_env(receiver, upstream), cwd=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout == "upstream 200 ok\n", proc.stderr
    _assert_request_traced(receiver, upstream, from_test=False)
    _assert_quiet(proc.stderr)


def test_export_processor_starts_at_the_first_span_end_and_a_failed_start_drops_only_spans():
    from trace_run.agent.green import StartsOnFirstSpan

    class Processor:
        def __init__(self):
            self.ended = []

        def on_end(self, span):
            self.ended.append(span)

        def shutdown(self):
            pass

    made = []
    lazy = StartsOnFirstSpan(lambda: made.append(Processor()) or made[-1])
    assert made == [] and lazy.force_flush() is True
    lazy.shutdown()  # nothing to shut down yet
    lazy.on_end("a")
    lazy.on_end("b")
    assert len(made) == 1 and made[0].ended == ["a", "b"]

    def cannot_start():
        raise RuntimeError("can't create new thread at interpreter shutdown")

    broken = StartsOnFirstSpan(cannot_start)
    broken.on_end("c")  # no exception reaches the span's end: the span is dropped (and counted at exit)
    assert broken.force_flush() is True


def test_threads_ending_the_first_spans_at_once_share_one_export_processor():
    # Two processors would mean two export threads, and shutting the spare one down would shut
    # the exporter they share.
    import threading

    from trace_run.agent.green import StartsOnFirstSpan

    made, shut, ended = [], [], []

    class Processor:
        def on_end(self, span):
            ended.append(span)

        def shutdown(self):
            shut.append(self)

    def factory():
        made.append(1)
        time.sleep(0.05)  # a thread start takes a while: the others arrive meanwhile
        return Processor()

    lazy = StartsOnFirstSpan(factory)
    gate = threading.Barrier(8)

    def end(i):
        gate.wait()
        lazy.on_end(i)

    threads = [threading.Thread(target=end, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(made), shut, sorted(ended)) == (1, [], list(range(8)))
