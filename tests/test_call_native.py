"""The instrumentors' common call path in C (core/_call_native.c) does what the Python functions beside it do:
each case run both ways, the calls made (to start, the wrapped callable, end, fail, the guard, a span's end)
and the answers compared; a program traced with OTEL_TRACE_RUN_NATIVE_CALLS on and off sends the same spans.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from support import memory_growth
from trace_run.core import compat, config, runtime_context
from trace_run.instrumentors import base, dbapi, spans

_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
if runtime_context.NATIVE is None and not _COMPILER:
    pytest.skip("no C compiler: the extension is optional", allow_module_level=True)
native = importlib.import_module("trace_run.core._call_native")
PY = runtime_context.PYTHON

SAMPLED = NonRecordingSpan(SpanContext(0x1234, 0x56, False, TraceFlags(1)))
UNSAMPLED = NonRecordingSpan(SpanContext(0x1234, 0x57, False, TraceFlags(0)))
REMOTE_UNSAMPLED = NonRecordingSpan(SpanContext(0x1234, 0x58, True, TraceFlags(0)))


class OwnSpan(trace.Span):
    """A span class of a program's own: not one whose get_span_context the C reads as a field."""

    def __init__(self, ctx):
        self.ctx = ctx

    def get_span_context(self):
        return self.ctx

    def end(self, end_time=None): pass
    def is_recording(self): return False
    def set_attribute(self, key, value): pass
    def set_attributes(self, attributes): pass
    def add_event(self, name, attributes=None, timestamp=None): pass
    def update_name(self, name): pass
    def set_status(self, status, description=None): pass
    def record_exception(self, exception, attributes=None, timestamp=None, escaped=False): pass


class Truthless:
    def __bool__(self):
        raise ZeroDivisionError("no truth")


def _context(**values) -> Context:
    return Context(values)


def _contexts():
    sk, hk = compat.SUPPRESS_INSTRUMENTATION_KEY, compat.SUPPRESS_HTTP_INSTRUMENTATION_KEY
    span_key = runtime_context._SPAN_KEY
    yield Context()
    for value in (True, False, 1, 0, "", "x", None):
        yield Context({sk: value})
        yield Context({"suppress_instrumentation": value})
        yield Context({hk: value})
    for span in (SAMPLED, UNSAMPLED, REMOTE_UNSAMPLED, trace.INVALID_SPAN, OwnSpan(UNSAMPLED.get_span_context()),
                 OwnSpan(SAMPLED.get_span_context()), "not a span", None):
        yield Context({span_key: span})
        yield Context({span_key: span, sk: True})
    yield {span_key: UNSAMPLED}  # a plain dict: not the API's Context


def _answer(fn, *args):
    try:
        return "returned", fn(*args)
    except Exception as exc:
        return "raised", type(exc), str(exc)


def _current(fn, ctx):
    token = context_api.attach(ctx) if isinstance(ctx, Context) else None
    try:
        return _answer(fn)
    finally:
        if token is not None:
            context_api.detach(token)


def test_the_extension_is_built_and_used_where_a_c_compiler_is():
    if not _COMPILER:
        pytest.skip("no C compiler: the extension is optional")
    assert runtime_context.NATIVE is native
    assert runtime_context.unsampled_in is native.unsampled_in and runtime_context.with_span is native.with_span
    assert base.instrumentation_enabled_in is native.enabled_in
    assert base.is_http_instrumentation_enabled is native.http_enabled
    assert dbapi.client_active() is native.client_active
    assert spans.call_in_span is native.call_in_span


@pytest.mark.parametrize("ctx", list(_contexts()))
def test_the_checks_answer_as_the_python_ones(ctx):
    assert _answer(native.enabled_in, ctx) == _answer(_python_enabled_in, ctx)
    assert _answer(native.unsampled_in, ctx) == _answer(PY["unsampled_in"], ctx)
    assert _answer(native.span_in, ctx) == _answer(PY["span_in"], ctx)
    assert _current(native.http_enabled, ctx) == _current(_python_http_enabled, ctx)
    assert _current(native.current_span, ctx) == _current(PY["current_span"], ctx)


