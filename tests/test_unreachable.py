"""agent/unreachable.py tells a collector nobody listens at (which is not retried at exit) from one
that is slow or busy (which is). The errors are the real ones, from real connections."""

from __future__ import annotations

import socket
import time

import pytest
import requests
import urllib3
from apps.fault_servers import free_port
from trace_run.agent import unreachable


def _error_of(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the error is what is tested
        return error
    raise AssertionError("no error")


def _silent_server():
    """A port that accepts and never answers: a timeout, not a refusal."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    return server


@pytest.fixture
def closed_port():
    return free_port()


def test_refusals_are_told_through_every_wrapper(closed_port):
    url = "http://127.0.0.1:%d/v1/traces" % closed_port
    raw = _error_of(lambda: socket.create_connection(("127.0.0.1", closed_port), timeout=2))
    assert isinstance(raw, ConnectionRefusedError) and unreachable.refused(raw)
    pool = urllib3.PoolManager(retries=False)
    by_urllib3 = _error_of(lambda: pool.request("POST", url, body=b"x", timeout=2))
    assert type(by_urllib3).__name__ == "NewConnectionError" and unreachable.refused(by_urllib3)
    with_retries = _error_of(lambda: urllib3.PoolManager().request("POST", url, body=b"x", timeout=2,
                                                                    retries=urllib3.Retry(1, backoff_factor=0)))
    assert type(with_retries).__name__ == "MaxRetryError" and unreachable.refused(with_retries)
    by_requests = _error_of(lambda: requests.post(url, data=b"x", timeout=2))
    assert isinstance(by_requests, requests.ConnectionError) and unreachable.refused(by_requests)
    unknown_name = _error_of(lambda: socket.getaddrinfo("no-such-host.invalid", 4318))
    assert isinstance(unknown_name, socket.gaierror) and unreachable.refused(unknown_name)


def test_slow_or_failing_collectors_are_not_refusals():
    server = _silent_server()
    try:
        url = "http://127.0.0.1:%d/v1/traces" % server.getsockname()[1]
        timed_out = _error_of(lambda: urllib3.PoolManager(retries=False).request("POST", url, body=b"x", timeout=0.2))
        assert "Timeout" in type(timed_out).__name__ and not unreachable.refused(timed_out)
        by_requests = _error_of(lambda: requests.post(url, data=b"x", timeout=0.2))
        assert isinstance(by_requests, requests.Timeout) and not unreachable.refused(by_requests)
    finally:
        server.close()
    assert not unreachable.refused(ValueError("garbage answer"))
    assert not unreachable.refused(OSError(24, "Too many open files"))


def test_note_and_since(closed_port):
    before = time.monotonic()
    unreachable.note(ValueError("not a refusal"))
    assert not unreachable.since(before)
    unreachable.note(_error_of(lambda: socket.create_connection(("127.0.0.1", closed_port), timeout=2)))
    assert unreachable.since(before) and not unreachable.since(time.monotonic() + 1)


def test_an_error_that_cannot_be_read_is_no_refusal():
    class Odd(Exception):
        @property
        def reason(self):
            raise RuntimeError("unreadable")

    before = time.monotonic()
    unreachable.note(Odd())  # never raises into the export thread
    assert not unreachable.since(before)


def test_a_cycle_of_causes_ends():
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert not unreachable.refused(a)  # and returns
