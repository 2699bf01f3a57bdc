"""Celery: a PRODUCER span per task sent, a CONSUMER span per task run, one trace across both.

- Sending (`delay`, `apply_async`, `send_task`, canvas, retries) all goes through
  `Celery.send_task`: it runs in a `publish <task>` span, and the
  `before_task_publish` signal injects that span's context into the message headers.
- A worker runs each task in a `process <task>` span (signals `task_prerun` /
  `task_postrun` / `task_failure`) parented to the context found in the
  request, i.e. in those headers.
- No noise: the worker's own loop (broker polling, heartbeats, gossip,
  mingle, remote control) and result-backend housekeeping run with
  instrumentation suppressed, and so does the broker traffic under a publish
  span; inside a task everything is traced again. OTEL_TRACE_RUN_CHATTER=true
  turns that filter off.
- Prefork children leave through os._exit: each one flushes its spans on
  `worker_process_shutdown`.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as M
from opentelemetry.trace import SpanKind
from trace_run.core import lifecycle

from . import errors, spans
from . import messaging_common as mc
from .base import TraceRunInstrumentor, is_instrumentation_enabled
from .chatter import chatter_enabled, is_our_quiet, quiet_context, suppress_chatter, unquiet

_SYSTEM = "celery"
_SEND = M.MessagingOperationTypeValues.SEND.value
_PROCESS = M.MessagingOperationTypeValues.PROCESS.value
TASK_NAME = "celery.task.name"
RETRIES = "celery.retries"
STATE = "celery.state"

# The publish span of the Celery.send_task call in progress (read by the before_task_publish handler).
_PUBLISH_KEY = context.create_key("trace_run_celery_publish")
# Backend methods that are bookkeeping, not the task's work.
_HOUSEKEEPING = ("mark_as_started", "mark_as_done", "mark_as_failure", "mark_as_retry", "mark_as_revoked",
                 "store_result", "process_cleanup", "cleanup")
_SIGNALS = (("before_task_publish", "_before_publish"), ("task_prerun", "_prerun"),
            ("task_postrun", "_postrun"), ("task_failure", "_failure"),
            ("worker_process_init", "_child_init"), ("worker_process_shutdown", "_child_shutdown"))


class CeleryInstrumentor(TraceRunInstrumentor):
    library = "celery"

    def _patch(self, **kwargs: Any) -> None:
        import celery.app.base
        from celery import signals

        self._running: dict = {}  # id(task request) -> (span, token)
        self._child_token = None
        self.wrap(celery.app.base.Celery, "send_task",
                  spans.wrapper(self.guard, self._start_send, errors.end_failed, enabled=is_instrumentation_enabled))
        for signal_name, method in _SIGNALS:
            getattr(signals, signal_name).connect(getattr(self, method), weak=False)

    def _unpatch(self, **kwargs: Any) -> None:
        from celery import signals

        for signal_name, method in _SIGNALS:
            getattr(signals, signal_name).disconnect(getattr(self, method))

    # registry `submodules`: called when these parts of Celery are imported
    def patch_worker(self, module) -> None:
        self.wrap(module.WorkController, "start", self._quiet)

    def patch_backend(self, module) -> None:
        for name in _HOUSEKEEPING:
            if hasattr(module.Backend, name):
                self.wrap(module.Backend, name, self._quiet)

    @staticmethod
    def _quiet(wrapped, instance, args, kwargs):
        """Library chatter: run without spans (unless OTEL_TRACE_RUN_CHATTER)."""
        with suppress_chatter():
            return wrapped(*args, **kwargs)

    # -- producer --------------------------------------------------------------------
    def _start_send(self, app: Any, args: tuple, kwargs: dict) -> tuple:
        """`start` for spans.wrapper: the PRODUCER span of `send_task`."""
        name = args[0] if args else kwargs.get("name")
        name = name if isinstance(name, str) else ""
        attrs = {
            M.MESSAGING_SYSTEM: _SYSTEM,
            M.MESSAGING_OPERATION_TYPE: _SEND,
            M.MESSAGING_OPERATION_NAME: "publish",
            TASK_NAME: name,
        }
        span = self.tracer.start_span("publish " + name, kind=SpanKind.PRODUCER, attributes=attrs)
        ctx = context.set_value(_PUBLISH_KEY, span, trace.set_span_in_context(span))
        if not chatter_enabled():
            ctx = quiet_context(ctx)  # the broker and backend calls under it are not the program's
        return span, context.attach(ctx), args, kwargs

    def _before_publish(self, sender=None, body=None, exchange=None, routing_key=None, headers=None, **_kw):
        span = context.get_value(_PUBLISH_KEY)
        if span is None or not span.is_recording():
            return
        with self.guard:
            if isinstance(headers, dict):
                mc.inject(headers)
                task_id = headers.get("id")
            else:
                task_id = None
            if task_id is None and isinstance(body, dict):  # task protocol 1
                task_id = body.get("id")
            if isinstance(task_id, str):
                span.set_attribute(M.MESSAGING_MESSAGE_ID, task_id)
            destination = routing_key or exchange
            if isinstance(destination, str) and destination:
                span.set_attribute(M.MESSAGING_DESTINATION_NAME, destination)

    # -- worker ------------------------------------------------------------------------
    def _prerun(self, sender=None, task_id=None, task=None, **_kw):
        # Our own chatter filter is lifted for the task; anyone else's suppression is honoured.
        if task is None or not (is_instrumentation_enabled() or is_our_quiet()):
            return
        with self.guard:
            request = task.request
            parent = mc.extract(request, mc.ATTR_GETTER)
            if not trace.get_current_span(parent).get_span_context().is_valid:
                parent = context.get_current()  # run eagerly (task.apply()), or sent untraced
            name = getattr(task, "name", None) or ""
            attrs = {
                M.MESSAGING_SYSTEM: _SYSTEM,
                M.MESSAGING_OPERATION_TYPE: _PROCESS,
                M.MESSAGING_OPERATION_NAME: "process",
                TASK_NAME: name,
                RETRIES: int(getattr(request, "retries", 0) or 0),
            }
            if isinstance(task_id, str):
                attrs[M.MESSAGING_MESSAGE_ID] = task_id
            delivery = getattr(request, "delivery_info", None)
            if isinstance(delivery, dict):
                destination = delivery.get("routing_key") or delivery.get("exchange")
                if isinstance(destination, str) and destination:
                    attrs[M.MESSAGING_DESTINATION_NAME] = destination
            span = self.tracer.start_span("process " + name, context=parent, kind=SpanKind.CONSUMER,
                                          attributes=attrs)
            token = context.attach(unquiet(trace.set_span_in_context(span, parent)))
            self._running[id(request)] = (span, token)

    def _postrun(self, sender=None, task=None, state=None, **_kw):
        if task is None:
            return
        with self.guard:
            entry = self._running.pop(id(task.request), None)
            if entry is None:
                return
            span, token = entry
            if isinstance(state, str):
                span.set_attribute(STATE, state)
            context.detach(token)
            span.end()

    def _failure(self, sender=None, exception=None, **_kw):
        with self.guard:
            entry = self._running.get(id(sender.request)) if sender is not None else None
            if entry is not None and isinstance(exception, BaseException):
                errors.record(entry[0], exception)

    # -- prefork children ----------------------------------------------------------------
    def _child_init(self, **_kw):
        """A fresh pool process: its idle time is chatter too (it may have been forked by any thread)."""
        with self.guard:
            if not chatter_enabled():
                self._child_token = context.attach(quiet_context())

    def _child_shutdown(self, **_kw):
        """The child ends with os._exit: send its spans first (bounded by OTEL_TRACE_RUN_EXIT_TIMEOUT)."""
        with self.guard:
            lifecycle.flush_at_exit()