def test_a_context_changed_behind_the_apis_back_is_read_again():
    """The C keeps what it read of a context while that context is unchanged (core/own_attr.h's memo, four contexts
    a key): one changed with dict's own methods, and more contexts than it keeps taking turns, answer as the
    Python functions do at every step."""
    sk, span_key = compat.SUPPRESS_INSTRUMENTATION_KEY, runtime_context._SPAN_KEY
    contexts = [Context({span_key: SAMPLED}) for _ in range(6)]

    def same(ctx):
        for native_fn, python_fn in ((native.enabled_in, _python_enabled_in), (native.span_in, PY["span_in"]),
                                     (native.unsampled_in, PY["unsampled_in"])):
            assert _answer(native_fn, ctx) == _answer(python_fn, ctx)
        return native.enabled_in(ctx), native.span_in(ctx), native.unsampled_in(ctx)

    for _ in range(2):
        assert [same(c) for c in contexts] == [(True, SAMPLED, False)] * 6
    dict.__setitem__(contexts[2], span_key, UNSAMPLED)
    dict.__setitem__(contexts[4], sk, True)
    assert [same(c) for c in contexts] == [(True, SAMPLED, False)] * 2 + [(True, UNSAMPLED, True)] + [
        (True, SAMPLED, False), (False, SAMPLED, False), (True, SAMPLED, False)]
    dict.__delitem__(contexts[2], span_key)
    dict.__delitem__(contexts[4], sk)
    assert same(contexts[2]) == (True, trace.INVALID_SPAN, False) and same(contexts[4]) == (True, SAMPLED, False)


def _python_enabled_in(ctx):
    return not (ctx.get(compat.SUPPRESS_INSTRUMENTATION_KEY) or ctx.get("suppress_instrumentation"))


def _python_http_enabled():
    ctx = runtime_context.get_current()
    return _python_enabled_in(ctx) and not ctx.get(compat.SUPPRESS_HTTP_INSTRUMENTATION_KEY)


def test_a_value_without_truth_raises_its_error_both_ways():
    ctx = Context({compat.SUPPRESS_INSTRUMENTATION_KEY: Truthless()})
    assert _answer(native.enabled_in, ctx) == _answer(_python_enabled_in, ctx) == (
        "raised", ZeroDivisionError, "no truth")


@pytest.mark.parametrize("ctx", list(_contexts()))
@pytest.mark.parametrize("flag", [True, False])
def test_client_active_answers_as_the_python_one(ctx, flag):
    class Instrumentor:
        _is_instrumented_by_opentelemetry = flag

    assert _current(lambda: native.client_active(Instrumentor()), ctx) == \
        _current(lambda: dbapi.is_client_active(Instrumentor()), ctx)


@pytest.mark.parametrize("call", [
    lambda f, s, c: f(s),
    lambda f, s, c: f(s, c),
    lambda f, s, c: f(s, context=c),
    lambda f, s, c: f(s, c, "k", "v"),
    lambda f, s, c: f(span=s, key="k", value=None),
    lambda f, s, c: f(s, None, "k"),
    lambda f, s, c: f(),
    lambda f, s, c: f(s, c, "k", "v", "extra"),
    lambda f, s, c: f(s, nope=1),
    lambda f, s, c: f(s, c, context=c),
])
def test_with_span_makes_the_same_context(call):
    parent = Context({"a": 1, runtime_context._SPAN_KEY: SAMPLED})
    token = context_api.attach(Context({"current": 2}))
    try:
        made = [_answer(lambda f=f: call(f, UNSAMPLED, parent)) for f in (native.with_span, PY["with_span"])]
    finally:
        context_api.detach(token)
    if made[0][0] == "raised":
        assert made[1][0] == "raised" and made[0][1] is made[1][1] is TypeError
        return
    (_, c_made), (_, py_made) = made
    assert type(c_made) is type(py_made) is Context
    assert list(c_made.items()) == list(py_made.items())


class _Keys(dict):
    def keys(self):  # (dict.__init__ merges a dict whatever its keys say; told apart from its merge, not here)
        return ["a"]


class _Mapping:
    def __init__(self, d):
        self.d = d

    def keys(self):
        return list(self.d)

    def __getitem__(self, key):
        return self.d[key]


