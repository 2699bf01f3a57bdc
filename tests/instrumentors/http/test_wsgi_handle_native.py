"""wsgi.handle in C (instrumentors/_wsgi_native.c) does what wsgi.python_handle does: every case below run
both ways (tracers of trace-run's and the SDK's, sampled or not, a traceparent or none, suppressed, excluded,
traced already, a failing tracer, an app that raises, streams, errs or says its body is held whole) gives the
same answer, body, spans, guard reports and context after; nothing is kept; a Flask app served over HTTP under
trace-run sends the same spans with OTEL_TRACE_RUN_NATIVE_CALLS on and off."""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from opentelemetry import context as context_api
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import memory_growth
from trace_run.agent import fastspan, program_provider
from trace_run.core import compat, guard, runtime_context
from trace_run.instrumentors import wsgi

_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
if runtime_context.NATIVE is None and not _COMPILER:
    pytest.skip("no C compiler: the extension is optional", allow_module_level=True)
native = importlib.import_module("trace_run.instrumentors._wsgi_native")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class Boom(Exception):
    pass


def _environ(path="/p", query="", **headers):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "h",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "REMOTE_ADDR": "10.0.0.1"}
    environ.update(headers)
    return environ


class _ClosingBody:
    """A body whose iteration or close fails (as the kind says)."""

    def __init__(self, kind):
        self.kind = kind

    def __iter__(self):
        yield b"first"
        if self.kind == "iter raises":
            raise Boom("mid-body")
        yield b"second"

    def close(self):
        if self.kind == "close raises":
            raise Boom("in close")


STATUSES = {"500": "500 INTERNAL SERVER ERROR", "odd status": "abc", "bytes status": b"201 Created",
            "int status": 404, "spaced status": " 302  Found", "keyword exc_info": "503 Unavailable"}


def _app(kind):
    def app(environ, start_response):
        if kind == "raise":
            raise Boom("the app failed")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "handled":  # a framework turned an exception into a 500
            environ[wsgi.ENVIRON_KEY].record(Boom("handled")) if wsgi.ENVIRON_KEY in environ else None
        status = STATUSES.get(kind, "500 INTERNAL SERVER ERROR" if kind == "handled" else "200 OK")
        if kind == "keyword exc_info":
            start_response(status=status, headers=[("Content-Type", "text/plain")], exc_info=None)
        else:
            start_response(status, [("Content-Type", "text/plain")])
        if kind in ("iter raises", "close raises"):
            return _ClosingBody(kind)
        if kind == "held" and wsgi.ENVIRON_KEY in environ:
            environ[wsgi.ENVIRON_KEY].held_whole = True
        if kind == "stream":
            def chunks():
                yield b"a"
                yield runtime_context.current_span().get_span_context().span_id.to_bytes(8, "big")
            return chunks()
        return [b"body"]

    return app


ENVIRONS = {
    "plain": _environ(),
    "query": _environ(query="a=1&password=x"),
    "sampled parent": _environ(HTTP_TRACEPARENT="00-%s-%s-01" % (TRACE_ID, PARENT_ID)),
    "unsampled parent": _environ(HTTP_TRACEPARENT="00-%s-%s-00" % (TRACE_ID, PARENT_ID)),
    "bad traceparent": _environ(HTTP_TRACEPARENT="nonsense"),
    "baggage": _environ(HTTP_BAGGAGE="k=v"),
    "post": dict(_environ(), REQUEST_METHOD="POST"),
    "odd method": dict(_environ(), REQUEST_METHOD="BREW"),
}


def _tracer(kind):
    exporter = InMemorySpanExporter()
    sampler = {"on": sampling.ALWAYS_ON, "off": sampling.ALWAYS_OFF, "ratio": sampling.TraceIdRatioBased(0.5),
               "parent": sampling.ParentBased(sampling.ALWAYS_ON)}[kind.split()[-1]]
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    if kind.startswith(("ours", "following")):
        tracer = fastspan.adopt(tracer)
    if kind.startswith("following"):  # what instrumentors get: it keeps the real tracer's bound methods
        tracer = program_provider.FollowingTracer(tracer, "t")
    if kind.startswith("other"):
        tracer = _OtherDeferred(tracer)
    return tracer, exporter


