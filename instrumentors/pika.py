"""pika (RabbitMQ): PRODUCER spans for publish, CONSUMER spans for each message handled.

The trace context travels in the message's `properties.headers` (a copy: the
caller's properties and headers dict are never changed). A consumer span
covers the handling of one message:
- `basic_consume` callbacks (BlockingConnection and SelectConnection) and the
  callback of a SelectConnection `basic_get`: the callback's run. The span is
  made where pika calls the callback (Channel._on_deliver / _on_getok,
  BlockingChannel._dispatch_events): pika keeps the program's own callback;
- the `consume()` generator: from the yield until the next message is asked
  for, the generator closes, or the channel is cancelled or closed;
- BlockingChannel `basic_get`: from its return until the message is acked/nacked/rejected,
  the next `basic_get`, or the channel closes (at the latest, at exit).
Message bodies are never recorded, only their size.
"""

from __future__ import annotations

import atexit
import copy
import weakref
from contextvars import ContextVar
from typing import Any

import pika.spec
from opentelemetry import context, trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as M
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.trace import SpanKind

from . import errors
from . import messaging_common as mc
from .base import TraceRunInstrumentor, is_instrumentation_enabled
from .spans import call_in_span

_SYSTEM = "rabbitmq"
_SEND = M.MessagingOperationTypeValues.SEND.value
_RECEIVE = M.MessagingOperationTypeValues.RECEIVE.value
_PROCESS = M.MessagingOperationTypeValues.PROCESS.value

# True while a BlockingChannel.basic_publish runs: its inner Channel.basic_publish makes no second span.
_in_blocking_publish: ContextVar = ContextVar("trace_run_pika_blocking_publish", default=False)
_BLOCKING_MODULE = "pika.adapters.blocking_connection"
_open_pulls: weakref.WeakSet = weakref.WeakSet()  # pull spans not ended yet (ended at exit)
_NO_KWARGS: dict = {}  # a callback's keyword arguments (never changed: ** copies it)
# The queue of each consumer (channel -> {consumer tag: queue}) and of each channel's pending basic_get:
# a delivery does not name its queue, its span does.
_consumer_queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_get_queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _bind(args: tuple, kwargs: dict, names: tuple) -> Any:
    """All arguments by name (so one can be replaced), or None if they do not fit `names`."""
    if len(args) > len(names):
        return None
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


_PUBLISH_ARGS = ("exchange", "routing_key", "body", "properties", "mandatory")
def _server(impl_channel) -> tuple:
    try:
        params = impl_channel.connection.params
        return params.host, params.port
    except Exception:
        return None, None


def _body_size(body) -> Any:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    if isinstance(body, str):
        return len(body.encode("utf-8"))
    return None


def _common(impl_channel, properties, body) -> dict:
    attrs = {M.MESSAGING_SYSTEM: _SYSTEM}
    host, port = _server(impl_channel)
    if host:
        attrs[server_attributes.SERVER_ADDRESS] = host
    if isinstance(port, int):
        attrs[server_attributes.SERVER_PORT] = port
    if properties is not None:
        message_id = getattr(properties, "message_id", None)
        if isinstance(message_id, str) and message_id:
            attrs[M.MESSAGING_MESSAGE_ID] = message_id
        correlation_id = getattr(properties, "correlation_id", None)
        if isinstance(correlation_id, str) and correlation_id:
            attrs[M.MESSAGING_MESSAGE_CONVERSATION_ID] = correlation_id
    size = _body_size(body)
    if size is not None:
        attrs[M.MESSAGING_MESSAGE_BODY_SIZE] = size
    return attrs


def _with_context(properties, ctx) -> Any:
    """A copy of `properties` whose headers (a new dict) also hold the trace context; or None."""
    if properties is None:
        headers: dict = {}
        mc.inject(headers, ctx)
        return pika.spec.BasicProperties(headers=headers) if headers else None
    old = getattr(properties, "headers", None)
    if old is not None and not isinstance(old, dict):
        return None  # the caller's own odd headers: leave them exactly as they are
    headers = dict(old) if old else {}
    mc.inject(headers, ctx)
    new = copy.copy(properties)
    new.headers = headers
    return new


