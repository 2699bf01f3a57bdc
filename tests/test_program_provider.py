"""A program that sets up its own TracerProvider: the agent follows it.

Real programs under trace-run. The program's provider exports to one receiver
(or to stdout as JSON), the agent's own OTLP pipeline to another: every span
must reach the program's processors exactly once, and the agent's pipeline
only what it traced before the program took over.
"""

from __future__ import annotations

import json

import pytest
from support import clean_env, run_traced, write_script
from support.otlp_receiver import Receiver

# A local HTTP server for requests to call, and an exporter that prints what it got as JSON at exit.
PRELUDE = """
    import atexit, json, os, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    URL = "http://127.0.0.1:%d/" % server.server_address[1]

    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Collect(SpanExporter):
        spans = []

        def export(self, spans):
            for s in spans:
                self.spans.append({
                    "name": s.name, "kind": s.kind.name, "trace_id": s.context.trace_id,
                    "span_id": s.context.span_id, "parent_id": s.parent.span_id if s.parent else None,
                    "service": s.resource.attributes.get("service.name"),
                })
            return SpanExportResult.SUCCESS

    atexit.register(lambda: print("SPANS " + json.dumps(Collect.spans)))
"""

SET_BEFORE_TRACED_IMPORTS = PRELUDE + """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    early = trace.get_tracer("early")  # obtained before the program's provider is set
    provider = TracerProvider(resource=Resource({"service.name": "program-svc"}))
    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider

    import sqlite3
    import requests

    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("work"):
        assert requests.get(URL).text == "ok"
        sqlite3.connect(":memory:").execute("SELECT 1").fetchall()
    with early.start_as_current_span("early-op"):
        pass
    print("done")
"""


def _spans(stdout: str) -> list:
    line = [x for x in stdout.splitlines() if x.startswith("SPANS ")]
    assert len(line) == 1, stdout
    return json.loads(line[0][len("SPANS "):])


def _lines(stderr: str) -> list:
    return [x for x in stderr.splitlines() if x.startswith("trace-run:")]


def _follow_line_once(stderr: str) -> None:
    assert "Overriding" not in stderr
    lines = _lines(stderr)
    assert len(lines) == 1, stderr
    assert "TracerProvider" in lines[0] and "warning" not in lines[0] and "follow" in lines[0], lines


def test_provider_set_before_first_traced_import_gets_every_span(tmp_path, receiver):
    script = write_script(tmp_path, SET_BEFORE_TRACED_IMPORTS)
    proc = run_traced(["python", script], env=clean_env(**receiver.env()), check=True)
    assert "done" in proc.stdout
    spans = _spans(proc.stdout)
    by_name = {s["name"]: s for s in spans}
    work, client = by_name["work"], by_name["GET"]
    assert client["kind"] == "CLIENT" and client["parent_id"] == work["span_id"]
    assert client["trace_id"] == work["trace_id"]
    sql = [s for s in spans if s["kind"] == "CLIENT" and s["name"] != "GET"]
    assert len(sql) == 1 and sql[0]["parent_id"] == work["span_id"]
    assert "early-op" in by_name  # a tracer got before the hand-over follows too
    assert len(spans) == 4  # each once
    assert {s["service"] for s in spans} == {"program-svc"}  # the program's resource rules its spans
    receiver.wait_for(timeout=1.0)
    assert receiver.spans == []  # the agent's pipeline exported none of them
    _follow_line_once(proc.stderr)


SET_AFTER_AGENT_TRACED = PRELUDE + """
    import requests
    from opentelemetry import trace

    assert requests.get(URL + "before").text == "ok"  # traced by the agent's own provider

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource({"service.name": "program-svc"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=os.environ["MY_ENDPOINT"])))
    trace.set_tracer_provider(provider)

    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("work"):
        assert requests.get(URL + "after").text == "ok"

    # the agent's pipeline shuts down once it has sent what it held: no thread of it is left (the
    # SIGTERM watcher stays: at SIGTERM it flushes the program's provider)
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ours = [t.name for t in threading.enumerate()
                if t.name.startswith("trace-run") and t.name != "trace-run-sigterm"]
        workers = [t for t in threading.enumerate() if "Processor" in t.name]
        if not ours and len(workers) == 1:  # the program's BatchSpanProcessor only
            break
        time.sleep(0.05)
    print("threads", ours, len(workers))
"""