class _OtherDeferred:
    """A tracer with a start_span_deferred that is not trace-run's: called, not made in C."""

    def __init__(self, real):
        self.real = real

    def start_span(self, *args, **kwargs):
        return self.real.start_span(*args, **kwargs)

    def start_span_deferred(self, context, kind, make):
        name, attributes = make()
        return self.real.start_span(name + " (theirs)", context=context, kind=kind, attributes=attributes)


def _span_view(span, traceparent_span):
    ctx = span.context
    return {"name": span.name, "kind": str(span.kind), "attributes": list(span.attributes.items()),
            "status": (str(span.status.status_code), span.status.description),
            "events": [(e.name, e.attributes.get("exception.type"), e.attributes.get("exception.message"))
                       for e in span.events],
            "trace": "the header's" if "%032x" % ctx.trace_id == TRACE_ID else "new",
            "parent": span.parent and ("the header's" if "%016x" % span.parent.span_id == PARENT_ID else "other"),
            "ended": span.end_time is not None, "remote parent": span.parent and span.parent.is_remote,
            "chunk is its id": traceparent_span}


def _run(handle, tracer_kind, environ_name, app_kind, *, context=None, excluded=None, body=None, traced=False,
         environ_type=dict, consume="all"):
    """Everything one request shows: the answer, the body and what start_response got, the spans, the guard's
    reports, the environ's state and the context after."""
    tracer, exporter = (guard._FaultyTracer("flask"), None) if tracer_kind == "faulty" else _tracer(tracer_kind)
    environ = environ_type(ENVIRONS[environ_name])
    if traced:
        environ[wsgi.ENVIRON_KEY] = "an outer middleware's"
    responses = []

    def start_response(status, headers, exc_info=None):
        responses.append((status, headers, exc_info is not None))

    reports = []
    random.seed(7)  # the same ids both ways (a ratio sampler decides by the trace id)
    before = context_api.get_current()
    token = context_api.attach(context) if context is not None else None
    raised = None
    chunks = []
    args = [tracer, environ, start_response, _app(app_kind)]
    if excluded is not None or body is not None:
        args.append(excluded)
    if body is not None:
        args.append(body)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard, "report", lambda where, exc: reports.append((where, type(exc).__name__, str(exc))))
        if handle is wsgi.python_handle:  # the Python classes too
            for name, cls in wsgi.PYTHON_CLASSES.items():
                mp.setattr(wsgi, name, cls)
        kind = None
        try:
            result = handle(*args)
            kind = type(result).__name__.replace("_Python", "_")
            if isinstance(result, tuple):  # a body of the caller's
                result = result[1]
            if consume == "drop":
                del result
            else:
                for chunk in result:
                    chunks.append(chunk)
                    if consume == "one":
                        break
                getattr(result, "close", lambda: None)()
        except BaseException as exc:  # noqa: B902 (KeyboardInterrupt too: the app raised it)
            raised = (type(exc).__name__, str(exc), exc.__traceback__ is not None)
        finally:
            if token is not None:
                context_api.detach(token)
    spans = exporter.get_finished_spans() if exporter is not None else ()
    ids = {"%016x" % s.context.span_id for s in spans}
    streamed_id = chunks[1].hex() if app_kind == "stream" and len(chunks) == 2 else None
    state = environ.get(wsgi.ENVIRON_KEY)
    return {
        "answer": kind, "raised": raised, "chunks": chunks[:1], "responses": responses, "reports": reports,
        "spans": [_span_view(s, streamed_id in ids if streamed_id else None) for s in spans],
        "state": type(state).__name__.replace("_Python", "_") if not isinstance(state, str) else state,
        "state fields": (state.status, state.ended, state.held_whole, state.recorded is not None)
        if isinstance(state, (wsgi._Request, wsgi._PythonRequest)) else None,
        "context restored": context_api.get_current() is before,
    }


