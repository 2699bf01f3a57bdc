"""Fast in-process tests of the core pieces: registry/README, hooks, guard, sampler, console."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

import pytest
from trace_run.core import config, guard, hooks
from trace_run.instrumentors import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_block(marker: str) -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start, end = "<!-- %s:start -->" % marker, "<!-- %s:end -->" % marker
    return text[text.index(start) + len(start): text.index(end)].strip()


def test_readme_variable_table_matches_the_registry():
    assert _readme_block("variables") == config.markdown_table()


def test_every_registered_variable_is_documented_once():
    names = [v.name for v in config.VARIABLES]
    assert len(names) == len(set(names))
    for v in config.VARIABLES:
        assert v.doc and v.kind in ("bool", "int", "str", "enum", "list", "kvlist", "url", "path"), v.name
        assert v.name.startswith("OTEL_")


def test_readme_supported_libraries_table_is_generated_from_the_registry():
    assert _readme_block("libraries") == registry.markdown_table()


def test_registry_writes_the_readme_libraries_table(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text("# x\n\n<!-- libraries:start -->\n| old |\n<!-- libraries:end -->\n\ntail\n")
    proc = subprocess.run([sys.executable, "-m", "trace_run.instrumentors.registry", "--write", str(stale)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = stale.read_text()
    assert text == "# x\n\n<!-- libraries:start -->\n%s\n<!-- libraries:end -->\n\ntail\n" % registry.markdown_table()
    assert "`psycopg2` | >=2.8,<3 |" in text
    again = subprocess.run([sys.executable, "-m", "trace_run.instrumentors.registry", "--write", str(stale)],
                           capture_output=True, text=True, timeout=60)
    assert "already up to date" in again.stderr and stale.read_text() == text
    bad = subprocess.run([sys.executable, "-m", "trace_run.instrumentors.registry", "--write",
                          str(tmp_path / "missing.md")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("trace-run: ")


def test_boot_hooks_table_is_generated_from_the_registry():
    from trace_run.agent import boot

    text = open(boot.__file__, encoding="utf-8").read()
    block = text[text.index(registry.HOOKS_START) + len(registry.HOOKS_START):text.index(registry.HOOKS_END)]
    assert block == registry.hooks_table()
    expected = [(m, e.name, "") for e in registry.BUILTIN.values() for m in e.modules]
    expected += [(m, e.name, method) for e in registry.BUILTIN.values() for m, method in e.submodules]
    assert sorted(boot.HOOKS) == sorted(expected)
    assert boot.ALIASES == {e.name: e.aliases for e in registry.BUILTIN.values() if e.aliases}


def test_registry_writes_boots_hooks_table(tmp_path):
    stale = tmp_path / "boot.py"
    stale.write_text("x = 1\n# hooks:start\nHOOKS = ()\n# hooks:end\ny = 2\n")
    args = [sys.executable, "-m", "trace_run.instrumentors.registry", "--write-hooks", str(stale)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert stale.read_text() == "x = 1\n# hooks:start\n%s# hooks:end\ny = 2\n" % registry.hooks_table()
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert "already up to date" in again.stderr
    (tmp_path / "plain.py").write_text("x = 1\n")
    bad = subprocess.run(args[:-1] + [str(tmp_path / "plain.py")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("trace-run: ")


def test_every_registry_entry_points_at_an_instrumentor_class():
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

    for entry in registry.BUILTIN.values():
        cls = registry.load(entry)
        assert issubclass(cls, BaseInstrumentor), entry.name
        assert cls.library == entry.name


@pytest.mark.parametrize(
    "name,value,expected,warned",
    [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100", 100, False),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "-1", 2048, True),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "1e3", 1000, False),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "lots", 2048, True),
        ("OTEL_SDK_DISABLED", "TRUE", True, False),
        ("OTEL_SDK_DISABLED", "perhaps", False, True),
        ("OTEL_LOG_LEVEL", "DEBUG", "debug", False),
        ("OTEL_LOG_LEVEL", "chatty", "info", True),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318", "", True),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1, b = two%20words", {"a": "1", "b": "two words"}, False),
        ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", " redis , ,flask", ["redis", "flask"], False),
    ],
)
def test_config_parsing_and_fallbacks(monkeypatch, name, value, expected, warned):
    config.reset()
    monkeypatch.setenv(name, value)
    assert config.get(name) == expected
    assert bool([w for w in config.WARNINGS if w.startswith(name)]) == warned
    config.reset()


def test_header_values_are_masked_in_warnings(monkeypatch):
    config.reset()
    config.warn("OTEL_EXPORTER_OTLP_HEADERS", "api-key=SECRET,x=y", "nothing")
    assert "SECRET" not in config.WARNINGS[0] and "api-key=***" in config.WARNINGS[0]
    config.reset()


def test_post_import_hook_fires_once_after_import(tmp_path, monkeypatch):
    (tmp_path / "hooked_mod_x.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hooks.when_imported("hooked_mod_x", lambda m: seen.append(m.VALUE))
    assert seen == []
    import hooked_mod_x  # noqa: F401

    assert seen == [7]
    assert hooked_mod_x.__loader__.__class__.__name__ == "SourceFileLoader"
    import importlib

    importlib.reload(hooked_mod_x)
    assert seen == [7]
    hooks.when_imported("hooked_mod_x", lambda m: seen.append("again"))  # already imported: at once
    assert seen == [7, "again"]
    del sys.modules["hooked_mod_x"]


def test_hook_errors_never_break_the_import(tmp_path, monkeypatch):
    (tmp_path / "hooked_mod_y.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(guard, "RAISE", False)

    def bad(_module):
        raise RuntimeError("hook bug")

    hooks.when_imported("hooked_mod_y", bad)
    import hooked_mod_y

    assert hooked_mod_y.VALUE == 1
    del sys.modules["hooked_mod_y"]


def test_guard_swallows_instrumentation_errors_but_not_in_test_mode(monkeypatch):
    g = guard.Guard("unit")
    monkeypatch.setattr(guard, "RAISE", False)
    with g:
        raise ValueError("instrumentation bug")
    monkeypatch.setattr(guard, "RAISE", True)
    with pytest.raises(ValueError):
        with g:
            raise ValueError("instrumentation bug")
    with pytest.raises(KeyboardInterrupt):  # never swallows BaseException
        monkeypatch.setattr(guard, "RAISE", False)
        with g:
            raise KeyboardInterrupt


@pytest.mark.parametrize("broken", ["start", "status", "end"])
def test_the_wsgi_middleware_isolates_its_own_failures_and_the_app_answers_as_bare(monkeypatch, broken):
    """A failure of ours where the request's span starts, where the status is read or where the span ends is
    reported once, in test mode raised, and otherwise the app's answer reaches the server unchanged."""
    from opentelemetry.sdk.trace import TracerProvider
    from trace_run.instrumentors import wsgi

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    middleware = wsgi.TraceMiddleware(app, tracer_provider=TracerProvider())
    if broken == "start":
        middleware._tracer = guard._FaultyTracer("wsgi")
    else:
        target = "_response" if broken == "status" else "end"

        def fail(*args, **kwargs):
            raise RuntimeError("instrumentation bug")

        monkeypatch.setattr(wsgi._Request, target, fail)

    def serve() -> tuple:
        seen = []
        body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http",
                           "SERVER_NAME": "h", "SERVER_PORT": "80"}, lambda status, headers: seen.append(status))
        chunks = list(body)
        getattr(body, "close", lambda: None)()
        return seen, chunks

    monkeypatch.setattr(guard, "_reported", set())
    monkeypatch.setattr(guard, "RAISE", False)
    assert serve() == (["200 OK"], [b"hello"]) and guard._reported == {"wsgi"}
    monkeypatch.setattr(guard, "RAISE", True)
    with pytest.raises((RuntimeError, guard.SimulatedFault)):
        serve()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("broken", ["start", "end", "fail"])
