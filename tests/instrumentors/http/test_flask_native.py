"""FlaskInstrumentor's hooks in C (instrumentors/_wsgi_native.c) do what its Python methods (_wsgi_app,
_full_dispatch_request, _held_whole) do: every case below is run with the C hooks and with the Python methods
(sampled or not, a list body, a generator, another response class, a route or none, a view that raises, a
guarded step that fails, a replaced flask.request proxy, wsgi_app called with keywords) and gives the same
answer, body, spans, guard reports, request state and context after."""

from __future__ import annotations

import importlib
import os
import random
import shutil
import sys
from contextlib import contextmanager

import inline_values
import pytest
from opentelemetry import context as context_api
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import memory_growth
from trace_run.agent import fastspan
from trace_run.core import guard, runtime_context
from trace_run.instrumentors import flask as flask_instrumentor
from trace_run.instrumentors import wsgi
from trace_run.instrumentors.flask import FlaskInstrumentor

_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
if runtime_context.NATIVE is None and not _COMPILER:
    pytest.skip("no C compiler: the extension is optional", allow_module_level=True)
native = importlib.import_module("trace_run.instrumentors._wsgi_native")
flask = pytest.importorskip("flask")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class Boom(Exception):
    pass


def _in_trace() -> bytes:
    """What a call made here would carry: the current span's trace and sampled flag."""
    ctx = runtime_context.current_span().get_span_context()
    return ("%s-%s" % ("the header's" if "%032x" % ctx.trace_id == TRACE_ID else ctx.is_valid,
                       ctx.trace_flags.sampled)).encode()


class LazyResponse(flask.Response):
    """An app's own response class: its body made as the server iterates it."""

    def iter_encoded(self):
        for chunk in super().iter_encoded():
            yield chunk + b"|" + _in_trace()


def make_app(testing=False):
    app = flask.Flask("native_hooks")
    app.testing = testing

    @app.route("/list/<int:n>")
    def listed(n):
        return "hello %d" % n

    @app.route("/json")
    def json_view():
        return {"a": 1}

    @app.route("/generator")
    def generator():
        return flask.Response(_in_trace() for _ in range(2))

    @app.route("/own-class")
    def own_class():
        return LazyResponse(b"own")

    @app.route("/raise")
    def raises():
        raise Boom("the view failed")

    @app.route("/interrupt")
    def interrupt():
        raise KeyboardInterrupt

    return app


VIEWS = {"list": "/list/7", "json": "/json", "generator": "/generator", "own class": "/own-class",
         "raise": "/raise", "missing": "/missing"}


def _tracer_provider(kind):
    exporter = InMemorySpanExporter()
    sampler = {"on": sampling.ALWAYS_ON, "off": sampling.ALWAYS_OFF,
               "parent": sampling.ParentBased(sampling.ALWAYS_ON)}[kind.split()[-1]]
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@contextmanager
def instrumented(path, tracer_kind, instrumentor_class=FlaskInstrumentor, layout=True):
    """Flask instrumented with the C hooks (path "c") or the Python methods ("python"); `layout` False: as
    where flask.request's layout is not the one the C reads (it calls _get_current_object)."""
    provider, exporter = _tracer_provider(tracer_kind)
    with pytest.MonkeyPatch.context() as mp:
        if path == "python":
            mp.setattr(flask_instrumentor, "_native_hooks", lambda *a: None)
        if not layout:
            mp.setattr(flask_instrumentor, "_request_layout", lambda flask: None)
        instrumentor = instrumentor_class()
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
        try:
            hook = flask.Flask.wsgi_app._trace_run_wrapper
            assert (type(hook).__module__ == native.__name__) is (path == "c")
            if tracer_kind.startswith("ours"):
                instrumentor._tracer = fastspan.adopt(provider.get_tracer("t"))
            yield instrumentor, exporter, mp
        finally:
            instrumentor.__class__ = instrumentor_class  # (a case may have given it another)
            instrumentor.uninstrument()
            type(instrumentor)._instance = None


def _span_view(span):
    return {"name": span.name, "kind": str(span.kind),
            "attributes": [(k, v) for k, v in span.attributes.items() if k not in ("client.address",)],
            "status": (str(span.status.status_code), span.status.description),
            "events": [(e.name, e.attributes.get("exception.type"), e.attributes.get("exception.message"))
                       for e in span.events],
            "trace": "the header's" if "%032x" % span.context.trace_id == TRACE_ID else "new",
            "ended": span.end_time is not None}


