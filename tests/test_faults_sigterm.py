"""SIGTERM while the main thread is inside a C call: the program ends as promptly as bare (its
finished spans flushed on the way), dies of SIGTERM, and sees the SIGTERM disposition bare has."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from support import PG_DSN, TRACE_RUN, clean_env, write_script

IN_A_C_CALL = """
    import hashlib, os, re, signal, sys
    from opentelemetry import trace

    tracer = trace.get_tracer("sigterm-test")
    for i in range(3):
        with tracer.start_as_current_span("work-%d" % i):
            pass
    print("getsignal", signal.getsignal(signal.SIGTERM))
    mode = sys.argv[1]
    if mode == "psycopg2":
        import psycopg2
        cursor = psycopg2.connect(sys.argv[2]).cursor()
    if mode == "pbkdf2-after-closerange":  # a daemonizer closes every descriptor, trace-run's among them
        os.closerange(3, 1 << 16)
        with open(sys.argv[3], "w") as mine:
            mine.write("mine\\n")
            mine.flush()
            print("ready", flush=True)
            hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 400_000_000)
    print("ready", flush=True)
    if mode == "pbkdf2":  # hashing: releases the GIL
        hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 400_000_000)
    elif mode == "psycopg2":  # a query: libpq waits in poll(), GIL released, retrying on EINTR
        cursor.execute("SELECT pg_sleep(60)")
    elif mode == "regex":  # catastrophic backtracking: keeps the GIL (and checks for signals)
        re.match(r"(a+)+$", "a" * 34 + "b")
    print("call returned")
"""


def _run_and_terminate(cmd, env) -> tuple:
    """(returncode, seconds from SIGTERM to exit, stdout)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = ""
        while "ready" not in out:
            line = proc.stdout.readline()
            assert line, "exited early: %s" % proc.stderr.read()
            out += line
        time.sleep(0.5)  # well inside the call
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        elapsed = time.monotonic() - start
        out += proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, elapsed, out


@pytest.mark.parametrize("mode", ["pbkdf2", "psycopg2", "regex", "pbkdf2-after-closerange"])
def test_sigterm_in_a_c_call_ends_as_promptly_as_bare_with_spans_flushed(tmp_path, receiver, mode):
    script = write_script(tmp_path, IN_A_C_CALL)
    mine = tmp_path / "mine.txt"
    cmd = ["python", script, mode, PG_DSN, str(mine)]
    env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="30000"))  # the spans wait in the queue
    bare_code, bare_elapsed, bare_out = _run_and_terminate(cmd, env)
    code, elapsed, out = _run_and_terminate([TRACE_RUN] + cmd, env)
    assert bare_code == code == -signal.SIGTERM, (bare_code, code)
    assert "call returned" not in out
    assert elapsed < bare_elapsed + 3, "ended %.1f s after SIGTERM (bare: %.1f s)" % (elapsed, bare_elapsed)
    getsignal = [line for line in out.splitlines() if line.startswith("getsignal")]
    assert getsignal == [line for line in bare_out.splitlines() if line.startswith("getsignal")]
    spans = receiver.wait_for(lambda ss: len(ss) >= 3, timeout=5)
    assert sorted(s.name for s in spans) == ["work-0", "work-1", "work-2"]
    if mode == "pbkdf2-after-closerange":  # nothing of trace-run's (a traceback from faulthandler) in it
        assert mine.read_text() == "mine\n"


FORKED_CHILD = """
    import hashlib, os, signal, sys, time
    from opentelemetry import trace

    tracer = trace.get_tracer("sigterm-test")
    with tracer.start_as_current_span("parent-before"):
        pass
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        with tracer.start_as_current_span("child-work"):
            pass
        os.write(w, b"x")
        hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 400_000_000)
        os._exit(0)
    os.read(r, 1)
    time.sleep(0.5)
    start = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    print("child", -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status),
          "after %.1f s" % (time.monotonic() - start))
    time.sleep(0.5)  # the parent's watcher must not have taken the child's SIGTERM for its own
    with tracer.start_as_current_span("parent-after"):
        pass
    print("parent done")
"""


