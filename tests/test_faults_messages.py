"""Malformed trace context inside messages (issue 9): hypothesis-generated headers published to a
real RabbitMQ queue, consumed by a real consumer under trace-run. Every message is processed, the
consumer never fails, and each message gets exactly one CONSUMER span."""

from __future__ import annotations

import os
import subprocess
import uuid

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import AMQP_URL, HERE, TRACE_RUN, clean_env

APP = os.path.join(HERE, "apps", "fault_consumer.py")
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)
VALUE = st.one_of(
    TEXT,
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.binary(max_size=40),
    st.lists(TEXT, max_size=3),
    st.dictionaries(TEXT, TEXT, max_size=3),
    st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01"),  # valid, to mix with garbage
    st.just("00-" + "0" * 32 + "-" + "0" * 16 + "-01"),
    st.just("x" * 5000),
)
HEADERS = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["traceparent", "tracestate", "baggage", "b3", "X-B3-TraceId",
                                     "TraceParent", "other"]), VALUE, max_size=5),
)


@pytest.fixture(scope="module")
def consumer():
    from support.otlp_receiver import Receiver

    receiver = Receiver().start()
    queue = "trace-run-fuzz-" + uuid.uuid4().hex[:8]
    env = clean_env(**receiver.env(), OTEL_SERVICE_NAME="fuzz-consumer")
    proc = subprocess.Popen([TRACE_RUN, "python", APP, AMQP_URL, queue], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "consuming\n"
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    sent = []
    yield receiver, proc, channel, queue, sent
    channel.basic_publish(exchange="", routing_key=queue, body=b"stop")
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        connection.close()
        receiver.stop()
    # After the whole fuzz run (each example checked its own `ok` line): nothing failed, one span each.
    assert sent and out == ""
    assert proc.returncode == 0 and "Traceback" not in err and "error" not in err.lower(), err
    spans = receiver.wait_for(lambda ss: len(ss) >= len(sent), timeout=15)
    consumers = [s for s in spans if s.kind == "CONSUMER" and s.attributes.get("messaging.message.id") in sent]
    assert sorted(s.attributes["messaging.message.id"] for s in consumers) == sorted(sent)
    for s in consumers:
        assert s.name == "process " + queue and s.attributes["messaging.system"] == "rabbitmq"
        if s.parent_id is not None:  # only a valid traceparent makes a parent
            assert s.parent_id == "b" * 16 and s.trace_id == "a" * 32


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=HEADERS)
def test_fuzzed_message_headers_never_fail_the_consumer(consumer, headers):
    _receiver, proc, channel, queue, sent = consumer
    message_id = uuid.uuid4().hex
    properties = pika.BasicProperties(message_id=message_id, headers=headers)
    try:
        channel.basic_publish(exchange="", routing_key=queue, body=b"payload", properties=properties)
    except (ValueError, TypeError, UnicodeError):
        return  # pika itself cannot encode these headers: nothing reaches the consumer
    sent.append(message_id)
    line = proc.stdout.readline()
    assert line == "ok %s\n" % message_id, (line, proc.stderr.read() if proc.poll() is not None else "")