def test_provider_set_after_agent_traced_spans_each_goes_out_once(tmp_path, receiver):
    mine = Receiver().start()
    try:
        script = write_script(tmp_path, SET_AFTER_AGENT_TRACED)
        env = clean_env(**receiver.env(), MY_ENDPOINT=mine.http_endpoint + "/v1/traces")
        proc = run_traced(["python", script], env=env, check=True)
        assert "threads [] 1" in proc.stdout, proc.stdout + proc.stderr
        mine.wait_for(count=2, timeout=10)
        receiver.wait_for(count=1, timeout=10)
        mine.wait_for(timeout=0.5)  # anything sent twice would be here by now
        program, agent = list(mine.spans), list(receiver.spans)
    finally:
        mine.stop()
    # before the hand-over: through the agent's pipeline, once
    assert [s.name for s in agent] == ["GET"] and agent[0].attributes["url.full"].endswith("/before")
    assert agent[0].service != "program-svc"
    # after: through the program's, once, with the parent link intact
    assert sorted(s.name for s in program) == ["GET", "work"]
    work = next(s for s in program if s.name == "work")
    client = next(s for s in program if s.name == "GET")
    assert client.kind == "CLIENT" and client.parent_id == work.span_id and client.trace_id == work.trace_id
    assert client.attributes["url.full"].endswith("/after")
    assert {s.service for s in program} == {"program-svc"}
    assert not {s.span_id for s in program} & {s.span_id for s in agent}
    _follow_line_once(proc.stderr)


INSTRUMENTS_ITSELF = PRELUDE + """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from trace_run.instrumentors.flask import FlaskInstrumentor
    from trace_run.instrumentors.requests import RequestsInstrumentor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    trace.set_tracer_provider(provider)
    FlaskInstrumentor().instrument(tracer_provider=provider)
    RequestsInstrumentor().instrument(tracer_provider=provider)

    import flask
    import requests

    app = flask.Flask(__name__)

    @app.route("/users/<int:uid>")
    def user(uid):
        return requests.get(URL).text

    assert app.test_client().get("/users/7").data == b"ok"
    print("done")
"""


@pytest.mark.timeout(120)
def test_program_that_instruments_flask_itself_keeps_working(tmp_path, receiver):
    script = write_script(tmp_path, INSTRUMENTS_ITSELF)
    proc = run_traced(["python", script], env=clean_env(**receiver.env()), check=True)
    assert "done" in proc.stdout
    spans = _spans(proc.stdout)
    assert sorted((s["name"], s["kind"]) for s in spans) == [("GET", "CLIENT"), ("GET /users/<int:uid>", "SERVER")]
    server = next(s for s in spans if s["kind"] == "SERVER")
    client = next(s for s in spans if s["kind"] == "CLIENT")
    assert client["parent_id"] == server["span_id"] and client["trace_id"] == server["trace_id"]
    receiver.wait_for(timeout=1.0)
    assert receiver.spans == []
    assert "Overriding" not in proc.stderr
    assert len([x for x in _lines(proc.stderr) if "follow" in x]) == 1, proc.stderr


SIGTERMED = """
    import os, sys, time
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    # a long delay: only a flush sends this span before the process dies
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=os.environ["MY_ENDPOINT"]),
                                                   schedule_delay_millis=60000))
    trace.set_tracer_provider(provider)
    with trace.get_tracer("app").start_as_current_span("before-sigterm"):
        pass
    print("ready", flush=True)
    time.sleep(60)
"""


