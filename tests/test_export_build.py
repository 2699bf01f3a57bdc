"""Where the exporter is built: on the program's thread that ends the first span (a thread of trace-run's
importing while the program walked `sys.modules` broke it: test_faults_module_table.py), except on an
event loop's thread, where it is built on a short-lived thread of its own. An asyncio program's first
request used to wait ~150 ms inside its event loop for the exporter's imports and file reads, and under
blockbuster (Starlette's own test suite) that build raised BlockingError, so every span was dropped."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from support import clean_env, run_traced, write_script

PARENT = "00f067aa0ba902b7"

LOOP_APP = r"""
import asyncio, sys, threading

from blockbuster import BlockBuster
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
import uvicorn

loop_thread = threading.get_ident()
watching = False
seen = []


def audit(event, args):  # every module import and file open on the event loop's thread
    if watching and threading.get_ident() == loop_thread and event in ("import", "open"):
        seen.append("%s %s" % (event, args[0]))


sys.addaudithook(audit)


async def hello(request):
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/hello", hello)])


async def get(port, trace_id):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  "traceparent: 00-%s-PARENT-01\r\n\r\n" % trace_id).encode())
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n", 1)[0].decode()


async def main():
    global watching
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    buster = BlockBuster()  # from here on a blocking call on the loop's thread raises BlockingError
    buster.activate()
    watching = True
    try:
        for i in range(1, 4):
            print(await get(port, "%032x" % i))
    finally:
        watching = False
        buster.deactivate()
    server.should_exit = True
    await task
    print("on the loop:", seen)


