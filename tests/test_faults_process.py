"""Process models and concurrency: every span of every process arrives exactly once, and work done
in threads, executors and asyncio tasks stays in the request's trace."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time

import pytest
from apps.fault_servers import free_port
from support import HERE, TRACE_RUN, clean_env, run_traced, write_script

APPS = os.path.join(HERE, "apps")


def _wait_port(port: int, proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("server exited: %s" % proc.stderr.read())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not listen")


def _get(port: int, path: str, trace_id: str = None) -> int:
    """One request on its own connection, read to EOF: the server closes the socket only after the
    WSGI response is closed, so the request's server span has ended when this returns (a client that
    stops at the headers races the span's end against whatever the test does next)."""
    headers = "traceparent: 00-%s-%s-01\r\n" % (trace_id, "ab" * 8) if trace_id else ""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n" % (path, headers)).encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def _exactly_once(spans, name):
    ids = [s.span_id for s in spans if s.name == name]
    assert len(ids) == len(set(ids)), "%s arrived twice" % name
    return ids


# -- gunicorn -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [["-k", "sync"], ["-k", "gthread", "--threads", "2"], ["-k", "sync", "--preload"]],
                         ids=["sync", "gthread", "preload"])
def test_gunicorn_workers_recycled_every_request_traced_once(receiver, mode):
    port = free_port()
    env = clean_env(**receiver.env(), OTEL_SERVICE_NAME="gunicorn-app")
    # --graceful-timeout: a worker forked just before the master's SIGTERM reaches it, and not yet past its
    # own signal set-up, keeps the master's handler and ignores it (gunicorn's race, bare too); the master
    # then kills it after the graceful timeout (30 s by default: the wait below would run out first)
    proc = subprocess.Popen([TRACE_RUN, "gunicorn", "-b", "127.0.0.1:%d" % port, "-w", "2", "--max-requests", "3",
                             "--graceful-timeout", "5", "--chdir", APPS, *mode, "fault_workers_app:app"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trace_ids = ["%032x" % (0xC0FFEE0000 + i) for i in range(12)]
    try:
        _wait_port(port, proc)
        for tid in trace_ids:
            assert _get(port, "/work", tid) == 200
        spans = receiver.wait_for(lambda ss: len([s for s in ss if s.name == "handler-work"]) >= 12, timeout=15)
        time.sleep(0.5)  # the last recycled worker's replacement boots (that race is rarer still)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("gunicorn did not stop: %s" % proc.communicate()[1][-4000:]) from None
    time.sleep(0.3)
    spans = list(receiver.spans)
    for tid in trace_ids:
        in_trace = [s for s in spans if s.trace_id == tid]
        servers = [s for s in in_trace if s.kind == "SERVER"]
        works = [s for s in in_trace if s.name == "handler-work"]
        assert len(servers) == 1 and len(works) == 1, (tid, in_trace)
        assert works[0].parent_id == servers[0].span_id
    assert len(_exactly_once(spans, "handler-work")) == 12
    pids = {s.resource["process.pid"] for s in spans if s.name == "handler-work"}
    assert len(pids) >= 4, "workers were recycled (max-requests 3): %s" % pids


POST_FORK_CONFIG = """
import os, sys

def post_fork(server, worker):  # in the worker, right after the fork: what it inherited
    with open(os.environ["FORKS_FILE"], "a") as out:
        out.write("%s %s\\n" % (worker.pid, os.environ["EXPORTER_MODULE"] in sys.modules))
"""


@pytest.mark.parametrize("protocol, worker, prepared", [
    ("grpc", "sync", True), ("http/protobuf", "sync", True), ("grpc", "gevent", False),
], ids=["grpc-sync", "http-sync", "grpc-gevent"])
def test_gunicorns_master_prepares_the_exporter_before_forking_its_workers(tmp_path, receiver, protocol, worker,
                                                                          prepared):
    """Without --preload the master imports nothing traced: trace-run sets the SDK and the exporter's modules
    up in it before its first fork, so the workers share them (issue 19: worker RSS over OTLP/gRPC); not
    under gevent, whose workers must import what uses ssl first. Every request's span still arrives once,
    in its trace, and the master prints nothing (no at-fork handler imported inside a fork)."""
    port = free_port()
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(POST_FORK_CONFIG)
    forks = tmp_path / "forks.txt"
    env = clean_env(**receiver.env(protocol=protocol), OTEL_SERVICE_NAME="gunicorn-app", FORKS_FILE=str(forks),
                    EXPORTER_MODULE="trace_run.agent.otlp_" + ("grpc_h2" if protocol == "grpc" else "http"))
    proc = subprocess.Popen([TRACE_RUN, "gunicorn", "-b", "127.0.0.1:%d" % port, "-w", "2", "-k", worker,
                             "--graceful-timeout", "5", "--chdir", APPS, "-c", str(config), "fault_workers_app:app"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trace_ids = ["%032x" % (0xFEED0000 + i) for i in range(6)]
    try:
        _wait_port(port, proc)
        for tid in trace_ids:
            assert _get(port, "/work", tid) == 200
        receiver.wait_for(lambda ss: len([s for s in ss if s.name == "handler-work"]) >= 6, timeout=15)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("gunicorn did not stop: %s" % proc.communicate()[1][-4000:]) from None
    inherited = [line.split()[1] for line in forks.read_text().splitlines()]
    assert len(inherited) >= 2 and set(inherited) == {str(prepared)}, inherited
    assert "Exception ignored" not in err and "Traceback" not in err, err[-3000:]
    spans = list(receiver.spans)
    for tid in trace_ids:
        servers = [s for s in spans if s.trace_id == tid and s.kind == "SERVER"]
        works = [s for s in spans if s.trace_id == tid and s.name == "handler-work"]
        assert len(servers) == 1 and len(works) == 1, (tid, spans)
        assert servers[0].parent_id == "ab" * 8 and works[0].parent_id == servers[0].span_id


# -- multiprocessing, os.fork, daemon threads -------------------------------------------

FORKS = """
    import multiprocessing as mp, os, sys, threading, time
    from opentelemetry import trace
    tracer = trace.get_tracer("forks")

    def work(tag):
        with tracer.start_as_current_span("work-" + str(tag)):
            pass

    def daemon(counter):
        while True:
            with tracer.start_as_current_span("daemon-tick"):
                time.sleep(0.005)
            counter.append(1)

    if __name__ == "__main__":
        with tracer.start_as_current_span("before-fork"):
            pass  # still queued when the children fork: must not be exported by them too
        for method in ("fork", "spawn"):
            p = mp.get_context(method).Process(target=work, args=("mp-" + method,))
            p.start(); p.join()
            assert p.exitcode == 0
        pool = mp.get_context("fork").Pool(2)
        pool.map(work, ["pool-%d" % i for i in range(4)])
        pool.close()
        pool.join()
        pid = os.fork()
        if pid == 0:
            work("os-fork-child")
            sys.exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        ticks = []
        threading.Thread(target=daemon, args=(ticks,), daemon=True).start()
        time.sleep(0.3)
        print("ticks before exit:", len(ticks), flush=True)
"""


def test_fork_spawn_pool_osfork_and_daemon_thread_spans_arrive_once(tmp_path, receiver):
    script = write_script(tmp_path, FORKS)
    env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="30000"))
    proc = run_traced(["python", script], env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    ticks = int(proc.stdout.split("ticks before exit:")[1])
    wanted = {"before-fork", "work-mp-fork", "work-mp-spawn", "work-os-fork-child"} | {
        "work-pool-%d" % i for i in range(4)}
    spans = receiver.wait_for(lambda ss: wanted <= {s.name for s in ss}, timeout=10)
    time.sleep(0.3)
    spans = list(receiver.spans)
    for name in wanted:
        assert len(_exactly_once(spans, name)) == 1, (name, spans)
    daemon = _exactly_once(spans, "daemon-tick")
    assert len(daemon) >= ticks > 0  # every tick ended before exit arrived (and one may have ended during it)


# -- signals during a request ------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_request_same_exit_and_finished_spans_arrive_once(receiver, signum):
    results = {}
    for traced in (False, True):
        port = free_port()
        cmd = ["python", os.path.join(APPS, "fault_workers_app.py"), str(port)]
        env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="30000"))
        proc = subprocess.Popen(([TRACE_RUN] if traced else []) + cmd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            _wait_port(port, proc)
            for i in range(3):
                assert _get(port, "/work", "%032x" % (0xFEED00 + i)) == 200
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("GET", "/slow?s=5")
            while "slow started" not in proc.stdout.readline():
                pass
            proc.send_signal(signum)
            code = proc.wait(timeout=20)
            out, err = proc.stdout.read(), proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
        results[traced] = (code, out, [line for line in err.splitlines() if "Traceback" in line or "Error" in line])
    assert results[True] == results[False]
    spans = receiver.wait_for(lambda ss: len([s for s in ss if s.name == "handler-work" or s.kind == "SERVER"]) >= 6,
                              timeout=5)
    assert len(_exactly_once(spans, "handler-work")) == 3
    assert len([s for s in spans if s.kind == "SERVER" and s.name.endswith("/work")]) == 3


# -- threads and asyncio keep the request's context -------------------------------------------


def test_threads_executors_and_tasks_stay_in_the_request_trace(receiver):
    port = free_port()
    env = clean_env(**receiver.env())
    proc = subprocess.Popen([TRACE_RUN, "python", os.path.join(APPS, "fault_workers_app.py"), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(port, proc)
        for path in ("/pool", "/thread", "/async"):
            assert _get(port, path) == 200
        wanted = {"pool-work", "pool-map", "thread-work", "task-0", "task-1", "task-2", "executor-work"}
        spans = receiver.wait_for(lambda ss: wanted <= {s.name for s in ss}
                                  and len([s for s in ss if s.kind == "SERVER"]) >= 3, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    servers = {s.attributes.get("url.path"): s for s in spans if s.kind == "SERVER"}
    for path, names in (("/pool", ["pool-work", "pool-work", "pool-map"]), ("/thread", ["thread-work"]),
                        ("/async", ["task-0", "task-1", "task-2", "executor-work"])):
        server = servers[path]
        got = sorted(s.name for s in spans if s.name in names and s.trace_id == server.trace_id
                     and s.parent_id == server.span_id)
        assert got == sorted(names), (path, [s for s in spans if s.name in names])


POOL_TERMINATED = """
    import multiprocessing as mp
    from opentelemetry import trace

    def work(tag):
        with trace.get_tracer("pool").start_as_current_span(tag):
            pass

    if __name__ == "__main__":
        for round in range(3):
            with mp.get_context("fork").Pool(2) as pool:  # __exit__ terminates the workers (SIGTERM)
                pool.map(work, ["round%d-item%d" % (round, i) for i in range(4)])
        print("done")
"""


def test_pool_workers_terminated_by_the_with_block_deliver_their_spans(tmp_path, receiver):
    script = write_script(tmp_path, POOL_TERMINATED)
    proc = run_traced(["python", script], env=clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="30000")), timeout=60)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    wanted = {"round%d-item%d" % (r, i) for r in range(3) for i in range(4)}
    receiver.wait_for(lambda ss: wanted <= {s.name for s in ss}, timeout=5)
    got = [s.name for s in receiver.spans]
    assert sorted(got) == sorted(wanted), "missing: %s" % sorted(wanted - set(got))