def test_span_wrapper_isolates_its_own_failures_and_passes_the_programs_on(monkeypatch, broken, is_async):
    """The shared wrapper (spans.py): a failing start means a plain call, a failing end or fail leaves the
    call's own result or exception as it was (the same object); in test mode our failure raises."""
    import asyncio

    from trace_run.instrumentors import spans

    finished = []

    def start(instance, args, kwargs):
        if broken == "start":
            raise RuntimeError("instrumentation bug in start")
        return "span", None, args + ("from-start",), kwargs

    def end(span, result):
        finished.append(("end", span, result))
        if broken == "end":
            raise RuntimeError("instrumentation bug in end")

    def fail(span, exc):
        finished.append(("fail", span, exc))
        if broken == "fail":
            raise RuntimeError("instrumentation bug in fail")

    wrapper = spans.wrapper(guard.Guard("unit-" + broken), start, fail, end, is_async=is_async)
    mine = LookupError("the program's own")

    def call(*args):
        if "raise" in args:
            raise mine
        return args

    async def acall(*args):
        return call(*args)

    def run(*args):
        if is_async:
            return asyncio.run(wrapper(acall, None, args, {}))
        return wrapper(call, None, args, {})

    monkeypatch.setattr(guard, "RAISE", False)
    result = run("x")
    with pytest.raises(LookupError) as seen:
        run("raise")
    assert seen.value is mine
    if broken == "start":
        assert result == ("x",) and finished == []  # called as it was, no span
    else:
        assert result == ("x", "from-start")
        assert finished == [("end", "span", result), ("fail", "span", mine)]
    monkeypatch.setattr(guard, "RAISE", True)
    with pytest.raises(RuntimeError, match="instrumentation bug in " + broken):
        run("raise" if broken == "fail" else "x")


