"""Attribute redaction rules (OTEL_TRACE_RUN_REDACT_ATTRIBUTES / _HASH_ATTRIBUTES), in process and end to end."""

from __future__ import annotations

import hashlib

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import clean_env, run_traced, write_script
from trace_run.agent import redact


def _pipeline(delete=(), hashed=(), limits=None):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits) if limits else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(redact.RedactingExporter(exporter, redact.Rules(delete, hashed))))
    return provider.get_tracer("t"), exporter


def _h(value) -> str:
    return "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()[:16]


def test_delete_and_hash_by_glob_case_insensitive():
    tracer, exporter = _pipeline(delete=["user.email", "enduser.*"], hashed=["user.ID", "app.tags"])
    with tracer.start_as_current_span("op") as span:
        span.set_attribute("user.email", "ann@example.com")
        span.set_attribute("enduser.id", "ann")
        span.set_attribute("enduser.role", "admin")
        span.set_attribute("User.Id", 4711)
        span.set_attribute("app.tags", ["a", "b"])
        span.set_attribute("http.request.method", "GET")
    (out,) = exporter.get_finished_spans()
    assert dict(out.attributes) == {"User.Id": _h(4711), "app.tags": (_h("a"), _h("b")),
                                    "http.request.method": "GET"}


def test_delete_wins_over_hash_and_events_and_links_are_covered():
    tracer, exporter = _pipeline(delete=["secret.*"], hashed=["secret.*", "exception.message"])
    with tracer.start_as_current_span("linked") as other:
        pass
    link = trace.Link(other.get_span_context(), {"secret.token": "t0k3n", "kept": 1})
    with tracer.start_as_current_span("op", links=[link]) as span:
        span.add_event("login", {"secret.password": "hunter2", "user.kind": "staff"})
        span.record_exception(ValueError("card 4111-1111-1111-1111 declined"))
    out = exporter.get_finished_spans()[1]
    assert out.events[0].name == "login" and dict(out.events[0].attributes) == {"user.kind": "staff"}
    exc = dict(out.events[1].attributes)
    assert exc["exception.message"] == _h("card 4111-1111-1111-1111 declined")
    assert exc["exception.type"] == "ValueError"
    assert dict(out.links[0].attributes) == {"kept": 1}
    assert out.links[0].context.span_id == other.get_span_context().span_id


def test_unmatched_spans_pass_through_as_the_same_objects():
    tracer, exporter = _pipeline(delete=["user.email"])
    with tracer.start_as_current_span("op") as span:
        span.set_attribute("http.route", "/x")
    (out,) = exporter.get_finished_spans()
    assert dict(out.attributes) == {"http.route": "/x"}
    assert redact.redact_span(out, redact.Rules(["user.email"], ["enduser.*"])) is out  # no copy when nothing matches
    assert redact.Rules().apply({"a": 1}) is None and not redact.Rules()


def test_copy_keeps_identity_timing_status_and_dropped_counts():
    tracer, exporter = _pipeline(delete=["user.email"], limits=SpanLimits(max_span_attributes=2))
    with tracer.start_as_current_span("op", kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("user.email", "x@y")
        span.set_attribute("a", 1)
        span.set_attribute("b", 2)  # over the limit: one attribute is dropped by the SDK
        span.set_status(trace.StatusCode.ERROR, "bad")
    (out,) = exporter.get_finished_spans()
    assert out is not span
    assert out.context == span.context and out.parent == span.parent and out.kind == trace.SpanKind.SERVER
    assert (out.start_time, out.end_time, out.status.status_code) == (span.start_time, span.end_time,
                                                                      trace.StatusCode.ERROR)
    assert out.dropped_attributes == span.dropped_attributes == 1
    assert out.instrumentation_scope == span.instrumentation_scope and out.resource is span.resource
    assert "user.email" not in out.attributes


PROGRAM = """
    from opentelemetry import trace
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("signup") as span:
        span.set_attribute("user.email", "ann.secret@example.com")
        span.set_attribute("enduser.id", "ann-4711-secret")
        span.set_attribute("app.customer_ref", "CUST-SECRET-99")
        span.set_attribute("app.plan", "gold")
        span.add_event("verified", {"user.phone": "+41-79-SECRET"})
    print("ok")
"""


@pytest.mark.parametrize("exporter_name", ["otlp", "console"])
def test_rules_apply_before_any_byte_leaves(tmp_path, receiver, exporter_name):
    script = write_script(tmp_path, PROGRAM)
    env = clean_env(**dict(receiver.env(), OTEL_TRACES_EXPORTER=exporter_name),
                    OTEL_TRACE_RUN_REDACT_ATTRIBUTES="user.*,enduser.id",
                    OTEL_TRACE_RUN_HASH_ATTRIBUTES="app.customer_ref")
    proc = run_traced(["python", script], env=env, check=True)
    if exporter_name == "console":
        out = proc.stdout
        assert "signup" in out and "ok" in out
    else:
        (span,) = receiver.wait_for(count=1)
        assert span.attributes == {"app.customer_ref": _h("CUST-SECRET-99"), "app.plan": "gold"}
        assert span.events == [("verified", {})]
        out = receiver.raw_bytes().decode("latin-1")
    assert "SECRET" not in out.upper().replace("_SECRET", ""), out
    assert "SECRET" not in proc.stderr


def test_without_rules_the_program_attributes_are_exported(tmp_path, receiver):
    """The control: the same program without rules exports the values the test above removes."""
    script = write_script(tmp_path, PROGRAM)
    run_traced(["python", script], env=clean_env(**receiver.env()), check=True)
    (span,) = receiver.wait_for(count=1)
    assert span.attributes["user.email"] == "ann.secret@example.com"
    assert b"CUST-SECRET-99" in receiver.raw_bytes()