@pytest.mark.parametrize("parent", [
    lambda: Context({"a": 1, runtime_context._SPAN_KEY: SAMPLED}),
    lambda: {"a": 1, "b": 2},
    lambda: _Keys({"a": 1, "b": 2}),
    lambda: _Mapping({"a": 1, "b": 2}),
    lambda: Context(),
], ids=["context", "dict", "dict with its own keys", "mapping", "empty"])
def test_with_span_copies_every_parent_as_the_context_class_does(parent):
    """The C copies a dict parent by merging it into an empty Context (dict.__init__'s merge, without its lookup
    of `keys`), anything else by calling Context with it: the same items either way, in the same order."""
    made = [f(UNSAMPLED, parent(), "k", "v") for f in (native.with_span, PY["with_span"])]
    assert type(made[0]) is type(made[1]) is Context
    assert list(made[0].items()) == list(made[1].items())
    assert list(made[0].items())[-2:] == [(runtime_context._SPAN_KEY, UNSAMPLED), ("k", "v")]


def test_detach_restores_and_reports_as_the_python_one(caplog):
    for detach in (native.detach, PY["detach"]):
        before = runtime_context.get_current()
        token = runtime_context.attach(Context({"x": 1}))
        assert detach(token) is None
        assert runtime_context.get_current() is before
        with caplog.at_level("ERROR", logger="opentelemetry.context"):
            caplog.clear()
            assert detach(token) is None  # used twice: the API's answer, logged, never raised
        assert "Failed to detach context" in caplog.text


# -- the wrapped call -------------------------------------------------------------------------------------


class Boom(Exception):
    pass


class Stop(BaseException):
    pass


class Recorder:
    """A library's start/end/fail and a guard, every call logged."""

    def __init__(self, start="span", end="default", fail="ok", enabled=None, failed="ok"):
        self.log: list = []
        self.how = (start, end, fail, enabled, failed)
        self.name = "recorder"

    # the guard
    def failed(self, exc):
        self.log.append(("failed", type(exc).__name__, str(exc)))
        if self.how[4] == "raise":
            raise exc

    def enabled(self):
        self.log.append(("enabled",))
        if self.how[3] == "raise":
            raise Boom("enabled")
        return self.how[3]

    def start(self, instance, args, kwargs):
        self.log.append(("start", instance, args, dict(kwargs)))
        how = self.how[0]
        if how == "none":
            return None
        if how == "raise":
            raise Boom("start")
        if how == "stop":
            raise Stop("start")
        if how == "three":
            return (self.span(), None, args)
        token = runtime_context.attach(Context({"inside": how}))
        args = args + ("added",) if how == "new-args" else args
        if how == "list-args":
            args = list(args)
        return (self.span() if how != "no-span" else None, token if how != "no-token" else None, args, kwargs)

    def span(self):
        recorder = self

        class S:
            def end(self):
                recorder.log.append(("span.end", runtime_context.get_current().get("inside")))
                if recorder.how[1] == "end-raises":
                    raise Boom("end")

        return S()

    def end(self, span, result):
        self.log.append(("end", result, runtime_context.get_current().get("inside")))
        if self.how[1] == "raise":
            raise Boom("finish")
        if self.how[1] == "stop":
            raise Stop("finish")

    def fail(self, span, exc):
        self.log.append(("fail", type(exc).__name__, sys.exc_info()[1] is exc))
        if self.how[2] == "raise":
            raise Boom("fail")


def _wrapped_factory(log, how):
    def wrapped(*args, **kwargs):
        log.append(("wrapped", args, kwargs, runtime_context.get_current().get("inside")))
        if how == "raise":
            raise ERROR
        if how == "stop":
            raise Stop("wrapped")
        return ("result", args)

    return wrapped


ERROR = Boom("the program's own")


def _run(make, rec, wrapped_how, enabled):
    wrapper = make(rec, enabled)
    wrapped = _wrapped_factory(rec.log, wrapped_how)
    before = runtime_context.get_current()
    try:
        out = ("returned", wrapper(wrapped, "inst", (1, 2), {"k": 3}))
    except BaseException as exc:
        out = ("raised", type(exc).__name__, str(exc), exc is ERROR,
               type(exc.__context__).__name__ if exc.__context__ is not None else None)
    assert runtime_context.get_current() is before or rec.how[0] in ("no-token", "three")
    if runtime_context.get_current() is not before:
        context_api.attach(before)
    return out, rec.log