def test_rate_limiting_sampler_caps_new_traces_per_second():
    from opentelemetry.sdk.trace.sampling import Decision
    from trace_run.agent.samplers import RateLimitingSampler

    sampler = RateLimitingSampler(50)
    start = time.monotonic()
    sampled = 0
    while time.monotonic() - start < 0.5:
        if sampler.should_sample(None, 1, "x").decision is Decision.RECORD_AND_SAMPLE:
            sampled += 1
    # a full bucket (50) plus about 25 refilled in half a second
    assert 50 <= sampled <= 85, sampled
    assert "50" in sampler.get_description()


def test_rate_limiting_sampler_is_thread_safe():
    from opentelemetry.sdk.trace.sampling import Decision
    from trace_run.agent.samplers import RateLimitingSampler

    sampler = RateLimitingSampler(1000)
    counts = []

    def run():
        n = 0
        for _ in range(20000):
            if sampler.should_sample(None, 1, "x").decision is Decision.RECORD_AND_SAMPLE:
                n += 1
        counts.append(n)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counts) == 4 and sum(counts) >= 1000


def test_console_tree_waits_for_local_root_and_nests_children():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from trace_run.agent.console import TreeConsoleExporter

    out = io.StringIO()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TreeConsoleExporter(out)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("db", kind=SpanKind.CLIENT) as db:
            db.set_attribute("db.system.name", "postgresql")
            db.set_status(Status(StatusCode.ERROR, "boom"))
        assert out.getvalue() == ""  # nothing printed until the root ends
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trace ")
    assert "| root" in lines[1] and "SERVER" in lines[1]
    assert "|   db" in lines[2] and "CLIENT" in lines[2] and "ERROR" in lines[2]
    assert "db.system.name=postgresql" in lines[2]
    assert "! boom" in lines[3]


