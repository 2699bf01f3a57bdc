"""pika in-process: real RabbitMQ, spans in memory. Every consumption style and bad input."""

from __future__ import annotations

import uuid

import pika
import pytest
from opentelemetry import trace
from support import AMQP_URL
from trace_run.instrumentors.pika import PikaInstrumentor

BAD_HEADERS = [None, {}, {"traceparent": "00-zzzz-not-a-traceparent-01"}, {"traceparent": 42},
               {"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"}, {"traceparent": b"\xff\xfe"}]


@pytest.fixture
def pika_spans(instrumented):
    return instrumented(PikaInstrumentor)


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


def test_blocking_channel_keeps_the_programs_callback(pika_spans, channel):
    _, exporter = pika_spans
    ch, queue = channel
    _publish(ch, queue, b"own")

    def on_message(channel_, method, properties, body):
        assert channel_._consumer_infos[method.consumer_tag].on_message_callback is on_message
        channel_.stop_consuming()

    tag = ch.basic_consume(queue, on_message, auto_ack=True)
    assert ch._consumer_infos[tag].on_message_callback is on_message
    ch.start_consuming()
    (consumer,) = _by_kind(exporter, trace.SpanKind.CONSUMER)
    assert consumer.name == "process " + queue
    assert consumer.attributes["messaging.rabbitmq.message.delivery_tag"] == 1


def _run_select(on_channel, seconds=10):
    """Opens a SelectConnection and runs its ioloop until on_channel's work closes it (or `seconds` pass)."""
    connection = pika.SelectConnection(pika.URLParameters(AMQP_URL),
                                       on_open_callback=lambda c: c.channel(on_open_callback=on_channel))
    connection.ioloop.call_later(seconds, connection.ioloop.stop)
    connection.add_on_close_callback(lambda *a: connection.ioloop.stop())
    connection.ioloop.start()


def test_select_channel_keeps_the_programs_consume_and_get_callbacks(pika_spans):
    _, exporter = pika_spans
    queue = "trace-run-test-" + uuid.uuid4().hex[:10]
    stored = {}

    def on_channel(ch):
        def on_declared(_frame):
            ch.basic_publish("", queue, b"first")
            ch.basic_publish("", queue, b"second")
            ch.basic_get(queue, on_get, auto_ack=True)
            stored["get"] = ch._on_getok_callback

        def on_get(c, method, props, body):
            stored["get body"] = body
            tag = c.basic_consume(queue, on_message, auto_ack=True)
            stored["consume"] = c._consumers[tag]

        def on_message(c, method, props, body):
            stored["consume body"] = body
            stored["inside"] = c._consumers[method.consumer_tag]
            c.queue_delete(queue)
            c.connection.close()

        stored["callbacks"] = (on_get, on_message)
        ch.queue_declare(queue, auto_delete=True, callback=on_declared)

    _run_select(on_channel)
    on_get, on_message = stored["callbacks"]
    assert stored["get"] is on_get and stored["consume"] is on_message and stored["inside"] is on_message
    assert stored["get body"] == b"first" and stored["consume body"] == b"second"
    producers = _by_kind(exporter, trace.SpanKind.PRODUCER)
    consumers = _by_kind(exporter, trace.SpanKind.CONSUMER)
    assert len(producers) == 2 and len(consumers) == 2
    by_parent = {c.parent.span_id: c for c in consumers}
    got, processed = by_parent[producers[0].context.span_id], by_parent[producers[1].context.span_id]
    assert got.name == processed.name == "process " + queue
    assert got.attributes["messaging.operation.type"] == "receive"
    assert processed.attributes["messaging.operation.type"] == "process"
    assert processed.parent.span_id != got.context.span_id  # the message's context, not the current one
    assert got.end_time <= processed.start_time  # the delivery came after the get callback had returned


def test_select_delivery_to_cancelled_or_unknown_consumer_makes_no_span(pika_spans, channel):
    import pika.frame
    import pika.spec

    _, exporter = pika_spans
    ch = channel[0]._impl  # a real, open pika.channel.Channel; frames handed to it as the connection would
    calls = []
    ch._consumers["known"] = lambda *a: calls.append(a[3])
    ch._cancelled.add("gone")
    ch._consumers_with_noack.add("gone")
    header = pika.frame.Header(1, 1, pika.spec.BasicProperties(headers={"traceparent": 7}))
    for tag in ("gone", "unknown", "known"):
        deliver = pika.frame.Method(1, pika.spec.Basic.Deliver(consumer_tag=tag, delivery_tag=1, routing_key="q"))
        ch._on_deliver(deliver, header, b"body")
    assert calls == [b"body"]
    (consumer,) = exporter.get_finished_spans()
    assert consumer.name == "process" and consumer.parent is None  # no queue known, bad header ignored
    assert consumer.attributes["messaging.rabbitmq.destination.routing_key"] == "q"


def test_failing_select_callback_propagates_and_records(pika_spans, channel):
    import pika.frame
    import pika.spec

    _, exporter = pika_spans
    ch = channel[0]._impl  # a real, open pika.channel.Channel; frames handed to it as the connection would
    boom = KeyError("handler")

    def on_get(*_):
        raise boom

    ch._on_getok_callback = on_get
    get_ok = pika.frame.Method(1, pika.spec.Basic.GetOk(delivery_tag=3, routing_key="q"))
    with pytest.raises(KeyError) as info:
        ch._on_getok(get_ok, pika.frame.Header(1, 0, pika.spec.BasicProperties()), b"")
    assert info.value is boom and ch._on_getok_callback is None
    (consumer,) = exporter.get_finished_spans()
    assert consumer.status.status_code == trace.StatusCode.ERROR
    assert consumer.attributes["messaging.operation.type"] == "receive"
    assert not trace.get_current_span().get_span_context().is_valid


def test_only_live_consumers_queues_are_kept(pika_spans, channel):
    from trace_run.instrumentors.pika import _consumer_queues

    ch, queue = channel
    for i in range(3):
        ch.basic_cancel(ch.basic_consume(queue, lambda *a: None, consumer_tag="gone-%d" % i))
        for _ in ch.consume(queue, inactivity_timeout=0.01):
            break
        ch.cancel()
    ch.basic_consume(queue, lambda *a: None, consumer_tag="live")
    assert _consumer_queues[ch] == {"live": queue}
    assert ch._impl not in _consumer_queues  # the BlockingChannel's inner consumers are its own