def _is_blocking_internal(callback) -> bool:
    """BlockingChannel hands its own bound methods to the inner Channel: those are not user callbacks."""
    owner = getattr(callback, "__self__", None)
    return owner is not None and type(owner).__module__ == _BLOCKING_MODULE


class _Pull:
    """One open pull span (consume generator or basic_get), current until ended."""

    __slots__ = ("span", "token", "ctx", "tag", "__weakref__")

    def __init__(self, span, ctx, tag):
        self.span = span
        self.ctx = ctx
        self.tag = tag  # basic_get only: its span ends when this delivery is settled
        self.token = context.attach(ctx)

    def end(self) -> None:
        span, self.span = self.span, None
        if span is None:
            return
        # Detach only if nobody has changed the current context since; else leave theirs alone.
        if context.get_current() is self.ctx:
            context.detach(self.token)
        span.end()
        _open_pulls.discard(self)


@atexit.register
def _end_open_pulls() -> None:
    for pull in list(_open_pulls):
        try:
            pull.end()
        except Exception:
            pass


class PikaInstrumentor(TraceRunInstrumentor):
    library = "pika"

    def _patch(self, **kwargs: Any) -> None:
        import pika.channel
        from pika.adapters import blocking_connection as bc

        blocking = bc.BlockingChannel
        self.wrap(blocking, "basic_publish", self._blocking_publish)
        self.wrap(pika.channel.Channel, "basic_publish", self._channel_publish)
        self.wrap(blocking, "basic_consume", self._consume)
        self.wrap(pika.channel.Channel, "basic_consume", self._consume)
        self.wrap(blocking, "consume", self._consume_generator)
        self.wrap(blocking, "basic_get", self._blocking_get)
        self.wrap(pika.channel.Channel, "basic_get", self._channel_get)
        # Consumer spans are made where pika calls the program's callbacks, which stay where pika keeps them.
        self.wrap(pika.channel.Channel, "_on_deliver", self._channel_deliver)
        self.wrap(pika.channel.Channel, "_on_getok", self._channel_getok)
        self.wrap(blocking, "_dispatch_events", self._blocking_dispatch)
        for name in ("basic_ack", "basic_nack", "basic_reject"):
            self.wrap(blocking, name, self._settle)
        for name in ("cancel", "close"):
            self.wrap(blocking, name, self._end_pull_before)

    # -- publish -------------------------------------------------------------------
    def _start_publish(self, impl_channel, bound: dict):
        exchange = bound.get("exchange") or ""
        routing_key = bound.get("routing_key") or ""
        destination = exchange or routing_key
        attrs = _common(impl_channel, bound.get("properties"), bound.get("body"))
        attrs[M.MESSAGING_OPERATION_TYPE] = _SEND
        attrs[M.MESSAGING_OPERATION_NAME] = "publish"
        if destination:
            attrs[M.MESSAGING_DESTINATION_NAME] = destination
        if routing_key:
            attrs[M.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY] = routing_key
        span = self.tracer.start_span(
            "publish " + destination if destination else "publish", kind=SpanKind.PRODUCER, attributes=attrs
        )
        new_properties = _with_context(bound.get("properties"), trace.set_span_in_context(span))
        if new_properties is not None:
            bound["properties"] = new_properties
        return span

    def _publish(self, wrapped, impl_channel, args, kwargs, blocking: bool):
        span = None
        with self.guard:
            bound = _bind(args, kwargs, _PUBLISH_ARGS)
            if bound is not None:
                span = self._start_publish(impl_channel, bound)
                args, kwargs = (), bound
        flag = _in_blocking_publish.set(True) if blocking else None
        token = context.attach(trace.set_span_in_context(span)) if span is not None else None
        try:
            return call_in_span(self.guard, span, token, wrapped, args, kwargs, errors.end_failed)
        finally:
            if flag is not None:
                _in_blocking_publish.reset(flag)

    def _blocking_publish(self, wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        return self._publish(wrapped, instance._impl, args, kwargs, blocking=True)

    def _channel_publish(self, wrapped, instance, args, kwargs):
        if _in_blocking_publish.get() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        return self._publish(wrapped, instance, args, kwargs, blocking=False)

    # -- consumer spans --------------------------------------------------------------
    def _start_consumer(self, impl_channel, queue, method, properties, body, operation_type):
        attrs = _common(impl_channel, properties, body)
        attrs[M.MESSAGING_OPERATION_TYPE] = operation_type
        attrs[M.MESSAGING_OPERATION_NAME] = "process"
        if queue:
            attrs[M.MESSAGING_DESTINATION_NAME] = queue
        routing_key = getattr(method, "routing_key", None)
        if isinstance(routing_key, str) and routing_key:
            attrs[M.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY] = routing_key
        tag = getattr(method, "delivery_tag", None)
        if isinstance(tag, int):
            attrs[M.MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG] = tag
        parent = mc.extract(getattr(properties, "headers", None))
        span = self.tracer.start_span(
            "process " + queue if queue else "process", context=parent, kind=SpanKind.CONSUMER, attributes=attrs
        )
        return span, trace.set_span_in_context(span, parent)

    def _consumer_span(self, impl_channel, queue, method, properties, body, operation_type):
        """A started CONSUMER span and its token (context attached), or (None, None) if tracing failed."""
        with self.guard:
            span, ctx = self._start_consumer(impl_channel, queue, method, properties, body, operation_type)
            return span, context.attach(ctx)
        return None, None

    def _consume(self, wrapped, instance, args, kwargs):
        """basic_consume as called; its queue is kept by consumer tag, for the span of each delivery.

        Only the live consumers' queues are kept. A BlockingChannel's own inner basic_consume is skipped:
        the BlockingChannel's call keeps it.
        """
        tag = wrapped(*args, **kwargs)
        with self.guard:
            if not _is_blocking_internal(_arg(args, kwargs, 1, "on_message_callback")):
                live = getattr(instance, "_consumer_infos", None)
                live = instance._consumers if live is None else live
                queues = {t: q for t, q in _consumer_queues.get(instance, {}).items() if t in live}
                queues[tag] = _arg(args, kwargs, 0, "queue") or ""
                _consumer_queues[instance] = queues
        return tag

    def _channel_get(self, wrapped, instance, args, kwargs):
        result = wrapped(*args, **kwargs)
        with self.guard:
            if not _is_blocking_internal(_arg(args, kwargs, 1, "callback")):
                _get_queues[instance] = _arg(args, kwargs, 0, "queue") or ""
        return result

    def _channel_deliver(self, wrapped, instance, args, kwargs):
        """Channel._on_deliver(method_frame, header_frame, body): the consumer's callback runs in a CONSUMER span.

        pika keeps the program's own callback in `_consumers`; the span is made where pika calls it.
        """
        span = token = None
        if is_instrumentation_enabled():
            with self.guard:
                tag = _arg(args, kwargs, 0, "method_frame").method.consumer_tag
                callback = None if tag in instance._cancelled else instance._consumers.get(tag)
                if callback is not None and not _is_blocking_internal(callback):
                    queue = _consumer_queues.get(instance, {}).get(tag, "")
                    span, token = self._frames_span(instance, queue, args, kwargs, _PROCESS)
        if span is None:
            return wrapped(*args, **kwargs)
        return call_in_span(self.guard, span, token, wrapped, args, kwargs, errors.end_failed)

    def _channel_getok(self, wrapped, instance, args, kwargs):
        """Channel._on_getok(method_frame, header_frame, body): basic_get's callback runs in a CONSUMER span."""
        span = token = None
        if is_instrumentation_enabled():
            with self.guard:
                callback = instance._on_getok_callback
                if callback is not None and not _is_blocking_internal(callback):
                    span, token = self._frames_span(instance, _get_queues.pop(instance, ""), args, kwargs, _RECEIVE)
        if span is None:
            return wrapped(*args, **kwargs)
        return call_in_span(self.guard, span, token, wrapped, args, kwargs, errors.end_failed)

    def _frames_span(self, impl_channel, queue, args, kwargs, operation_type):
        method = _arg(args, kwargs, 0, "method_frame").method
        properties = _arg(args, kwargs, 1, "header_frame").properties
        body = _arg(args, kwargs, 2, "body")
        return self._consumer_span(impl_channel, queue, method, properties, body, operation_type)

    def _blocking_dispatch(self, wrapped, instance, args, kwargs):
        """BlockingChannel._dispatch_events: pika's loop (the same in pika 1.0-1.4), each consumer callback
        in a CONSUMER span; the callback stays the program's own object in `_consumer_infos`."""
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        from pika.adapters import blocking_connection as bc

        while instance._pending_events:
            evt = instance._pending_events.popleft()
            kind = type(evt)
            if kind is bc._ConsumerDeliveryEvt:
                self._blocking_delivery(instance, evt)
            elif kind is bc._ConsumerCancellationEvt:
                del instance._consumer_infos[evt.method_frame.method.consumer_tag]
                instance._impl.callbacks.process(instance.channel_number, instance._CONSUMER_CANCELLED_CB_KEY,
                                                 instance, evt.method_frame)
            else:
                evt.dispatch()

    def _blocking_delivery(self, channel, evt) -> None:
        callback = channel._consumer_infos[evt.method.consumer_tag].on_message_callback
        message = (channel, evt.method, evt.properties, evt.body)
        queue = ""
        with self.guard:
            queue = _consumer_queues.get(channel, {}).get(evt.method.consumer_tag, "")
        span, token = self._consumer_span(channel._impl, queue, evt.method, evt.properties, evt.body, _PROCESS)
        if span is None:
            callback(*message)
        else:
            call_in_span(self.guard, span, token, callback, message, _NO_KWARGS, errors.end_failed)

    # -- pull spans (consume() generator, basic_get) -----------------------------------
    def _open_pull(self, channel, queue, method, properties, body, settle_ends: bool):
        with self.guard:
            span, ctx = self._start_consumer(channel._impl, queue, method, properties, body, _RECEIVE)
            pull = _Pull(span, ctx, getattr(method, "delivery_tag", None) if settle_ends else None)
            _open_pulls.add(pull)
            channel._trace_run_pull = pull
            return pull
        return None

    def _end_pull(self, channel) -> None:
        pull = getattr(channel, "_trace_run_pull", None)
        if pull is not None:
            channel._trace_run_pull = None
            pull.end()

    def _consume_generator(self, wrapped, instance, args, kwargs):
        generator = wrapped(*args, **kwargs)
        with self.guard:
            queue = _arg(args, kwargs, 0, "queue") or ""
            return self._traced_generator(generator, instance, queue)
        return generator

    def _traced_generator(self, generator, channel, queue):
        pull = None
        try:
            while True:
                item = next(generator)
                method = item[0] if isinstance(item, tuple) and len(item) == 3 else None
                if method is not None and is_instrumentation_enabled():
                    pull = self._open_pull(channel, queue, method, item[1], item[2], settle_ends=False)
                try:
                    yield item
                finally:
                    if pull is not None:
                        with self.guard:
                            if getattr(channel, "_trace_run_pull", None) is pull:
                                channel._trace_run_pull = None
                            pull.end()
                        pull = None
        except StopIteration:
            return
        finally:
            generator.close()

    def _blocking_get(self, wrapped, instance, args, kwargs):
        with self.guard:
            self._end_pull(instance)
        result = wrapped(*args, **kwargs)
        if result and result[0] is not None and is_instrumentation_enabled():
            with self.guard:
                method, properties, body = result
                queue = _arg(args, kwargs, 0, "queue") or ""
                self._open_pull(instance, queue, method, properties, body, settle_ends=True)
        return result

    def _settle(self, wrapped, instance, args, kwargs):
        with self.guard:
            pull = getattr(instance, "_trace_run_pull", None)
            if pull is not None and pull.tag is not None:
                tag = _arg(args, kwargs, 0, "delivery_tag", 0)
                multiple = _arg(args, kwargs, 1, "multiple", False) if wrapped.__name__ != "basic_reject" else False
                if tag == pull.tag or (multiple and (tag == 0 or pull.tag <= tag)):
                    self._end_pull(instance)
        return wrapped(*args, **kwargs)

    def _end_pull_before(self, wrapped, instance, args, kwargs):
        with self.guard:
            self._end_pull(instance)
        return wrapped(*args, **kwargs)