def _python_wrapper(rec, enabled, monkeypatch=None):
    saved = runtime_context.NATIVE
    runtime_context.NATIVE = None
    try:
        return spans.wrapper(rec, rec.start, rec.fail, _end_of(rec), enabled)
    finally:
        runtime_context.NATIVE = saved


def _native_wrapper(rec, enabled):
    made = spans.wrapper(rec, rec.start, rec.fail, _end_of(rec), enabled)
    assert type(made) is native.Runner
    return made


def _end_of(rec):
    return None if rec.how[1] in ("default", "end-raises") else rec.end


@pytest.mark.parametrize("start", ["span", "none", "raise", "stop", "no-span", "no-token", "new-args", "list-args",
                                   "three"])
@pytest.mark.parametrize("end", ["default", "given", "raise", "stop", "end-raises"])
@pytest.mark.parametrize("fail", ["ok", "raise"])
@pytest.mark.parametrize("wrapped", ["ok", "raise", "stop"])
@pytest.mark.parametrize("enabled", ["none", True, False, "raise"])
@pytest.mark.parametrize("failed", ["ok", "raise"])
def test_the_runner_makes_the_calls_the_python_wrapper_makes(start, end, fail, wrapped, enabled, failed):
    results = []
    for make in (_python_wrapper, _native_wrapper):
        rec = Recorder(start, end, fail, None if enabled == "none" else enabled, failed)
        results.append(_run(make, rec, wrapped, None if enabled == "none" else rec.enabled))
    assert results[0] == results[1]


def test_the_programs_exception_is_the_same_object_with_its_traceback():
    rec = Recorder()
    runner = _native_wrapper(rec, None)

    def wrapped():
        raise ERROR

    with pytest.raises(Boom) as info:
        runner(wrapped, None, (), {})
    assert info.value is ERROR
    assert info.traceback[-1].name == "wrapped"
    assert rec.log[-1] == ("fail", "Boom", True)


@pytest.mark.parametrize("end", [None, "given"])
def test_call_in_span_is_the_python_one(end):
    for how in ("ok", "raise"):
        logs = []
        for fn in (native.call_in_span, spans.python_call_in_span):
            rec = Recorder()
            token = runtime_context.attach(Context({"inside": "x"}))
            wrapped = _wrapped_factory(rec.log, how)
            try:
                out = ("returned", fn(rec, rec.span(), token, wrapped, ("a",), {"b": 1}, rec.fail,
                                      rec.end if end else None))
            except Boom as exc:
                out = ("raised", exc is ERROR)
            logs.append((out, rec.log))
        assert logs[0] == logs[1]


def test_runner_rejects_other_calls():
    runner = native.Runner(Recorder(), lambda *a: None, lambda *a: None)
    with pytest.raises(TypeError):
        runner(lambda: 1, None, ())
    with pytest.raises(TypeError):
        runner(lambda: 1, None, (), {}, extra=1)
    assert "start=" in repr(runner)


# -- the switch, and a program traced both ways -----------------------------------------------------------