CASES = [(t, e, a) for t in ("ours on", "ours off", "ours ratio", "ours parent", "following on", "following ratio",
                              "sdk on", "sdk off", "other on", "faulty")
         for e in ENVIRONS for a in ("list", "stream", "raise", "500", "held")]
APPS = ["list", "stream", "raise", "interrupt", "500", "held", "handled", "iter raises", "close raises",
        *[k for k in STATUSES if k != "500"]]


def test_the_extension_is_built_and_used_where_a_c_compiler_is():
    if not _COMPILER:
        pytest.skip("no C compiler: the extension is optional")
    assert wsgi.handle is native.handle and wsgi.python_handle is not native.handle
    assert wsgi.set_route is native.set_route
    assert wsgi._Request.__mro__[1] is native.Request


@pytest.mark.parametrize("tracer_kind,environ_name,app_kind", CASES)
def test_every_case_answers_as_the_python_handle(tracer_kind, environ_name, app_kind):
    python = _run(wsgi.python_handle, tracer_kind, environ_name, app_kind)
    ours = _run(native.handle, tracer_kind, environ_name, app_kind)
    assert ours == python
    if tracer_kind == "ours on" and app_kind == "list":  # (the comparison compares something)
        assert [s["name"] for s in ours["spans"]] == ["GET" if environ_name != "post" else "POST"] \
            if environ_name != "odd method" else ["HTTP"]
        assert ours["answer"] == "_TracedBody" and ours["state"] == "_Request"


@pytest.mark.parametrize("app_kind", APPS)
@pytest.mark.parametrize("consume", ["all", "one", "drop"])
@pytest.mark.parametrize("tracer_kind", ["ours on", "ours off"])
def test_every_app_and_server_answers_as_the_python_handle(app_kind, consume, tracer_kind):
    """Bodies that run out, fail or fail to close; a server that takes one chunk and closes, or drops the body
    (the span ended as it goes); statuses of every shape, given by keyword too."""
    python = _run(wsgi.python_handle, tracer_kind, "sampled parent", app_kind, consume=consume)
    ours = _run(native.handle, tracer_kind, "sampled parent", app_kind, consume=consume)
    assert ours == python
    if tracer_kind == "ours on" and app_kind not in ("raise", "interrupt"):
        assert len(ours["spans"]) == 1 and ours["spans"][0]["ended"]


@pytest.mark.parametrize("app_kind", ["list", "raise", "interrupt", "stream"])
@pytest.mark.parametrize("setting", ["suppressed", "excluded", "not excluded", "traced already", "a body of its own",
                                     "dict subclass"])
def test_the_other_settings_answer_as_the_python_handle(setting, app_kind):
    kwargs = {}
    if setting == "suppressed":
        kwargs["context"] = context_api.set_value(compat.SUPPRESS_INSTRUMENTATION_KEY, True)
    elif setting == "excluded":
        kwargs["excluded"] = re.compile("/p")
    elif setting == "not excluded":
        kwargs["excluded"] = re.compile("/q")
    elif setting == "traced already":
        kwargs["traced"] = True
    elif setting == "a body of its own":
        kwargs["body"] = lambda result, request: ("kept", result)
    else:
        kwargs["environ_type"] = type("Environ", (dict,), {})
    python = _run(wsgi.python_handle, "ours on", "sampled parent", app_kind, **kwargs)
    ours = _run(native.handle, "ours on", "sampled parent", app_kind, **kwargs)
    assert ours == python
    # a body of the caller's ends the span itself (Django keeps its response): here only a failed request's ends
    ended = setting in ("not excluded", "dict subclass") or (
        setting == "a body of its own" and app_kind in ("raise", "interrupt"))
    assert len(ours["spans"]) == (1 if ended else 0), ours
    if app_kind == "interrupt":
        assert ours["raised"] == ("KeyboardInterrupt", "", True)