def test_sigterm_flushes_the_programs_provider(tmp_path, receiver):
    import signal
    import subprocess

    from support import TRACE_RUN

    mine = Receiver().start()
    try:
        script = write_script(tmp_path, SIGTERMED)
        env = clean_env(**receiver.env(), MY_ENDPOINT=mine.http_endpoint + "/v1/traces")
        proc = subprocess.Popen([TRACE_RUN, "python", script], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGTERM  # it dies of the signal, as without trace-run
        assert [s.name for s in mine.wait_for(count=1, timeout=5)] == ["before-sigterm"]
    finally:
        mine.stop()
    assert receiver.spans == []
    _follow_line_once(stderr)


INSTRUMENTS_AFTER_THE_AGENT = PRELUDE + """
    import flask
    import requests  # both instrumented by the agent at these imports

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from trace_run.instrumentors.flask import FlaskInstrumentor
    from trace_run.instrumentors.requests import RequestsInstrumentor

    provider = TracerProvider()  # not the global one: passed to the instrumentors only
    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    FlaskInstrumentor().instrument(tracer_provider=provider)
    RequestsInstrumentor().instrument(tracer_provider=provider)

    app = flask.Flask(__name__)

    @app.route("/users/<int:uid>")
    def user(uid):
        return requests.get(URL).text

    assert app.test_client().get("/users/7").data == b"ok"
    print("done")
"""


def test_instrument_again_with_a_provider_after_the_agent_uses_that_provider_quietly(tmp_path, receiver):
    script = write_script(tmp_path, INSTRUMENTS_AFTER_THE_AGENT)
    proc = run_traced(["python", script], env=clean_env(**receiver.env()), check=True)
    spans = _spans(proc.stdout)
    assert sorted((s["name"], s["kind"]) for s in spans) == [("GET", "CLIENT"), ("GET /users/<int:uid>", "SERVER")]
    server = next(s for s in spans if s["kind"] == "SERVER")
    client = next(s for s in spans if s["kind"] == "CLIENT")
    assert client["parent_id"] == server["span_id"]
    receiver.wait_for(timeout=1.0)
    assert receiver.spans == []
    assert "already instrumented" not in proc.stderr and _lines(proc.stderr) == [], proc.stderr


OPEN_ACROSS = """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("outer"):  # started on the agent's provider
        trace.set_tracer_provider(TracerProvider())
    print("done")
"""


def test_span_open_across_the_hand_over_is_counted_not_logged(tmp_path):
    script = write_script(tmp_path, OPEN_ACROSS)
    proc = run_traced(["python", script], env=clean_env(OTEL_TRACES_EXPORTER="console"), check=True)
    assert proc.stdout == "done\n"  # the console exporter had stopped: the span is not printed
    lines = _lines(proc.stderr)
    assert len(lines) == 2 and "follow" in lines[0], proc.stderr
    assert lines[1] == ("trace-run: warning: 1 of 1 spans were not exported to console "
                        "(1 dropped from the queue or unsent at exit, 0 failed to send)")
    assert [x for x in proc.stderr.splitlines() if not x.startswith("trace-run:")] == []  # no SDK noise


def test_attribute_redaction_rules_not_reaching_the_programs_exporters_are_named(tmp_path, receiver):
    script = write_script(tmp_path, OPEN_ACROSS.replace('with tracer.start_as_current_span("outer"):', "if True:"))
    env = clean_env(**receiver.env(), OTEL_TRACE_RUN_REDACT_ATTRIBUTES="user.email")
    proc = run_traced(["python", script], env=env, check=True)
    lines = _lines(proc.stderr)
    assert len(lines) == 2 and "follow" in lines[0], proc.stderr
    assert lines[1].startswith("trace-run: warning: OTEL_TRACE_RUN_REDACT_ATTRIBUTES and ") and "without" in lines[1]


PROPAGATE_FIRST = """
    from opentelemetry.propagate import inject  # the program's first OpenTelemetry import
    import sqlite3
    from opentelemetry import propagate, trace

    print([type(p).__module__ for p in propagate.get_global_textmap()._propagators])
    with trace.get_tracer("by-hand").start_as_current_span("outer") as outer:
        headers = {}
        inject(headers)
        sqlite3.connect(":memory:").execute("SELECT 1")
    print(headers["traceparent"].split("-")[2] == "%016x" % outer.get_span_context().span_id)
"""


def test_a_program_importing_opentelemetry_propagate_first_is_traced_whole(tmp_path, receiver):
    """The SDK is built half-way through opentelemetry.propagate (its propagators import
    opentelemetry.trace first): set-up must finish (exit flush), and trace-run's propagator becomes
    the global one once that module is done, without a warning."""
    proc = run_traced(["python", write_script(tmp_path, PROPAGATE_FIRST)],
                      env=clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="30000")), check=True)
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines() == ["['trace_run.agent.tracecontext', 'opentelemetry.baggage.propagation']",
                                        "True"]
    spans = receiver.wait_for(count=2, timeout=10)  # sent by the exit flush (the batch delay is 30 s)
    outer = next(s for s in spans if s.name == "outer")
    query = next(s for s in spans if s.name != "outer")
    assert query.parent_id == outer.span_id and query.trace_id == outer.trace_id