def test_the_switch(monkeypatch):
    monkeypatch.setenv("OTEL_TRACE_RUN_NATIVE_CALLS", "false")
    config.reset()
    try:
        assert runtime_context.native_switch() is False
        assert runtime_context.use_native(False) is False
        assert runtime_context.with_span is PY["with_span"] and runtime_context.NATIVE is None
    finally:
        monkeypatch.delenv("OTEL_TRACE_RUN_NATIVE_CALLS")
        config.reset()
        runtime_context.use_native(runtime_context.native_switch())
    code = ("from trace_run.instrumentors import base, spans; from trace_run.core import runtime_context as r;"
            "print(r.NATIVE is not None, type(spans.wrapper(None, None, None)).__name__,"
            " base.instrumentation_enabled_in.__module__)")
    for value, expected in (("false", "False function trace_run.instrumentors.base"),
                            ("true", "True Runner trace_run.core._call_native")):
        env = dict(os.environ, OTEL_TRACE_RUN_NATIVE_CALLS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


_PROGRAM = textwrap.dedent("""
    import http.client, http.server, sqlite3, threading
    from opentelemetry import trace
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ok" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *a): pass

    server = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tracer = trace.get_tracer("program")
    db = sqlite3.connect(":memory:").cursor()  # (a connection's execute on 3.9 runs its cursor's: two spans)
    with tracer.start_as_current_span("work"):
        db.execute("CREATE TABLE t (a INTEGER)")
        db.execute("INSERT INTO t VALUES (?)", (1,))
        try:
            db.execute("SELECT nope FROM t")
        except sqlite3.OperationalError:
            pass
        for path in ("/ok", "/fail"):
            c = http.client.HTTPConnection("127.0.0.1", server.server_port)
            c.request("GET", path)
            c.getresponse().read()
            c.close()
        with suppress_instrumentation():
            db.execute("SELECT 1")
    with tracer.start_as_current_span("unsampled", context=trace.set_span_in_context(trace.NonRecordingSpan(
            trace.SpanContext(1, 2, True, trace.TraceFlags(0))))):
        db.execute("SELECT 2")
    server.shutdown()
""")


def _spans_of_a_program(receiver, tmp_path, value: str) -> list:
    script = tmp_path / "program.py"
    script.write_text(_PROGRAM)
    receiver.clear()
    env = dict(os.environ, **receiver.env(OTEL_TRACE_RUN_NATIVE_CALLS=value))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "trace-run"), sys.executable, str(script)],
                   env=env, check=True, timeout=60, cwd=str(tmp_path))
    spans_ = receiver.wait_for(count=6)  # (sent before the program exits)
    by_id = {s.span_id: s for s in spans_}
    return sorted(json.dumps([s.name, s.kind, s.status, s.status_message, by_id[s.parent_id].name if s.parent_id
                              in by_id else None, {k: v for k, v in s.attributes.items() if k not in (
                                  "server.port", "url.full", "network.peer.port")}, s.events and s.events[0][0]],
                             sort_keys=True, default=str) for s in spans_)


def test_a_program_traced_with_and_without_the_c_path_sends_the_same_spans(receiver, tmp_path):
    made = {value: _spans_of_a_program(receiver, tmp_path, value) for value in ("true", "false")}
    assert made["true"] == made["false"]
    seen = sorted((name, kind, status, parent) for name, kind, status, _, parent, _, _ in map(json.loads, made["true"]))
    # nothing for the suppressed SELECT 1, nor for SELECT 2 in a trace that is not sampled
    assert seen == [("CREATE t", "CLIENT", "UNSET", "work"), ("GET", "CLIENT", "ERROR", "work"),
                    ("GET", "CLIENT", "UNSET", "work"), ("INSERT t", "CLIENT", "UNSET", "work"),
                    ("SELECT t", "CLIENT", "ERROR", "work"), ("work", "INTERNAL", "UNSET", None)], seen


def test_no_reference_is_kept_by_any_path():
    """Every path of the C (a span ended, a start declined or failing, the program's exception, the checks,
    with_span, detach) run many times: the memory Python's allocator holds does not grow with the calls."""

    rec = Recorder(failed="ok")
    one_span = rec.span()
    rec.span = lambda: one_span  # (a class per span otherwise: the test's own allocations)
    runner = native.Runner(rec, rec.start, rec.fail, None, None)
    declining = native.Runner(rec, lambda *a: None, rec.fail, None, lambda: True)
    bad = Recorder(start="raise")
    failing = native.Runner(bad, bad.start, bad.fail)
    ctx = Context({runtime_context._SPAN_KEY: UNSAMPLED, compat.SUPPRESS_INSTRUMENTATION_KEY: False})

    def raising(*args, **kwargs):
        raise Boom("a new one each time")  # (one object raised again keeps every traceback before)

    def once():
        rec.log.clear()
        runner(lambda *a, **k: a, None, (1,), {"k": 2})
        declining(lambda *a, **k: k, None, [1], {"k": 2})
        bad.log.clear()
        failing(lambda: 3, None, (), {})
        try:
            runner(raising, None, (), {})
        except Boom:
            pass
        native.enabled_in(ctx), native.unsampled_in(ctx), native.span_in(ctx), native.http_enabled()
        native.detach(runtime_context.attach(native.with_span(SAMPLED, ctx, "k", "v")))
        native.call_in_span(rec, rec.span(), None, lambda: 1, (), {}, rec.fail)

    grown = memory_growth(once, 200, 20000)
    assert grown < 64 * 1024, grown