def test_sigterm_to_a_forked_child_in_a_c_call_ends_the_child_only(tmp_path, receiver):
    script = write_script(tmp_path, FORKED_CHILD)
    env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="30000"))
    proc = subprocess.run([TRACE_RUN, "python", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("child %d after" % -signal.SIGTERM), lines
    assert float(lines[0].split()[3]) < 3, lines
    assert lines[1] == "parent done"
    spans = receiver.wait_for(lambda ss: len(ss) >= 3, timeout=5)
    assert sorted(s.name for s in spans) == ["child-work", "parent-after", "parent-before"]


TAKES_SIGTERM_OVER = """
    import os, signal, sys, time
    from opentelemetry import trace

    with trace.get_tracer("sigterm-test").start_as_current_span("work"):
        pass  # the SDK is set up: trace-run has taken SIGTERM by now

    def handler(signum, frame):
        print("program's handler", flush=True)
        os._exit(3)

    print("previous", signal.signal(signal.SIGTERM, handler))
    print("ready", flush=True)
    time.sleep(60)
"""


def test_a_program_that_takes_sigterm_later_owns_it_as_bare(tmp_path, receiver):
    script = write_script(tmp_path, TAKES_SIGTERM_OVER)
    env = clean_env(**receiver.env())
    bare = _run_and_terminate(["python", script], env)
    traced = _run_and_terminate([TRACE_RUN, "python", script], env)
    assert bare[0] == traced[0] == 3, (bare, traced)
    assert bare[2] == traced[2], (bare[2], traced[2])  # what signal.signal returned, and the handler ran
    assert "program's handler" in traced[2]


GIVES_SIGTERM_BACK = """
    import atexit, os, signal, sys, time
    from opentelemetry import trace

    tracer = trace.get_tracer("sigterm-test")
    with tracer.start_as_current_span("work"):
        pass
    atexit.register(lambda: print("atexit ran", flush=True))
    stopping = []
    def graceful(signum, frame):
        stopping.append(signum)

    previous = signal.signal(signal.SIGTERM, graceful)
    print("previous", previous)
    print("ready", flush=True)
    while not stopping:
        time.sleep(0.05)
    with tracer.start_as_current_span("graceful-shutdown"):
        pass
    print("restored", signal.signal(signal.SIGTERM, previous).__name__, signal.getsignal(signal.SIGTERM),
          flush=True)
    signal.raise_signal(signal.SIGTERM)  # as uvicorn does after its graceful shutdown
    time.sleep(5)
    print("still running")
"""


def test_a_server_that_restores_the_default_and_raises_sigterm_again_dies_with_its_spans_sent(
        tmp_path, receiver):
    script = write_script(tmp_path, GIVES_SIGTERM_BACK)
    env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="30000"))
    bare = _run_and_terminate(["python", script], env)
    traced = _run_and_terminate([TRACE_RUN, "python", script], env)
    assert bare[0] == traced[0] == -signal.SIGTERM, (bare, traced)
    assert bare[2] == traced[2], (bare[2], traced[2])  # no atexit, same dispositions seen
    assert "previous %s" % signal.SIG_DFL in traced[2] and "restored graceful %s" % signal.SIG_DFL in traced[2]
    assert traced[1] < 3, traced
    spans = receiver.wait_for(lambda ss: len(ss) >= 2, timeout=5)
    assert sorted(s.name for s in spans) == ["graceful-shutdown", "work"]


INTERRUPTS_MAIN = """
    import _thread, signal, sys
    from opentelemetry import trace

    with trace.get_tracer("sigterm-test").start_as_current_span("before"):
        pass  # the SDK is set up: trace-run has taken SIGTERM by now
    for disposition in (signal.SIG_IGN, signal.SIG_DFL):  # CPython's test_interrupt_main_noerror
        signal.signal(signal.SIGTERM, disposition)
        _thread.interrupt_main(signal.SIGTERM)
        sum(range(10000))  # the main thread comes back to the interpreter: a tripped handler would run here
    print("getsignal", signal.getsignal(signal.SIGTERM), _thread.interrupt_main.__name__)
    try:
        _thread.interrupt_main(signal.NSIG)
    except ValueError as exc:
        print("refused", exc)
    with trace.get_tracer("sigterm-test").start_as_current_span("after"):
        pass
    print("still running")
"""


@pytest.mark.skipif(sys.version_info < (3, 10), reason="interrupt_main takes a signal number from 3.10 on")
def test_interrupt_main_with_sigterm_at_its_default_does_nothing_as_bare(tmp_path, receiver):
    """`_thread.interrupt_main(SIGTERM)` simulates the signal only for a Python-level handler; at SIG_DFL it
    does nothing. trace-run's handler stands in for SIG_DFL: it took the simulation for a real SIGTERM and
    flushed and ended the process (CPython's own test_threading, at test_interrupt_main_noerror)."""
    script = write_script(tmp_path, INTERRUPTS_MAIN)
    env = clean_env(**receiver.env())
    bare = subprocess.run(["python", script], env=env, capture_output=True, text=True, timeout=60)
    traced = subprocess.run([TRACE_RUN, "python", script], env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == traced.returncode == 0, (bare, traced)
    assert bare.stdout == traced.stdout and "still running" in traced.stdout, (bare.stdout, traced.stdout)
    assert "trace-run:" not in traced.stderr, traced.stderr
    spans = receiver.wait_for(lambda ss: len(ss) >= 2, timeout=5)
    assert sorted(s.name for s in spans) == ["after", "before"]
    assert len({s.trace_id for s in spans}) == 2


FLUSH_STUCK = """
    import threading, time
    from opentelemetry import trace

    with trace.get_tracer("sigterm-test").start_as_current_span("work"):
        pass  # the SDK is set up: trace-run has taken SIGTERM by now
    from trace_run.agent import runtime

    runtime.flush_at_exit = lambda: threading.Event().wait()  # a flush stuck for good (a lock never released)
    print("ready", flush=True)
    time.sleep(60)
    print("slept")
"""


def test_a_flush_stuck_for_good_still_ends_the_process_soon_after_sigterm(tmp_path, receiver):
    # The Python-level handler ignores further SIGTERMs while it flushes: a flush that never returned left a
    # process no SIGTERM could end (a multiprocessing.Pool joining it waits forever). The watcher bounds it.
    script = write_script(tmp_path, FLUSH_STUCK)
    env = clean_env(**receiver.env(OTEL_TRACE_RUN_EXIT_TIMEOUT="500"))
    code, elapsed, out = _run_and_terminate([TRACE_RUN, "python", script], env)
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM), (code, out)
    assert elapsed < 5, elapsed  # the exit timeout (0.5 s) and the watcher's grace (1 s + 1 s), not 60 s
    assert "slept" not in out
