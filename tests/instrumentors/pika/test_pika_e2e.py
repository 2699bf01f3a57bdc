"""pika end to end: a producer program and a consumer program, each under trace-run: one trace."""

from __future__ import annotations

import os
import uuid

import pytest
from support import AMQP_URL, HERE, clean_env, python, run_traced

PRODUCER = os.path.join(HERE, "apps", "queue_producer.py")
CONSUMER = os.path.join(HERE, "apps", "queue_consumer.py")


def _queue() -> str:
    return "trace-run-e2e-" + uuid.uuid4().hex[:10]


def _delete(*queues) -> None:
    """Failing consumers leave their queue behind: remove it."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    for queue in queues:
        channel.queue_delete(queue)
    connection.close()


def _env(receiver, service):
    return clean_env(**receiver.env(OTEL_SERVICE_NAME=service))


@pytest.mark.parametrize("style", ["callback", "generator", "get"])
def test_producer_and_consumer_programs_make_one_trace(receiver, style):
    queue = _queue()
    run_traced(["python", PRODUCER, AMQP_URL, queue, "2"], env=_env(receiver, "producer"), check=True)
    proc = run_traced(["python", CONSUMER, AMQP_URL, queue, style, "2"], env=_env(receiver, "consumer"),
                      check=True)
    assert proc.stdout.strip() == "handled 2"
    spans = receiver.wait_for(lambda s: len(s) >= 4)
    producers = sorted((s for s in spans if s.kind == "PRODUCER"), key=lambda s: s.start)
    consumers = sorted((s for s in spans if s.kind == "CONSUMER"), key=lambda s: s.start)
    assert len(spans) == 4 and len(producers) == 2 and len(consumers) == 2, spans
    for i, (p, c) in enumerate(zip(producers, consumers)):
        assert p.service == "producer" and c.service == "consumer"
        assert p.name == "publish " + queue and c.name == "process " + queue
        assert c.trace_id == p.trace_id and c.parent_id == p.span_id and p.parent_id is None
        assert p.attributes["messaging.message.id"] == c.attributes["messaging.message.id"] == "msg-%d" % i
        assert c.attributes["messaging.system"] == "rabbitmq"
        assert c.attributes["messaging.destination.name"] == queue
        assert c.attributes["messaging.operation.type"] == ("process" if style == "callback" else "receive")
        assert c.attributes["messaging.message.body.size"] == len("body-%d" % i)
        assert c.attributes["server.address"] == "127.0.0.1"
        assert c.status == "UNSET"
    assert len(receiver.traces()) == 2


@pytest.mark.parametrize("headers", ["none", "nested", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                                     "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"])
def test_bad_messages_are_handled_in_new_traces(receiver, headers):
    queue = _queue()
    run_traced(["python", PRODUCER, AMQP_URL, queue, "1", headers], env=clean_env(), trace_run=False,
               check=True)
    proc = run_traced(["python", CONSUMER, AMQP_URL, queue, "callback", "1"], env=_env(receiver, "consumer"),
                      check=True)
    assert proc.stdout.strip() == "handled 1"
    assert proc.stderr == ""
    spans = receiver.wait_for(lambda s: len(s) >= 1)
    (consumer,) = spans
    assert consumer.kind == "CONSUMER" and consumer.parent_id is None and consumer.status == "UNSET"


@pytest.mark.parametrize("style", ["callback", "generator"])
def test_failing_handler_fails_as_without_trace_run_and_span_is_error(receiver, style):
    queue, bare_queue = _queue(), _queue()
    run_traced(["python", PRODUCER, AMQP_URL, bare_queue, "1"], env=clean_env(), trace_run=False, check=True)
    bare = run_traced([python(), CONSUMER, AMQP_URL, bare_queue, style, "1", "fail"], env=clean_env(),
                      trace_run=False)
    run_traced(["python", PRODUCER, AMQP_URL, queue, "1"], env=_env(receiver, "producer"), check=True)
    traced = run_traced(["python", CONSUMER, AMQP_URL, queue, style, "1", "fail"],
                        env=_env(receiver, "consumer"))
    _delete(queue, bare_queue)
    assert traced.returncode == bare.returncode == 1
    assert traced.stderr.splitlines()[-1] == bare.stderr.splitlines()[-1] == "RuntimeError: handler failed"
    spans = receiver.wait_for(lambda s: any(x.kind == "CONSUMER" for x in s))
    (consumer,) = [s for s in spans if s.kind == "CONSUMER"]
    (producer,) = [s for s in spans if s.kind == "PRODUCER"]
    assert consumer.parent_id == producer.span_id
    if style == "callback":  # the callback's exception passes through the span
        assert consumer.status == "ERROR"
        assert [e[0] for e in consumer.events] == ["exception"]
        assert consumer.events[0][1]["exception.type"] == "RuntimeError"


OWN_CALLBACKS = """
import sys
import pika