def _run(path, tracer_kind, view, setting="plain", call="positional", parent=None):
    """Everything one request shows: the answer's class, the body, the statuses, the spans, the guard's
    reports, the request's state and the context after."""
    reports, statuses, chunks = [], [], []
    raised = None
    with instrumented(path, tracer_kind, layout=setting != "unknown layout") as (instrumentor, exporter, mp):
        app = make_app(testing=setting == "testing")
        mp.setattr(guard, "report", lambda where, exc: reports.append((where, type(exc).__name__, str(exc))))
        if setting == "set_route fails":
            mp.setattr(wsgi, "set_route", lambda *a: (_ for _ in ()).throw(Boom("set_route")))
        elif setting == "request fails":
            class Broken:
                def _get_current_object(self):
                    raise Boom("no request")
            instrumentor._request = Broken()
        elif setting == "replaced proxy":  # another proxy of the same request: its function is called
            from werkzeug.local import LocalProxy

            instrumentor._request = LocalProxy(lambda: flask.globals._cv_request.get().request)
        elif setting == "no response class":
            instrumentor._response_class = None
        # the instance attributes the C reads from the instance's dict, under a guard on the exact type and its
        # version: each way the dict's value is not generic getattr's answer, or the type changed
        elif setting == "response class property":  # a data descriptor added to the class: it wins over the dict
            mp.setattr(FlaskInstrumentor, "_response_class", property(lambda self: LazyResponse), raising=False)
        elif setting == "response class of the class":  # not in the instance's dict: the class's attribute
            mp.setattr(FlaskInstrumentor, "_response_class", None, raising=False)
            del instrumentor.__dict__["_response_class"]
        elif setting == "subclass with a request property":  # __class__ assigned: another type, its property
            class Broken:
                def _get_current_object(self):
                    raise Boom("no request (property)")
            request = property(lambda s: Broken(), lambda s, v: None)
            instrumentor.__class__ = type("Sub", (type(instrumentor),), {"_request": request})
        elif setting == "excluded property":  # a property excluding every URL, the instance's None: no span
            import re

            mp.setattr(FlaskInstrumentor, "_excluded", property(lambda self: re.compile("")), raising=False)
        elif setting == "rule attribute replaced":  # werkzeug's Rule given a data descriptor `rule`
            from werkzeug.routing import Rule

            mp.setattr(Rule, "rule", property(lambda self: "/from-the-property"), raising=False)
        elif setting == "guard raises":  # OTEL_TRACE_RUN_RAISE_ERRORS: the guarded step's error raised
            mp.setattr(wsgi, "set_route", lambda *a: (_ for _ in ()).throw(Boom("set_route")))

            def report(where, exc):
                reports.append((where, type(exc).__name__, str(exc)))
                raise exc

            mp.setattr(guard, "report", report)
            instrumentor._request = type("Broken", (), {"_get_current_object": lambda self: 1 / 0})()
        from werkzeug.test import EnvironBuilder

        headers = {"traceparent": "00-%s-%s-%s" % (TRACE_ID, PARENT_ID, parent)} if parent else {}
        environ = EnvironBuilder(path=VIEWS[view], headers=headers).get_environ()

        def start_response(status, headers, exc_info=None):
            statuses.append(status)

        random.seed(7)
        before = context_api.get_current()
        kind = None
        try:
            if call == "positional":
                body = app(environ, start_response)
            elif call == "keywords":
                body = app.wsgi_app(environ=environ, start_response=start_response)
            elif call == "one keyword":
                body = app.wsgi_app(environ, start_response=start_response)
            else:  # too many: the TypeError the method raises
                body = app.wsgi_app(environ, start_response, None)
            kind = type(body).__name__.replace("_Python", "_")
            chunks.extend(body)
            body.close()
        except BaseException as exc:  # noqa: B902 (KeyboardInterrupt too: the view raised it)
            raised = (type(exc).__name__, str(exc))
        state = environ.get(wsgi.ENVIRON_KEY)
        spans = exporter.get_finished_spans()
        return {"answer": kind, "raised": raised, "chunks": chunks, "statuses": statuses, "reports": reports,
                "spans": [_span_view(s) for s in spans],
                "state": None if state is None else (state.status, state.ended, state.held_whole,
                                                     state.recorded is not None),
                "context restored": context_api.get_current() is before}


TRACERS = ("sdk on", "sdk off", "ours on", "ours off", "sdk parent")
CASES = [(t, v, p) for t in TRACERS for v in VIEWS for p in (None, "01", "00")]


