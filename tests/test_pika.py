"""pika in-process: real RabbitMQ, spans in memory. Every consumption style and bad input."""

from __future__ import annotations

import uuid

import pika
import pytest
from conftest import AMQP_URL
from opentelemetry import trace
from trace_run.instrumentors.pika import PikaInstrumentor

BAD_HEADERS = [None, {}, {"traceparent": "00-zzzz-not-a-traceparent-01"}, {"traceparent": 42},
               {"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"}, {"traceparent": b"\xff\xfe"}]


@pytest.fixture
def pika_spans(memory):
    provider, exporter = memory
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield provider, exporter
    instrumentor.uninstrument()


@pytest.fixture
def channel():
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = connection.channel()
    queue = "trace-run-test-" + uuid.uuid4().hex[:10]
    ch.queue_declare(queue=queue, auto_delete=False)
    yield ch, queue
    try:
        if ch.is_open:
            ch.queue_delete(queue)
        connection.close()
    except Exception:
        pass


def _by_kind(exporter, kind):
    return [s for s in exporter.get_finished_spans() if s.kind == kind]


def _publish(ch, queue, body=b"hello", properties=None):
    ch.basic_publish(exchange="", routing_key=queue, body=body, properties=properties)


def test_publish_injects_into_copy_and_keeps_callers_properties(pika_spans, channel):
    _, exporter = pika_spans
    ch, queue = channel
    headers = {"x-mine": "keep"}
    props = pika.BasicProperties(content_type="text/plain", headers=headers, message_id="m-1",
                                 correlation_id="c-1", delivery_mode=2)
    _publish(ch, queue, b"12345", props)
    assert headers == {"x-mine": "keep"} and props.headers is headers  # caller's objects untouched
    method, got_props, body = ch.basic_get(queue, auto_ack=True)
    ch.close()
    assert body == b"12345"
    assert got_props.content_type == "text/plain" and got_props.delivery_mode == 2
    assert got_props.message_id == "m-1" and got_props.correlation_id == "c-1"
    assert got_props.headers["x-mine"] == "keep"
    (producer,) = _by_kind(exporter, trace.SpanKind.PRODUCER)
    assert got_props.headers["traceparent"].split("-")[2] == format(producer.context.span_id, "016x")
    assert producer.name == "publish " + queue
    a = producer.attributes
    assert a["messaging.system"] == "rabbitmq" and a["messaging.operation.type"] == "send"
    assert a["messaging.operation.name"] == "publish"
    assert a["messaging.destination.name"] == queue
    assert a["messaging.rabbitmq.destination.routing_key"] == queue
    assert a["messaging.message.id"] == "m-1" and a["messaging.message.conversation_id"] == "c-1"
    assert a["messaging.message.body.size"] == 5
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == 5672
    assert "hello" not in repr(dict(a)) and "12345" not in repr(dict(a))


def test_publish_without_properties_creates_them_and_exchange_names_span(pika_spans, channel):
    _, exporter = pika_spans
    ch, queue = channel
    exchange = queue + "-x"
    ch.exchange_declare(exchange, exchange_type="direct", auto_delete=True)
    ch.queue_bind(queue, exchange, routing_key="rk")
    ch.basic_publish(exchange, "rk", b"x")
    _, props, _ = ch.basic_get(queue, auto_ack=True)
    ch.close()
    assert set(props.headers) >= {"traceparent"}
    producer = _by_kind(exporter, trace.SpanKind.PRODUCER)[0]
    assert producer.name == "publish " + exchange
    assert producer.attributes["messaging.destination.name"] == exchange
    assert producer.attributes["messaging.rabbitmq.destination.routing_key"] == "rk"


def test_basic_consume_callback_is_child_of_producer_and_covers_handling(pika_spans, channel):
    provider, exporter = pika_spans
    ch, queue = channel
    _publish(ch, queue, b"abc")
    seen = []

    def on_message(channel_, method, properties, body):
        with provider.get_tracer("t").start_as_current_span("work"):
            pass
        seen.append(trace.get_current_span().get_span_context().span_id)
        channel_.basic_ack(method.delivery_tag)
        channel_.stop_consuming()

    ch.basic_consume(queue, on_message)
    ch.start_consuming()
    producer = _by_kind(exporter, trace.SpanKind.PRODUCER)[0]
    (consumer,) = _by_kind(exporter, trace.SpanKind.CONSUMER)
    work = [s for s in exporter.get_finished_spans() if s.name == "work"][0]
    assert consumer.name == "process " + queue
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert work.parent.span_id == consumer.context.span_id
    assert seen == [consumer.context.span_id]
    a = consumer.attributes
    assert a["messaging.operation.type"] == "process" and a["messaging.destination.name"] == queue
    assert a["messaging.message.body.size"] == 3 and a["messaging.rabbitmq.destination.routing_key"] == queue
    assert a["server.port"] == 5672


def test_failing_callback_propagates_same_exception_and_records_it(pika_spans, channel):
    _, exporter = pika_spans
    ch, queue = channel
    _publish(ch, queue)
    boom = ValueError("bad message")

    def on_message(channel_, method, properties, body):
        raise boom

    ch.basic_consume(queue, on_message, auto_ack=True)
    with pytest.raises(ValueError) as info:
        ch.start_consuming()
    assert info.value is boom
    (consumer,) = _by_kind(exporter, trace.SpanKind.CONSUMER)
    assert consumer.status.status_code == trace.StatusCode.ERROR
    assert consumer.attributes["error.type"] == "ValueError"
    assert [e.name for e in consumer.events] == ["exception"]