def test_the_apps_exception_is_the_same_object_and_the_request_ended_while_it_is_handled():
    tracer, exporter = _tracer("ours on")
    error = Boom("this one")
    seen = []

    def app(environ, start_response):
        raise error

    original_end = wsgi._Request.end

    def end(self, exc=None):
        seen.append((exc, sys.exc_info()[1]))
        return original_end(self, exc)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wsgi._Request, "end", end)
        with pytest.raises(Boom) as caught:
            native.handle(tracer, _environ(), lambda *a: None, app)
    assert caught.value is error and seen == [(error, error)]
    [span] = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR" and span.events[0].attributes["exception.message"] == "this one"


def test_a_failing_end_and_a_failing_detach_replace_the_apps_exception_as_in_python():
    tracer, _ = _tracer("ours on")

    def app(environ, start_response):
        raise Boom("the app's")

    for target in ("end", "detach"):
        answers = []
        for handle in (wsgi.python_handle, native.handle):
            with pytest.MonkeyPatch.context() as mp:
                if target == "end":
                    mp.setattr(wsgi._Request, "end", lambda self, exc=None: (_ for _ in ()).throw(KeyboardInterrupt()))
                else:
                    real = runtime_context.detach

                    def detach(token, real=real):
                        real(token)
                        raise SystemExit("detach")

                    mp.setattr(runtime_context, "detach", detach)
                try:
                    handle(tracer, _environ(), lambda *a: None, app)
                except BaseException as exc:  # noqa: B902
                    answers.append((type(exc).__name__, str(exc), type(exc.__context__).__name__))
        assert answers[0] == answers[1], (target, answers)
        assert answers[0][0] == ("KeyboardInterrupt" if target == "end" else "SystemExit")


@pytest.mark.parametrize("method", ["GET", "POST", "get", "BREW", "", None, b"GET", 7])
@pytest.mark.parametrize("route", ["/items/<id>", "", None, "/caf\u00e9", 3, "/" + "r" * 300, "/\u4e2d/<x>",
                                   "/\U0001f600", "/"])
@pytest.mark.parametrize("tracer_kind", ["ours on", "sdk on", "ours off"])
def test_set_route_names_the_span_as_the_python_function(method, route, tracer_kind):
    answers = []
    for function in (wsgi.python_set_route, native.set_route):
        tracer, exporter = _tracer(tracer_kind)
        span = tracer.start_span("GET")
        try:
            function(span, method, route)
            answers.append("returned")
        except Exception as exc:
            answers.append((type(exc).__name__, str(exc)))
        span.end()
        answers.append([(s.name, list(s.attributes.items())) for s in exporter.get_finished_spans()])
    assert answers[:2] == answers[2:]
    if tracer_kind != "ours off" and method == "GET" and route and type(route) is str:
        assert answers[1][0][0] == "GET " + route  # the name's text (joined in C without a format)
    if tracer_kind != "ours off" and method == "GET" and route == "/items/<id>":
        assert answers[1] == [("GET /items/<id>", [("http.route", "/items/<id>")])]


def test_the_request_state_type_keeps_its_fields():
    span, ctx = object(), object()
    request = wsgi._Request(span, ctx)
    assert (request.span, request.ctx, request.status, request.ended, request.recorded, request.held_whole) == (
        span, ctx, None, False, None, False)
    request.held_whole = True
    del request.status
    with pytest.raises(AttributeError):
        request.status  # noqa: B018
    with pytest.raises(AttributeError):
        request.other = 1  # slots: no other field
    with pytest.raises(TypeError):
        wsgi._Request(span)