def test_the_hooks_are_c_where_the_extension_is_built():
    if not _COMPILER:
        pytest.skip("no C compiler: the extension is optional")
    original = flask.Flask.__dict__["wsgi_app"], flask.Flask.__dict__["full_dispatch_request"]
    import inspect

    signatures = [str(inspect.signature(f)) for f in original]
    with instrumented("c", "sdk on") as (instrumentor, _, _mp):
        app_hook = flask.Flask.__dict__["wsgi_app"]._trace_run_wrapper
        dispatch_hook = flask.Flask.__dict__["full_dispatch_request"]._trace_run_wrapper
        assert type(app_hook).__name__ == "flask_wsgi_app" and type(dispatch_hook).__name__ == \
            "flask_full_dispatch_request"
        assert [str(inspect.signature(getattr(flask.Flask, n))) for n in ("wsgi_app", "full_dispatch_request")] \
            == signatures
        assert flask_instrumentor._request_layout(flask)[2] is flask.globals._cv_request
    assert (flask.Flask.__dict__["wsgi_app"], flask.Flask.__dict__["full_dispatch_request"]) == original


@pytest.mark.skipif(not inline_values.observable(),
                    reason="this interpreter has no inline attribute values a __dict__ read replaces (3.11, 3.12 do)")
@pytest.mark.parametrize("path", ["c", "python"])
def test_the_routing_rule_keeps_its_inline_attributes(path):
    """The route is read off the program's werkzeug Rule by getattr: reading it from the rule's dict made that
    dict, and Flask's and werkzeug's own reads of the rule, every request, took the slow path."""
    if path == "c" and not _COMPILER:
        pytest.skip("no C compiler: the extension is optional")
    with instrumented(path, "sdk on") as (instrumentor, exporter, _mp):
        app = make_app()
        client = app.test_client()
        assert [client.get("/list/%d" % n).data for n in (1, 2)] == [b"hello 1", b"hello 2"]
        (rule,) = [r for r in app.url_map.iter_rules() if r.rule == "/list/<int:n>"]
        assert inline_values.dict_made(rule, "endpoint") is False
        spans = exporter.get_finished_spans()
        assert [(s.name, s.attributes["http.route"]) for s in spans] == [("GET /list/<int:n>", "/list/<int:n>")] * 2


@pytest.mark.parametrize("tracer_kind,view,parent", CASES)
def test_every_request_answers_as_the_python_methods(tracer_kind, view, parent):
    python = _run("python", tracer_kind, view, parent=parent)
    ours = _run("c", tracer_kind, view, parent=parent)
    assert ours == python
    if tracer_kind == "sdk on" and parent is None:  # (the comparison compares something)
        names = {"list": "GET /list/<int:n>", "json": "GET /json", "generator": "GET /generator",
                 "own class": "GET /own-class", "raise": "GET /raise", "missing": "GET"}
        assert [s["name"] for s in ours["spans"]] == [names[view]]
        assert ours["state"][2] is (view in ("list", "json")), ours  # held whole: Flask's class, a list body


SETTINGS = ("testing", "set_route fails", "request fails", "replaced proxy", "unknown layout", "no response class",
            "guard raises", "response class property", "response class of the class",
            "subclass with a request property", "excluded property", "rule attribute replaced")


@pytest.mark.parametrize("view", ["list", "generator", "own class", "raise", "missing"])
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("tracer_kind", ["ours on", "ours off"])
def test_every_setting_answers_as_the_python_methods(tracer_kind, setting, view):
    python = _run("python", tracer_kind, view, setting)
    ours = _run("c", tracer_kind, view, setting)
    assert ours == python
    if setting in ("set_route fails", "request fails") and tracer_kind == "ours on" and view != "missing":
        assert ours["reports"] and ours["spans"]  # reported, and the request still served and traced
    if setting == "testing" and view == "raise":
        assert ours["raised"] == ("Boom", "the view failed")
    if tracer_kind == "ours on" and view == "list":  # the guarded reads' fallbacks took effect
        if setting == "rule attribute replaced":
            assert [s["name"] for s in ours["spans"]] == ["GET /from-the-property"]
        elif setting == "excluded property":
            assert ours["spans"] == []
        elif setting == "subclass with a request property":
            assert ours["reports"] and "no request (property)" in ours["reports"][0][2]
        elif setting in ("response class property", "response class of the class"):
            assert ours["state"][2] is False  # not Flask's class (the property's, or the class's None)


