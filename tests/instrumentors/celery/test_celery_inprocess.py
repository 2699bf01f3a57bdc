"""Celery in-process: memory broker, spans in memory, eager runs."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_instrumentation
from trace_run.core import config
from trace_run.instrumentors.celery import CeleryInstrumentor


@pytest.fixture
def celery_spans(instrumented):
    return instrumented(CeleryInstrumentor)


@pytest.fixture
def app():
    app = Celery("inproc", broker="memory://", backend=None)
    app.conf.task_default_queue = prefix = "inproc-" + uuid.uuid4().hex[:8]

    @app.task(name=prefix + ".add")
    def add(x, y):
        with trace.get_tracer("t").start_as_current_span("inside"):
            return x + y

    @app.task(name=prefix + ".boom")
    def boom():
        raise KeyError("boom")

    app.t_add, app.t_boom = add, boom
    return app


def _message(app):
    with app.connection() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue)
        message = queue.get(timeout=2)
        message.ack()
        queue.close()
        return message


def test_publish_span_and_context_in_headers(celery_spans, app):
    provider, exporter = celery_spans
    with provider.get_tracer("t").start_as_current_span("request") as request:
        result = app.t_add.delay(1, 2)
    message = _message(app)
    (publish,) = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.PRODUCER]
    assert publish.name == "publish " + app.t_add.name
    assert publish.parent.span_id == request.get_span_context().span_id
    assert publish.attributes["messaging.message.id"] == result.id == message.headers["id"]
    assert publish.attributes["messaging.destination.name"] == app.conf.task_default_queue
    assert publish.attributes["messaging.operation.type"] == "send"
    trace_id, span_id = message.headers["traceparent"].split("-")[1:3]
    assert (trace_id, span_id) == (format(publish.context.trace_id, "032x"), format(publish.context.span_id, "016x"))


def test_broker_calls_under_publish_are_chatter_unless_asked_for(celery_spans, app, monkeypatch):
    seen = []

    def probe(**_kw):
        seen.append(is_instrumentation_enabled())

    signals.before_task_publish.connect(probe, weak=False)
    try:
        app.t_add.delay(1, 2)
        monkeypatch.setenv("OTEL_TRACE_RUN_CHATTER", "true")
        config.reset()
        app.t_add.delay(1, 2)
    finally:
        signals.before_task_publish.disconnect(probe)
        monkeypatch.delenv("OTEL_TRACE_RUN_CHATTER")
        config.reset()
    assert seen == [False, True]


def test_suppressed_send_makes_no_span_and_no_headers(celery_spans, app):
    _, exporter = celery_spans
    with suppress_instrumentation():
        app.t_add.delay(1, 2)
    assert "traceparent" not in _message(app).headers
    assert exporter.get_finished_spans() == ()


def test_eager_run_is_a_child_of_the_caller(celery_spans, app):
    provider, exporter = celery_spans
    with provider.get_tracer("t").start_as_current_span("caller") as caller:
        assert app.t_add.apply((2, 3)).get() == 5
    (process,) = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CONSUMER]
    assert process.name == "process " + app.t_add.name
    assert process.parent.span_id == caller.get_span_context().span_id
    assert process.attributes["celery.state"] == "SUCCESS" and process.attributes["celery.retries"] == 0
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_failed_task_is_error_with_exception(celery_spans, app):
    _, exporter = celery_spans
    result = app.t_boom.apply()
    assert isinstance(result.result, KeyError)
    (process,) = exporter.get_finished_spans()
    assert process.status.status_code == trace.StatusCode.ERROR
    assert process.attributes["error.type"] == "KeyError" and process.attributes["celery.state"] == "FAILURE"
    assert process.events[0].name == "exception"


def test_uninstrument_disconnects_the_signals(app):
    receivers = len(signals.task_prerun.receivers)
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    assert len(signals.task_prerun.receivers) == receivers + 1
    instrumentor.uninstrument()
    assert len(signals.task_prerun.receivers) == receivers