@pytest.mark.parametrize("kind", ["ours on", "following on", "ours off"])
def test_trace_runs_deferred_start_is_made_in_c_for_the_tracers_instrumentors_get(kind):
    """With fastspan's tracer (behind a FollowingTracer, as instrumentors get it), no Python code of the
    request's start runs: the saving this path is for. A sampled span's attributes are made (in C too)."""
    tracer, exporter = _tracer(kind)
    ran = []

    def profile(frame, event, arg):
        if event == "call":
            ran.append((frame.f_code.co_name, os.path.basename(frame.f_code.co_filename)))

    environ = _environ()
    sys.setprofile(profile)
    try:
        body = native.handle(tracer, environ, lambda *a: None, lambda environ, start_response: [b"x"])
    finally:
        sys.setprofile(None)
    list(body)
    body.close()
    steps = {("start_server_span", "wsgi.py"), ("start_span_deferred", "fastspan.py"), ("extract", "wsgi.py"),
             ("default_pair", "propagation.py")}  # (the body's __init__ runs: it is made in Python)
    assert ran and not set(ran) & steps, ran
    assert [s.name for s in exporter.get_finished_spans()] == ([] if kind == "ours off" else ["GET"])


def test_the_tracers_own_deferred_start_is_found_as_getattr_finds_it():
    """The C knows fastspan's own start_span_deferred without the bound method getattr makes: a function of that
    name in the tracer's own dict (which getattr takes first) is called as getattr would find it, from the next
    request on, and the class's again once it is gone; `_attribute_blind` read from the instance as it is now."""
    tracer, exporter = _tracer("ours on")
    ran = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "start_span_deferred":
            ran.append(os.path.basename(frame.f_code.co_filename))

    def request():
        ran.clear()
        sys.setprofile(profile)
        try:
            body = native.handle(tracer, _environ(), lambda *a: None, lambda environ, start_response: [b"x"])
        finally:
            sys.setprofile(None)
        assert list(body) == [b"x"]
        getattr(body, "close", lambda: None)()
        return list(ran)

    theirs = []

    def start_span_deferred(context, kind, make):
        theirs.append(kind)
        return type(tracer).start_span_deferred(tracer, context, kind, make)

    assert request() == [] and request() == []  # made in C (the second from what the first found out)
    tracer.start_span_deferred = start_span_deferred
    assert request() == ["test_wsgi_handle_native.py", "fastspan.py"] and theirs == [SpanKind.SERVER]
    del tracer.start_span_deferred
    assert request() == [] and theirs == [SpanKind.SERVER]
    tracer._attribute_blind = False  # the sampler reads attributes: fastspan's Python method makes the span
    assert request() == ["fastspan.py"]
    del tracer._attribute_blind  # the Python method's AttributeError: reported by the guard, the request served
    reports = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard, "report", lambda where, exc: reports.append(str(exc)))
        assert request() == []
    assert reports == ["'Tracer' object has no attribute '_attribute_blind'"]
    tracer._attribute_blind = True
    assert request() == []
    assert [s.name for s in exporter.get_finished_spans()] == ["GET"] * 6


def test_a_body_made_without_its_fields_raises_and_does_not_crash():
    for cls in (wsgi._UnrecordedBody, wsgi._TracedBody, wsgi._HeldBody):
        body = cls.__new__(cls)
        with pytest.raises(TypeError):
            next(body)
        with pytest.raises(TypeError):
            body.close()
        del body  # (its finalizer finds no request: nothing to end)
    request = wsgi._Request.__new__(wsgi._Request)
    with pytest.raises(AttributeError):
        request.end()
    with pytest.raises(AttributeError):
        request._response("200 OK", [])


def test_a_replaced_step_is_called_as_python_calls_it(monkeypatch):
    """A test or a program that replaces wsgi.extract or wsgi.start_server_span: the C calls theirs."""
    calls = []
    tracer, exporter = _tracer("ours on")
    real_extract, real_start = wsgi.extract, wsgi.start_server_span
    monkeypatch.setattr(wsgi, "extract", lambda environ, context=None: calls.append("extract") or
                        real_extract(environ, context))
    monkeypatch.setattr(wsgi, "start_server_span", lambda *a: calls.append("start") or real_start(*a))
    list(native.handle(tracer, _environ(), lambda *a: None, _app("list")))
    assert calls == ["extract", "start"] and len(exporter.get_finished_spans()) == 1