@pytest.mark.parametrize("call", ["keywords", "one keyword", "too many"])
@pytest.mark.parametrize("tracer_kind", ["ours on", "ours off"])
def test_wsgi_app_called_another_way_answers_as_the_python_method(tracer_kind, call):
    python = _run("python", tracer_kind, "list", call=call)
    ours = _run("c", tracer_kind, "list", call=call)
    assert ours == python
    if call == "too many":
        assert ours["raised"][0] == "TypeError"


def test_the_views_exception_is_the_same_object():
    error = Boom("this one")
    for path in ("python", "c"):
        with instrumented(path, "ours on") as (_, exporter, _mp):
            app = make_app(testing=True)

            @app.route("/this")
            def this():
                raise error

            with pytest.raises(Boom) as caught:
                app.test_client().get("/this")
            assert caught.value is error
            [span] = exporter.get_finished_spans()
            assert span.name == "GET /this" and span.status.status_code.name == "ERROR"


def test_a_held_whole_of_a_subclass_is_called_as_python_calls_it():
    seen = []

    class Mine(FlaskInstrumentor):
        def _held_whole(self, response, state=None):
            seen.append((type(response).__name__, state is None))
            return super()._held_whole(response, state)

    for path in ("python", "c"):
        with instrumented(path, "ours on", Mine):
            make_app().test_client().get("/list/1").close()
        with instrumented(path, "ours off", Mine):
            make_app().test_client().get("/list/1").close()
    assert seen == [("Response", False), ("Response", True)] * 2


def _frames_of_requests(app) -> list:
    from werkzeug.test import EnvironBuilder

    ran = []

    def profile(frame, event, arg):
        if event == "call":
            ran.append((frame.f_code.co_name, os.path.basename(frame.f_code.co_filename)))

    for _ in range(2):
        environ = EnvironBuilder(path="/list/3").get_environ()
        sys.setprofile(profile)
        try:
            body = app(environ, lambda *a: None)
            list(body)
            body.close()
        finally:
            sys.setprofile(None)
    return ran


@pytest.mark.parametrize("tracer_kind", ["ours on", "ours off"])
def test_no_python_frame_of_the_hooks_runs_for_a_request(tracer_kind):
    """The saving these are for: no frame of flask.py's hooks, nor of werkzeug's _get_current_object for the
    instrumentor's reads of flask.request (Flask's own reads of its proxies run it as they do bare)."""
    bare = _frames_of_requests(make_app())
    with instrumented("c", tracer_kind) as (instrumentor, exporter, _mp):
        ran = _frames_of_requests(make_app())
    assert not [r for r in ran if r[1] == "flask.py"], ran
    proxies = ("_get_current_object", "local.py")
    assert ran.count(proxies) == bare.count(proxies), ran
    assert [s.name for s in exporter.get_finished_spans()] == ([] if tracer_kind == "ours off"
                                                               else ["GET /list/<int:n>"] * 2)


def test_no_reference_is_kept_by_any_path():

    from werkzeug.test import EnvironBuilder

    with instrumented("c", "ours on") as (instrumentor, exporter, mp):
        mp.setattr(guard, "report", lambda where, exc: None)
        app = make_app()
        app.logger.disabled = True  # (Flask logs the failed view: pytest would keep every record)

        def once():
            for path in ("/list/1", "/generator", "/raise", "/missing"):
                body = app(EnvironBuilder(path=path).get_environ(), lambda *a: None)
                list(body)
                body.close()
            exporter.clear()

        grown = memory_growth(once, 50, 500)
    assert grown < 64 * 1024, grown


def test_another_request_layout_is_not_read_from_a_context_var():
    import types

    from werkzeug.local import LocalProxy

    real = flask_instrumentor._request_layout(flask)
    assert real is not None and real[0] is flask.request
    others = {"callable proxy": LocalProxy(lambda: flask.globals._cv_request.get().request),
              "session proxy": flask.session, "not a proxy": object()}
    for name, proxy in others.items():
        fake = types.SimpleNamespace(request=proxy, globals=flask.globals)
        assert flask_instrumentor._request_layout(fake) is None, name
    assert flask_instrumentor._request_layout(types.SimpleNamespace()) is None


def test_the_hooks_refuse_what_they_were_not_made_for():
    with pytest.raises(TypeError):
        native.flask_hooks(object(), ("not", "a", "context var"))
    with pytest.raises(TypeError):
        native.flask_hooks(object())