asyncio.run(main())
""".replace("PARENT", PARENT)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_event_loops_first_requests_neither_import_nor_block_and_every_span_arrives(tmp_path, receiver, protocol):
    env = clean_env(**receiver.env(protocol))
    proc = run_traced(["python", write_script(tmp_path, LOOP_APP)], env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["HTTP/1.1 200 OK"] * 3 + ["on the loop: []"], proc.stderr
    assert "trace-run:" not in proc.stderr, proc.stderr  # no "exporter ... not set up", no spans lost
    spans = receiver.wait_for(count=3)
    got = sorted((s.trace_id, s.parent_id, s.kind, s.name, s.attributes.get("http.response.status_code"))
                 for s in spans)
    assert got == [("%032x" % i, PARENT, "SERVER", "GET /hello", 200) for i in range(1, 4)]


class _Slow:
    """An exporter factory that takes as long as the test says, and notes the thread building it."""

    def __init__(self):
        self.release = threading.Event()
        self.threads = []

    def __call__(self):
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.threads.append(threading.get_ident())
        self.release.wait(10)
        return InMemorySpanExporter()

    def wait_until_building(self) -> None:
        deadline = time.monotonic() + 10
        while not self.threads and time.monotonic() < deadline:
            time.sleep(0.01)


def _fork_waits_for_the_build(slow, lazy) -> None:
    slow.wait_until_building()
    threading.Timer(0.2, slow.release.set).start()
    started = time.monotonic()
    lazy.prepare_for_fork()  # what os.fork() runs first: the child must not inherit half-done imports
    assert lazy.built is not None and time.monotonic() - started >= 0.15


def _pipeline(factory):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from trace_run.agent.exporthealth import CountingExporter, CountingProcessor
    from trace_run.agent.lazy_exporter import LazyExporter

    lazy = LazyExporter(factory, "slow")
    health = CountingExporter(lazy, "slow")
    provider = TracerProvider()
    counting = CountingProcessor(SimpleSpanProcessor(health), health)
    provider.add_span_processor(counting)
    return provider, lazy, health, counting


def _first_spans(tracer, ended):
    for name in ("one", "two"):
        with tracer.start_as_current_span(name):
            pass
        ended.append(name)


def test_the_first_span_end_builds_on_the_thread_ending_it(monkeypatch):
    from trace_run.core import hooks

    monkeypatch.setattr(hooks, "busy", lambda: False)  # no import under way elsewhere (see below)
    slow = _Slow()
    slow.release.set()
    provider, lazy, health, counting = _pipeline(slow)
    ended = []
    program = threading.Thread(target=_first_spans, args=(provider.get_tracer("t"), ended))
    program.start()
    program.join(10)
    assert slow.threads == [program.ident] and ended == ["one", "two"]
    assert [s.name for s in health.built.get_finished_spans()] == ["one", "two"]
    assert (counting.ended, counting.dropped(), health.counts()["exported"]) == (2, 0, 2)


def test_a_span_ending_inside_an_import_leaves_the_build_to_a_later_one(tmp_path, monkeypatch):
    """The build's imports could meet the module this thread is importing, half done: the next span
    ending outside any import builds it."""
    import importlib

    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from trace_run.agent.exporthealth import CountingExporter, CountingProcessor
    from trace_run.agent.lazy_exporter import LazyExporter
    from trace_run.core import hooks

    class Queue(SpanProcessor):  # as the batch processor: spans wait, nothing exports at once
        def __init__(self):
            self.names = []

        def on_end(self, span):
            self.names.append(span.name)

    monkeypatch.setattr(hooks, "busy", lambda: False)
    slow = _Slow()
    slow.release.set()
    lazy = LazyExporter(slow, "slow")
    queue = Queue()
    counting = CountingProcessor(queue, CountingExporter(lazy, "slow"))
    provider = TracerProvider()
    provider.add_span_processor(counting)
    (tmp_path / "makes_a_span_at_import.py").write_text(
        "import builtins\nwith builtins._tracer.start_as_current_span('at-import'):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins._tracer", provider.get_tracer("t"), raising=False)
    importlib.import_module("makes_a_span_at_import")
    assert slow.threads == [] and lazy.built is None and counting._pending and queue.names == ["at-import"]
    with provider.get_tracer("t").start_as_current_span("after-import"):
        pass
    assert slow.threads == [threading.get_ident()] and lazy.built is not None and not counting._pending
    assert queue.names == ["at-import", "after-import"] and (counting.ended, counting.dropped()) == (2, 2)


def test_on_an_event_loop_the_first_span_end_starts_the_build_elsewhere_and_returns_at_once(monkeypatch):
    import asyncio

    from trace_run.core import hooks

    # An import under way on another thread (a thread an earlier test left in this worker) holds the build
    # back, as it should (test_core_hooks.py); here none is: a thread that started one just as the span ended
    # made the program's thread build it (once in a full run under three workers).
    monkeypatch.setattr(hooks, "busy", lambda: False)
    slow = _Slow()
    provider, lazy, health, counting = _pipeline(slow)
    tracer = provider.get_tracer("t")
    ended = []

    async def first_span():
        with tracer.start_as_current_span("one"):
            pass
        ended.append("one")

    loop_thread = threading.Thread(target=asyncio.run, args=(first_span(),))
    loop_thread.start()
    slow.wait_until_building()
    # SimpleSpanProcessor exports on the ending thread: it waits for the build there (as the export
    # thread does); the build itself runs on a thread of its own, started by the first span end
    assert len(slow.threads) == 1 and slow.threads[0] != loop_thread.ident and health.built is None
    slow.release.set()
    loop_thread.join(10)
    with tracer.start_as_current_span("two"):
        pass
    assert ended == ["one"] and len(slow.threads) == 1
    assert [s.name for s in health.built.get_finished_spans()] == ["one", "two"]
    assert (counting.ended, counting.dropped(), health.counts()["exported"]) == (2, 0, 2)


def test_a_fork_waits_for_a_build_under_way_on_another_of_the_programs_threads(monkeypatch):
    from trace_run.core import hooks

    monkeypatch.setattr(hooks, "busy", lambda: False)
    slow = _Slow()
    provider, lazy, health, counting = _pipeline(slow)
    ended = []
    program = threading.Thread(target=_first_spans, args=(provider.get_tracer("t"), ended))
    program.start()
    _fork_waits_for_the_build(slow, lazy)
    program.join(10)
    assert slow.threads == [program.ident] and ended == ["one", "two"]


def test_a_fork_waits_for_a_build_under_way_and_the_child_builds_its_own():
    slow = _Slow()
    provider, lazy, health, counting = _pipeline(slow)
    lazy._build_beside()  # as on an event loop
    _fork_waits_for_the_build(slow, lazy)
    lazy._after_fork()  # in the child: nothing of the parent's build, and the next first span builds again
    counting._reset()
    assert lazy.built is None and counting._pending
    with provider.get_tracer("t").start_as_current_span("in-child"):
        pass
    assert [s.name for s in health.exporter.get_finished_spans()] == ["in-child"]
    assert len(slow.threads) == 2  # the child built its own (on demand: no builder thread in a forked child)


def test_a_build_that_fails_on_its_thread_is_reported_once_and_its_spans_count_as_failed(capfd):
    def broken():
        raise OSError("no such certificate file")

    provider, lazy, health, counting = _pipeline(broken)
    for name in ("a", "b"):
        with provider.get_tracer("t").start_as_current_span(name):
            pass
    err = capfd.readouterr().err
    assert err.count("exporter for slow not set up (OSError: no such certificate file)") == 1, err
    assert (counting.ended, health.counts()["failed"], counting.dropped()) == (2, 2, 0)


def test_a_build_whose_file_was_closed_under_it_is_tried_again(capfd):
    """A daemonizer's closerange while the builder imports: the file being read goes (EBADF) and the
    second try builds it; no warning, no span lost."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tries = []

    def closed_once():
        tries.append(1)
        if len(tries) == 1:
            raise OSError(9, "Bad file descriptor")
        return InMemorySpanExporter()

    provider, lazy, health, counting = _pipeline(closed_once)
    with provider.get_tracer("t").start_as_current_span("after-closerange"):
        pass
    assert len(tries) == 2 and isinstance(lazy.built, InMemorySpanExporter)
    assert [s.name for s in lazy.built.get_finished_spans()] == ["after-closerange"]
    assert "trace-run:" not in capfd.readouterr().err