def test_no_reference_is_kept_by_any_path():

    tracer, exporter = _tracer("ours on")
    off, _ = _tracer("ours off")
    faulty = guard._FaultyTracer("flask")
    apps = {kind: _app(kind) for kind in ("list", "stream", "raise", "held")}
    suppressed = context_api.set_value(compat.SUPPRESS_INSTRUMENTATION_KEY, True)

    def once():
        for t in (tracer, off, faulty):
            for app in apps.values():
                try:
                    body = native.handle(t, _environ(HTTP_TRACEPARENT="00-%s-%s-01" % (TRACE_ID, PARENT_ID)),
                                         lambda *a: None, app)
                    list(body)
                    getattr(body, "close", lambda: None)()
                except Boom:
                    pass
        token = context_api.attach(suppressed)
        native.handle(tracer, _environ(), lambda *a: None, apps["list"])
        context_api.detach(token)
        exporter.clear()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard, "report", lambda where, exc: None)
        grown = memory_growth(once, 100, 2000)
    assert grown < 64 * 1024, grown


_PROGRAM = textwrap.dedent("""
    import http.client, threading
    from opentelemetry.instrumentation.utils import suppress_instrumentation
    from wsgiref.simple_server import WSGIRequestHandler, make_server
    import flask

    app = flask.Flask("p")

    @app.route("/ok/<name>")
    def ok(name):
        return "hello " + name

    @app.route("/boom")
    def boom():
        raise RuntimeError("boom")

    @app.route("/stream")
    def stream():
        return flask.Response((c for c in ("a", "b")))

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a): pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for path, headers in (("/ok/x", {}), ("/boom", {}), ("/stream", {}), ("/missing", {}),
                          ("/ok/y", {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
                          ("/ok/z", {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"})):
        with suppress_instrumentation():  # (the headers as given: no client span's traceparent)
            c = http.client.HTTPConnection("127.0.0.1", server.server_port)
            c.request("GET", path, headers=headers)
            c.getresponse().read()
            c.close()
    server.shutdown()
""")


def _spans_of_a_program(receiver, tmp_path, value: str) -> list:
    script = tmp_path / "program.py"
    script.write_text(_PROGRAM)
    receiver.clear()
    env = dict(os.environ, **receiver.env(OTEL_TRACE_RUN_NATIVE_CALLS=value))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "trace-run"), sys.executable, str(script)],
                   env=env, check=True, timeout=60, cwd=str(tmp_path))
    spans = receiver.wait_for(count=5)
    skip = ("server.port", "client.address", "network.peer.port")
    return sorted(json.dumps([s.name, s.kind, s.status, s.trace_id == TRACE_ID, s.parent_id == PARENT_ID,
                              {k: v for k, v in s.attributes.items() if k not in skip},
                              [e[0] for e in s.events]], sort_keys=True, default=str) for s in spans)


def test_a_flask_program_sends_the_same_spans_with_and_without_the_c_path(receiver, tmp_path):
    made = {value: _spans_of_a_program(receiver, tmp_path, value) for value in ("true", "false")}
    assert made["true"] == made["false"]
    seen = sorted((name, status, in_trace, child) for name, _, status, in_trace, child, _, _ in map(json.loads,
                                                                                                  made["true"]))
    # /ok/z's traceparent is not sampled: no span
    assert seen == [("GET", "UNSET", False, False), ("GET /boom", "ERROR", False, False),
                    ("GET /ok/<name>", "UNSET", False, False), ("GET /ok/<name>", "UNSET", True, True),
                    ("GET /stream", "UNSET", False, False)], seen
