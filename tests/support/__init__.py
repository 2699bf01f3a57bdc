"""What the tests share (import from here, not from conftest): running programs under trace-run,
a clean environment, the services' addresses. Fixtures are in tests/conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the tests folder
BIN = os.path.dirname(sys.executable)
TRACE_RUN = os.path.join(BIN, "trace-run")

PG_DSN = os.environ.get("TRACE_RUN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TRACE_RUN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TRACE_RUN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def clean_env(**extra) -> dict:
    """The test process's environment without any OTEL_* leaking in, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "GRPC_ENABLE_FORK_SUPPORT"}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["OTEL_TRACE_RUN_RAISE_ERRORS"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_traced(args, env=None, timeout=60, check=False, cwd=None, trace_run=True, stdin=None):
    """Run `trace-run ARGS...` (or ARGS bare) and return the CompletedProcess."""
    cmd = ([TRACE_RUN] if trace_run else []) + list(args)
    proc = subprocess.run(
        cmd, env=env if env is not None else clean_env(), capture_output=True, text=True,
        timeout=timeout, cwd=cwd, input=stdin,
    )
    if check and proc.returncode != 0:
        raise AssertionError("exit %d\nstdout:\n%s\nstderr:\n%s" % (proc.returncode, proc.stdout, proc.stderr))
    return proc


def write_script(tmp_path, body: str, name: str = "app.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def python() -> str:
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("server exited %s:\n%s" % (proc.returncode, proc.stderr.read()))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server on %d did not start" % port)


def http_get(url: str, headers=None, method: str = "GET") -> tuple:
    """A plain, untraced request from the test process: (status, body)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.putrequest(method, parts.path + ("?" + parts.query if parts.query else ""))
        for name, value in headers or ():
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def memory_growth(once, warm: int, n: int) -> int:
    """Bytes Python's allocator holds more after `n` calls of `once()` than before them (after `warm` calls
    first, each side collected): a C path that keeps a reference grows with the calls."""
    import gc
    import tracemalloc

    for _ in range(warm):
        once()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            once()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


class NamedLock:
    """A lock of a Python class: the C extensions call its acquire and release by name, as the Python methods do
    (a builtin lock's they call directly); each call is recorded in `calls`, a list of its own or one given."""

    def __init__(self, calls: list = None):
        self._inner = threading.Lock()
        self.calls = [] if calls is None else calls

    def acquire(self, *args):
        self.calls.append("acquire")
        return self._inner.acquire(*args)

    def release(self):
        self.calls.append("release")
        self._inner.release()

    def locked(self):
        return self._inner.locked()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def replace_acquire(monkeypatch) -> None:
    """NamedLock.acquire replaced on its class at run time (after the C was configured): calls say "replaced"."""

    def acquire(self, *args):
        self.calls.append("replaced")
        return self._inner.acquire(*args)

    monkeypatch.setattr(NamedLock, "acquire", acquire)