def test_the_main_threads_end_waits_for_a_build_under_way_within_the_exit_timeout(monkeypatch):
    """A program that ends right after its first span: threading's exit hooks stop concurrent.futures, which
    the build needs (the SDK's Resource.create at import), so the main thread's end waits for it first."""
    from trace_run.core import config

    monkeypatch.setenv("OTEL_TRACE_RUN_EXIT_TIMEOUT", "300")
    config.reset()
    try:
        slow = _Slow()
        _provider, lazy, health, _counting = _pipeline(slow)
        lazy._build_beside()  # as on an event loop
        assert lazy._exit_hook is True  # registered with threading's exit hooks (compat.before_threads_stop)
        started = time.monotonic()
        lazy._finish_build_at_exit()  # a build that hangs: the wait ends with the exit timeout
        waited = time.monotonic() - started
        assert 0.25 <= waited < 3 and lazy.built is None
        threading.Timer(0.1, slow.release.set).start()
        lazy._finish_build_at_exit()
        assert lazy.built is not None
    finally:
        monkeypatch.delenv("OTEL_TRACE_RUN_EXIT_TIMEOUT")
        config.reset()


def test_without_threadings_exit_hooks_the_build_is_not_waited_for(monkeypatch):
    from trace_run.core import compat

    monkeypatch.delattr(threading, "_register_atexit", raising=False)
    assert compat.before_threads_stop(lambda: None) is False


def test_the_build_imports_what_requests_imports_inside_its_first_request():
    """requests imports `netrc` inside its first request: the build does it, on the thread a fork waits
    for. Left to the export thread, a child forked meanwhile inherited that module's import lock without
    its owner, and its exit flush hung there until the exit timeout dropped its spans (3.9 leg of CI)."""
    code = ("import sys\n"
            "from trace_run.agent import sdk\n"
            "spec = dict(sdk._resolve_otlp(), endpoint='http://127.0.0.1:4318/v1/traces', encoder='sdk')\n"
            "assert 'netrc' not in sys.modules\n"
            "sdk.build_otlp_exporter(spec)\n"
            "print('netrc' in sys.modules)\n")
    proc = run_traced([sys.executable, "-c", code], env=clean_env(), trace_run=False)
    assert proc.stdout == "True\n", proc.stderr


CLOSED_WHILE_READING = r"""
import os, sys, threading, time
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_run.agent.lazy_exporter import LazyExporter

real_close = os.close
holding = threading.Event()


def factory():  # what each of the build's imports does: open a module's file, read it, close it
    with open(__file__, "rb") as module_file:
        holding.set()
        time.sleep(0.3)
        module_file.read()
    return InMemorySpanExporter()


lazy = LazyExporter(factory, "test")
lazy._build_beside()  # as on an event loop
holding.wait(5)
started = time.monotonic()
if sys.argv[2] == "closerange":  # a daemonizer
    os.closerange(3, 1 << 16)
else:  # an older one, descriptor by descriptor
    for fd in range(3, 1024):
        try:
            os.close(fd)
        except OSError:
            pass
waited = time.monotonic() - started
with open(sys.argv[1], "w") as mine:
    for line in ("mine", "still mine"):  # the second after the build's read is over
        mine.write(line + "\n")
        mine.flush()
        time.sleep(0.4)
lazy.get()
print(type(lazy.built).__name__, waited >= 0.15, os.close is real_close)
"""


@pytest.mark.parametrize("closing", ["closerange", "close-loop"])
def test_a_program_closing_every_descriptor_during_the_build_never_loses_its_own_file(tmp_path, closing):
    """The build's imports each hold a module file for a moment: a program that closed every descriptor
    then got that number for its own file, and the import's close closed it (EBADF on the program's next
    write; CI's `pbkdf2-after-closerange`). The program's closes wait for the build's reads instead."""
    script = write_script(tmp_path, CLOSED_WHILE_READING)
    mine = tmp_path / "mine.txt"
    proc = run_traced([sys.executable, script, str(mine), closing], env=clean_env(), trace_run=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["InMemorySpanExporter", "True", "True"]
    assert mine.read_text() == "mine\nstill mine\n"