url, queue = sys.argv[1], sys.argv[2]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
blocking_queue = queue + "-blocking"  # its consumer takes every message there is: one
channel.queue_declare(queue=queue)
channel.queue_declare(queue=blocking_queue)
for i, to in enumerate((blocking_queue, queue, queue)):
    channel.basic_publish("", to, b"body-%d" % i, pika.BasicProperties(message_id="msg-%d" % i))
checks = []


def on_blocking(ch, method, properties, body):
    checks.append(("blocking", body, ch._consumer_infos[method.consumer_tag].on_message_callback is on_blocking))
    ch.stop_consuming()


tag = channel.basic_consume(blocking_queue, on_blocking, auto_ack=True, consumer_tag="blocking-1")
checks.append(("blocking stored", tag, channel._consumer_infos[tag].on_message_callback is on_blocking))
channel.start_consuming()
channel.basic_cancel(tag)
channel.queue_delete(blocking_queue)
connection.close()


def on_open(conn):
    conn.channel(on_open_callback=on_channel)


def on_channel(ch):
    def on_get(c, method, properties, body):
        checks.append(("get", body, True))
        tag = c.basic_consume(queue, on_message, auto_ack=True)
        checks.append(("select stored", "", c._consumers[tag] is on_message))

    def on_message(c, method, properties, body):
        checks.append(("select", body, c._consumers[method.consumer_tag] is on_message))
        c.queue_delete(queue)
        c.connection.close()

    ch.basic_get(queue, on_get, auto_ack=True)
    checks.append(("get stored", "", ch._on_getok_callback is on_get))


select = pika.SelectConnection(pika.URLParameters(url), on_open_callback=on_open)
select.ioloop.call_later(20, select.ioloop.stop)
select.add_on_close_callback(lambda *a: select.ioloop.stop())
select.ioloop.start()
for check in checks:
    print(*check)
"""


def test_program_callbacks_stay_its_own_objects(receiver, tmp_path):
    """pika keeps the program's callbacks (`is`), traced as bare; the spans are made where pika calls them."""
    from support import write_script

    app = write_script(tmp_path, OWN_CALLBACKS)
    bare_queue, queue = _queue(), _queue()
    bare = run_traced([python(), app, AMQP_URL, bare_queue], env=clean_env(), trace_run=False, check=True)
    traced = run_traced(["python", app, AMQP_URL, queue], env=_env(receiver, "own"), check=True)
    expected = ["blocking stored blocking-1 True", "blocking b'body-0' True", "get stored  True",
                "get b'body-1' True", "select stored  True", "select b'body-2' True"]
    assert bare.stdout.splitlines() == traced.stdout.splitlines() == expected
    assert traced.stderr == ""
    spans = receiver.wait_for(lambda s: len(s) >= 6)
    producers = {s.attributes["messaging.message.id"]: s for s in spans if s.kind == "PRODUCER"}
    consumers = {s.attributes["messaging.message.id"]: s for s in spans if s.kind == "CONSUMER"}
    assert len(spans) == 6 and sorted(producers) == sorted(consumers) == ["msg-0", "msg-1", "msg-2"]
    for message_id, operation in (("msg-0", "process"), ("msg-1", "receive"), ("msg-2", "process")):
        p, c = producers[message_id], consumers[message_id]
        assert c.trace_id == p.trace_id and c.parent_id == p.span_id and p.parent_id is None
        destination = queue + "-blocking" if message_id == "msg-0" else queue
        assert p.name == "publish " + destination and c.name == "process " + destination
        assert c.attributes["messaging.destination.name"] == destination and c.status == "UNSET"
        assert c.attributes["messaging.operation.type"] == operation
        assert c.attributes["server.port"] == 5672
    assert len(receiver.traces()) == 3