def test_resource_keeps_command_line_out(monkeypatch):
    from trace_run.agent import sdk

    monkeypatch.setattr(sys, "argv", ["app.py", "--db-password=hunter2"])
    attrs = sdk.resource_attributes()
    assert "process.command_args" not in attrs
    assert "hunter2" not in repr(attrs)
    assert attrs["process.pid"] == os.getpid() and attrs["telemetry.sdk.language"] == "python"


def test_psycopg2_dependency_names_the_installed_distribution():
    from trace_run.instrumentors.psycopg2 import Psycopg2Instrumentor

    inst = Psycopg2Instrumentor()
    (dep,) = inst.instrumentation_dependencies()
    assert dep.split()[0] in ("psycopg2", "psycopg2-binary")
    inst.instrument()  # with the dependency check: must find it
    try:
        assert inst.is_instrumented_by_opentelemetry
    finally:
        inst.uninstrument()


def test_the_same_bad_value_is_reported_once(capsys):
    config.reset()
    for _ in range(3):
        config.warn("OTEL_TRACES_EXPORTER", "nosuch", "no exporter for it", "no such exporter installed")
    assert len(config.WARNINGS) == 1
    assert capsys.readouterr().err.count("OTEL_TRACES_EXPORTER='nosuch'") == 1
    config.reset()