def test_consume_generator_span_lasts_until_next_message(pika_spans, channel):
    provider, exporter = pika_spans
    ch, queue = channel
    for i in range(2):
        _publish(ch, queue, b"m%d" % i)
    producers = _by_kind(exporter, trace.SpanKind.PRODUCER)
    inside = []
    for method, _props, _body in ch.consume(queue, inactivity_timeout=2):
        if method is None:
            break
        with provider.get_tracer("t").start_as_current_span("handle"):
            pass
        inside.append(trace.get_current_span().get_span_context().span_id)
        ch.basic_ack(method.delivery_tag)  # the span goes on after the ack
        assert len(_by_kind(exporter, trace.SpanKind.CONSUMER)) == len(inside) - 1
        if len(inside) == 2:
            break
    ch.cancel()
    consumers = _by_kind(exporter, trace.SpanKind.CONSUMER)
    assert len(consumers) == 2
    assert [c.parent.span_id for c in consumers] == [p.context.span_id for p in producers]
    assert inside == [c.context.span_id for c in consumers]
    handles = [s for s in exporter.get_finished_spans() if s.name == "handle"]
    assert [h.parent.span_id for h in handles] == inside
    assert consumers[0].attributes["messaging.operation.type"] == "receive"
    assert consumers[0].name == "process " + queue
    assert not trace.get_current_span().get_span_context().is_valid


def test_basic_get_span_ends_at_ack(pika_spans, channel):
    _, exporter = pika_spans
    ch, queue = channel
    _publish(ch, queue)
    method, props, body = ch.basic_get(queue)
    current = trace.get_current_span().get_span_context()
    assert _by_kind(exporter, trace.SpanKind.CONSUMER) == []
    ch.basic_ack(method.delivery_tag)
    (consumer,) = _by_kind(exporter, trace.SpanKind.CONSUMER)
    assert current.span_id == consumer.context.span_id
    assert consumer.parent.span_id == _by_kind(exporter, trace.SpanKind.PRODUCER)[0].context.span_id
    assert not trace.get_current_span().get_span_context().is_valid
    assert ch.basic_get(queue) == (None, None, None)
    assert len(_by_kind(exporter, trace.SpanKind.CONSUMER)) == 1


@pytest.mark.parametrize("headers", BAD_HEADERS, ids=repr)
def test_bad_headers_are_processed_in_a_new_trace(headers, memory, channel):
    provider, exporter = memory
    ch, queue = channel
    # Published untraced, so the message carries exactly these headers.
    ch.basic_publish("", queue, b"x", pika.BasicProperties(headers=headers))
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        got = []
        ch.basic_consume(queue, lambda c, m, p, b: (got.append(b), c.stop_consuming()), auto_ack=True)
        ch.start_consuming()
    finally:
        instrumentor.uninstrument()
    assert got == [b"x"]
    (consumer,) = exporter.get_finished_spans()
    assert consumer.parent is None and consumer.kind == trace.SpanKind.CONSUMER


def test_non_dict_headers_left_alone(pika_spans):
    from trace_run.instrumentors.pika import _with_context

    props = pika.BasicProperties(headers=["odd"])
    assert _with_context(props, None) is None and props.headers == ["odd"]


def test_select_connection_publish_and_consume(pika_spans):
    _, exporter = pika_spans
    queue = "trace-run-test-" + uuid.uuid4().hex[:10]
    got = []

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_channel(ch):
        def on_declared(_frame):
            ch.basic_consume(queue, on_message, auto_ack=True)
            ch.basic_publish("", queue, b"select", pika.BasicProperties(headers={"a": "b"}))

        def on_message(c, method, props, body):
            got.append((body, props.headers.get("a")))
            c.queue_delete(queue)
            c.connection.close()

        ch.queue_declare(queue, auto_delete=True, callback=on_declared)

    connection = pika.SelectConnection(pika.URLParameters(AMQP_URL), on_open_callback=on_open)
    connection.ioloop.call_later(10, connection.ioloop.stop)
    connection.add_on_close_callback(lambda *a: connection.ioloop.stop())
    connection.ioloop.start()
    assert got == [(b"select", "b")]
    (producer,) = _by_kind(exporter, trace.SpanKind.PRODUCER)
    (consumer,) = _by_kind(exporter, trace.SpanKind.CONSUMER)
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.name == "process " + queue and producer.name == "publish " + queue


def test_suppressed_instrumentation_makes_no_spans(pika_spans, channel):
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    _, exporter = pika_spans
    ch, queue = channel
    with suppress_instrumentation():
        _publish(ch, queue)
        ch.basic_get(queue, auto_ack=True)
    assert exporter.get_finished_spans() == ()


def test_uninstrument_restores_originals():
    from pika.adapters.blocking_connection import BlockingChannel

    original = BlockingChannel.__dict__["basic_publish"]
    instrumentor = PikaInstrumentor()
    instrumentor.instrument()
    assert BlockingChannel.__dict__["basic_publish"] is not original
    instrumentor.uninstrument()
    assert BlockingChannel.__dict__["basic_publish"] is original
