"""Celery end to end: real brokers (Redis, RabbitMQ), real workers under trace-run, spans at the receiver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
from support import AMQP_URL, HERE, PG_DSN, REDIS_URL, TRACE_RUN, clean_env, run_traced

APPS = os.path.join(HERE, "apps")
REDIS_DB = REDIS_URL.rsplit("/", 1)[0] + "/7"  # a db of its own: kombu keeps shared keys per db
BROKERS = {"redis": REDIS_DB, "rabbitmq": AMQP_URL}


def _env(receiver, service, broker="redis", queue="", **extra):
    return clean_env(**receiver.env(
        OTEL_SERVICE_NAME=service, CELERY_TEST_BROKER=BROKERS[broker], CELERY_TEST_BACKEND=REDIS_DB,
        CELERY_TEST_QUEUE=queue, PG_DSN=PG_DSN, PYTHONPATH=APPS, **extra))


class Worker:
    """`trace-run celery -A celery_app worker` in a subprocess; stopped (and killed if need be) at the end."""

    def __init__(self, tmp_path, env, pool="solo", quiet_startup=True, extra_args=()):
        self.log = tmp_path / ("worker-%s.log" % uuid.uuid4().hex[:6])
        args = [TRACE_RUN, "celery", "-A", "celery_app", "worker", "--pool", pool, "-Q", env["CELERY_TEST_QUEUE"],
                "-n", "trace-run-%s@%%h" % uuid.uuid4().hex[:8], "-l", "info"]
        args += ["--concurrency", "2"] if pool == "prefork" else []
        if quiet_startup:
            args += ["--without-mingle", "--without-gossip"]
        args += list(extra_args)
        self.proc = subprocess.Popen(args, env=env, cwd=APPS, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"), start_new_session=True)

    def wait_ready(self, timeout=30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text():
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError("worker not ready:\n" + self.log.read_text())

    def stop(self, timeout=20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def workers():
    started = []
    yield started
    for w in started:
        w.stop()


def _queue() -> str:
    return "trace-run-celery-" + uuid.uuid4().hex[:10]


def _produce(receiver, queue, *modes, broker="redis"):
    proc = run_traced(["python", os.path.join(APPS, "celery_producer.py"), *modes],
                      env=_env(receiver, "producer", broker, queue), check=True, cwd=APPS)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines())


def _settle(receiver, predicate, timeout=20.0, quiet=1.0):
    """Spans once predicate holds and nothing more arrived for `quiet` seconds."""
    spans = receiver.wait_for(predicate, timeout)
    while True:
        time.sleep(quiet)
        again = receiver.wait_for(None, 0)
        if len(again) == len(spans):
            return spans
        spans = again


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_idle_worker_makes_no_spans_then_one_task_makes_exactly_its_spans(receiver, workers, tmp_path, broker):
    queue = _queue()
    worker = Worker(tmp_path, _env(receiver, "worker", broker, queue), quiet_startup=False)
    workers.append(worker)
    worker.wait_ready()
    time.sleep(10)  # idle 10 s (issue 10): polling, heartbeats, gossip, mingle are not the program's work
    assert receiver.wait_for(None, 0) == []
    ids = _produce(receiver, queue, "add", broker=broker)
    spans = _settle(receiver, lambda s: any(x.kind == "CONSUMER" for x in s))
    by_service = {}
    for s in spans:
        by_service.setdefault(s.service, []).append(s)
    assert sorted(s.name for s in by_service["producer"]) == ["producer-main", "publish celery_app.add"]
    (process,) = by_service["worker"]
    (publish,) = [s for s in spans if s.kind == "PRODUCER"]
    assert set(by_service) == {"producer", "worker"}
    assert process.name == "process celery_app.add" and process.kind == "CONSUMER"
    assert process.parent_id == publish.span_id and process.trace_id == publish.trace_id
    assert process.attributes["messaging.message.id"] == publish.attributes["messaging.message.id"] == ids["add"]
    assert process.attributes["messaging.system"] == "celery"
    assert process.attributes["messaging.operation.type"] == "process"
    assert publish.attributes["messaging.operation.type"] == "send"
    assert process.attributes["messaging.destination.name"] == queue
    assert process.attributes["celery.retries"] == 0 and process.status == "UNSET"
    assert worker.stop() == 0


def test_chatter_variable_brings_broker_polling_back(receiver, workers, tmp_path):
    queue = _queue()
    worker = Worker(tmp_path, _env(receiver, "worker", "redis", queue, OTEL_TRACE_RUN_CHATTER="true"))
    workers.append(worker)
    worker.wait_ready()
    spans = receiver.wait_for(lambda s: len(s) >= 2, timeout=10)
    assert spans and all(s.kind == "CLIENT" and s.parent_id is None for s in spans)
    assert len(spans) >= 2


def test_retry_failure_canvas_and_nested_sends(receiver, workers, tmp_path):
    queue = _queue()
    worker = Worker(tmp_path, _env(receiver, "worker", "redis", queue))
    workers.append(worker)
    worker.wait_ready()
    ids = _produce(receiver, queue, "apply_async", "send_task", "fail", "flaky", "chain", "group", "parent")
    expected_process = 2 + 1 + 3 + 2 + 2 + 2  # apply_async, send_task, fail, flaky x3, chain, group, parent+add
    spans = _settle(receiver, lambda s: sum(x.kind == "CONSUMER" for x in s) >= expected_process)
    (root,) = [s for s in spans if s.name == "producer-main"]
    assert {s.trace_id for s in spans} == {root.trace_id}  # everything is one trace
    by_id = {s.span_id: s for s in spans}
    process = [s for s in spans if s.kind == "CONSUMER"]
    assert len(process) == expected_process
    for p in process:  # every task run hangs under a publish span
        assert by_id[p.parent_id].kind == "PRODUCER"
        assert by_id[p.parent_id].attributes["celery.task.name"] == p.attributes["celery.task.name"]

    (failed,) = [s for s in process if s.attributes["messaging.message.id"] == ids["fail"]]
    assert failed.status == "ERROR" and failed.attributes["error.type"] == "ValueError"
    assert failed.events[0][0] == "exception"
    assert failed.events[0][1]["exception.message"] == "task failed on purpose"

    runs = sorted((s for s in process if s.attributes["messaging.message.id"] == ids["flaky"]),
                  key=lambda s: s.attributes["celery.retries"])
    assert [r.attributes["celery.retries"] for r in runs] == [0, 1, 2]
    assert [r.attributes["celery.state"] for r in runs] == ["RETRY", "RETRY", "SUCCESS"]
    for earlier, later in zip(runs, runs[1:]):  # the retry is published from inside the failed run
        assert by_id[later.parent_id].parent_id == earlier.span_id

    # chain: the second task is published by the first one's run (the chain's id is the last task's).
    (second,) = [s for s in process if s.attributes["messaging.message.id"] == ids["chain"]]
    first = by_id[by_id[second.parent_id].parent_id]
    assert first.kind == "CONSUMER" and by_id[first.parent_id].parent_id == root.span_id

    # every send from the producer itself hangs directly under its root span
    sent_by_root = [s for s in spans if s.kind == "PRODUCER" and s.parent_id == root.span_id]
    assert len(sent_by_root) == 8  # apply_async, send_task, fail, flaky, chain, group x2, parent

    for mode in ("apply_async", "send_task", "parent"):
        (p,) = [s for s in process if s.attributes["messaging.message.id"] == ids[mode]]
        assert by_id[p.parent_id].parent_id == root.span_id
    (parent_run,) = [s for s in process if s.attributes["messaging.message.id"] == ids["parent"]]
    children = [s for s in spans if s.parent_id == parent_run.span_id]
    assert [c.name for c in children] == ["publish celery_app.add"]
    assert len([s for s in process if s.parent_id == children[0].span_id]) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flask_request_to_task_to_postgres_is_one_trace(receiver, workers, tmp_path):
    queue = _queue()
    worker = Worker(tmp_path, _env(receiver, "worker", "redis", queue))
    workers.append(worker)
    port = _free_port()
    web = subprocess.Popen([TRACE_RUN, "python", os.path.join(APPS, "celery_web.py"), str(port)],
                           env=_env(receiver, "web", "redis", queue), cwd=APPS, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/enqueue/41" % port, timeout=5) as response:
                    task_id = response.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline and web.poll() is None
                time.sleep(0.1)
        spans = _settle(receiver, lambda s: any(x.service == "worker" and x.kind == "CLIENT" for x in s))
    finally:
        web.terminate()
        web.wait(10)
    (server,) = [s for s in spans if s.kind == "SERVER"]
    (publish,) = [s for s in spans if s.kind == "PRODUCER"]
    (process,) = [s for s in spans if s.kind == "CONSUMER"]
    (query,) = [s for s in spans if s.service == "worker" and s.kind == "CLIENT"]
    assert server.service == "web" and server.name == "GET /enqueue/<int:n>" and server.parent_id is None
    assert publish.service == "web" and publish.parent_id == server.span_id
    assert process.parent_id == publish.span_id and process.attributes["messaging.message.id"] == task_id
    assert query.parent_id == process.span_id and query.attributes["db.system.name"] == "postgresql"
    assert {s.trace_id for s in spans} == {server.trace_id}
    # Nothing else: no broker or result-backend calls of Celery's own on either side.
    assert sorted(s.kind for s in spans) == ["CLIENT", "CONSUMER", "PRODUCER", "SERVER"], spans


def test_prefork_children_flush_every_span_at_shutdown(receiver, workers, tmp_path):
    queue = _queue()
    # Spans are exported only at shutdown: they can arrive only if each child flushes before os._exit.
    worker = Worker(tmp_path, _env(receiver, "worker", "redis", queue, OTEL_BSP_SCHEDULE_DELAY="600000"),
                    pool="prefork")
    workers.append(worker)
    worker.wait_ready()
    ids = _produce(receiver, queue, "add", "wait")
    assert ids["result"] == "15"
    assert [s for s in receiver.wait_for(None, 0) if s.service == "worker"] == []
    assert worker.stop() == 0
    spans = [s for s in receiver.wait_for(lambda s: sum(x.service == "worker" for x in s) >= 2, 10)
             if s.service == "worker"]
    assert sorted(s.attributes["messaging.message.id"] for s in spans) == sorted([ids["add"], ids["wait"]])
    assert all(s.name == "process celery_app.add" and s.parent_id for s in spans)


def test_prefork_children_recycled_after_each_task_flush_their_spans(receiver, workers, tmp_path):
    """--max-tasks-per-child 1: every child exits (os._exit) after one task; its span still arrives,
    before the worker itself stops, and exactly once."""
    queue = _queue()
    worker = Worker(tmp_path, _env(receiver, "worker", "redis", queue, OTEL_BSP_SCHEDULE_DELAY="600000"),
                    pool="prefork", extra_args=["--max-tasks-per-child", "1"])
    workers.append(worker)
    worker.wait_ready()
    ids = _produce(receiver, queue, "add", "wait")
    spans = [s for s in _settle(receiver, lambda ss: sum(x.service == "worker" for x in ss) >= 2, timeout=20)
             if s.service == "worker"]
    assert worker.proc.poll() is None  # the worker runs on; only its children were recycled
    assert sorted(s.attributes["messaging.message.id"] for s in spans) == sorted([ids["add"], ids["wait"]])
    assert len({s.resource["process.pid"] for s in spans}) == 2  # two children, one task each
    assert worker.stop() == 0
    time.sleep(0.5)
    assert len([s for s in receiver.spans if s.service == "worker"]) == 2  # nothing sent twice at shutdown