def test_config_module_rewrites_the_readme_table_with_write(tmp_path):
    import subprocess

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    head, rest = readme.split("<!-- variables:start -->", 1)
    tail = rest.split("<!-- variables:end -->", 1)[1]
    stale = tmp_path / "README.md"
    old_table = "<!-- variables:start -->\n| old | table |\n<!-- variables:end -->"
    stale.write_text(head + old_table + tail, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "trace_run.core.config", "--write", str(stale)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert stale.read_text(encoding="utf-8") == readme  # the table regenerated, nothing else touched
    printed = subprocess.run([sys.executable, "-m", "trace_run.core.config"], capture_output=True, text=True,
                             timeout=60)
    assert printed.stdout == config.markdown_table() + "\n"


def test_readme_links_the_checkout_sample_near_the_top():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    top = readme.split("\n## How it works", 1)[0]
    assert "](sample_apps/checkout/README.md)" in top
    assert os.path.isfile(os.path.join(ROOT, "sample_apps", "checkout", "README.md"))


def test_runtime_context_is_the_apis_context_a_layer_shorter(caplog):
    """attach/detach/get_current act on the very context the API's functions see; a token that cannot
    be reset (used twice) is the API's case: logged, never raised into the program."""
    import contextvars
    import logging

    from opentelemetry import context as context_api
    from trace_run.core import runtime_context

    assert runtime_context.attach == context_api._RUNTIME_CONTEXT._current_context.set
    before = context_api.get_current()
    ctx = context_api.set_value("k", "v")
    token = runtime_context.attach(ctx)
    assert context_api.get_value("k") == "v" and runtime_context.get_current() is context_api.get_current() is ctx
    runtime_context.detach(token)
    assert context_api.get_current() is before and runtime_context.get_current() is before
    token = context_api.attach(ctx)  # the API's token, our detach
    runtime_context.detach(token)
    assert context_api.get_current() is before
    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        runtime_context.detach(token)  # used twice
        other = contextvars.copy_context().run(lambda: runtime_context.attach(ctx))
        runtime_context.detach(other)  # made in another context
    assert [r.getMessage() for r in caplog.records] == ["Failed to detach context"] * 2
    assert context_api.get_current() is before


def test_runtime_context_reads_and_sets_the_span_as_the_api_does():
    """current_span/span_in answer as trace.get_current_span for what a context may hold (nothing, a
    span, a non-span, a proxy around either); with_span makes the context set_span_in_context makes."""
    import wrapt
    from opentelemetry import context as context_api
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from trace_run.core import runtime_context

    span = TracerProvider().get_tracer("t").start_span("s")
    held = [None, span, "not a span", 42, wrapt.ObjectProxy(span), wrapt.ObjectProxy("not a span"),
            trace.NonRecordingSpan(span.get_span_context())]
    for _ in range(2):  # first through isinstance, then through the remembered classes
        for value in held:
            ctx = context_api.set_value(trace._SPAN_KEY, value)
            assert runtime_context.span_in(ctx) is trace.get_current_span(ctx), value
            token = context_api.attach(ctx)
            try:
                assert runtime_context.current_span() is trace.get_current_span(), value
            finally:
                context_api.detach(token)
    assert wrapt.ObjectProxy not in runtime_context.SPAN_TYPES  # a proxy's class says nothing of the next one
    base = context_api.set_value("k", "v")
    for parent in (base, None):
        made, expected = runtime_context.with_span(span, parent), trace.set_span_in_context(span, parent)
        assert type(made) is type(expected) and made == expected and made is not parent
    token = context_api.attach(base)
    try:
        assert runtime_context.with_span(span) == trace.set_span_in_context(span) == {**base, trace._SPAN_KEY: span}
    finally:
        context_api.detach(token)
    span.end()


def test_unsampled_in_tells_a_trace_that_is_not_sampled_as_the_span_contexts_properties_do():
    """unsampled_in(ctx) is `ctx's span context is valid and not sampled`, for tuple SpanContexts, a
    subclass read through its properties, no span, an invalid one and a non-span; with_span with a key
    sets both in one copy, as set_span_in_context then set_value would."""
    from opentelemetry import context as context_api
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    from trace_run.core import runtime_context

    class Own(SpanContext):
        pass

    def expected(ctx) -> bool:
        sc = trace.get_current_span(ctx).get_span_context()
        return sc.is_valid and not sc.trace_flags.sampled

    contexts = [context_api.Context(), context_api.set_value(trace._SPAN_KEY, "not a span"),
                trace.set_span_in_context(trace.INVALID_SPAN)]
    for kind in (SpanContext, Own):
        for flags in (0, 1, 3, 2):
            for remote in (True, False):
                span = NonRecordingSpan(kind(7, 9, remote, TraceFlags(flags)))
                contexts.append(trace.set_span_in_context(span))
    answers = [runtime_context.unsampled_in(ctx) for ctx in contexts]
    assert answers == [expected(ctx) for ctx in contexts]
    assert answers.count(True) == 8  # flags 0 and 2 (random bit only), either kind, either remote
    span = NonRecordingSpan(SpanContext(7, 9, False, TraceFlags(1)))
    both = runtime_context.with_span(span, contexts[0], "k", True)
    assert both == context_api.set_value("k", True, trace.set_span_in_context(span, contexts[0]))
    assert contexts[0] == {}  # a copy: the context given is unchanged


def test_span_classes_whose_context_is_read_as_their_field_are_only_those_returning_it():
    """unsampled_in reads `_context` only of classes whose get_span_context is exactly `return self._context`;
    a class computing its context otherwise is asked, and answered as the API answers."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    from trace_run.agent import fastspan
    from trace_run.core import runtime_context

    class Elsewhere(NonRecordingSpan):  # its context is not its field
        def get_span_context(self):
            return SpanContext(7, 9, False, TraceFlags(0))

    class Same(NonRecordingSpan):
        def get_span_context(self):
            return self._context

    assert {NonRecordingSpan, fastspan.Span} <= runtime_context.CONTEXT_FIELD_TYPES
    assert runtime_context.read_context_field(Same) and not runtime_context.read_context_field(Elsewhere)
    assert not runtime_context.read_context_field(int)  # not a Span at all
    sampled = SpanContext(7, 9, False, TraceFlags(1))
    for span, unsampled in ((Elsewhere(sampled), True), (Same(sampled), False), (NonRecordingSpan(sampled), False)):
        assert runtime_context.unsampled_in(trace.set_span_in_context(span)) is unsampled
    runtime_context.CONTEXT_FIELD_TYPES.discard(Same)
