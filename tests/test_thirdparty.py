"""Upstream (third-party) instrumentors under trace-run, in a real virtualenv.

The virtualenv sees the test environment's packages (trace-run, the SDK,
opentelemetry-instrumentation, FastAPI, Starlette) through a .pth file and has
its own on top: a real SQLAlchemy 2.1.9 with the real upstream SQLAlchemy
instrumentor, whose declared range stops below 2.1; the real upstream ASGI and
FastAPI instrumentors; a tiny instrumentor written here that logs through
`logging` when it is applied and on every call, and three that misbehave on
instrument(). Beside it, FastAPI 0.141.1 (before FastAPI traced itself) in a
folder put on PYTHONPATH by the tests that want it. Made once for the module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest
from support import TRACE_RUN, clean_env
from support.asgi_server import serve, servers
from support.wheels import write_wheel

GADGETS_INSTRUMENTOR = '''
import logging

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

_LOG = logging.getLogger("opentelemetry.instrumentation.tr_test_gadgets")


class GadgetsInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self):
        return ("tr-test-gadgets >= 1",)

    def _instrument(self, **kwargs):
        import tr_test_gadgets

        _LOG.warning("gadgets instrumented")
        original = tr_test_gadgets.spin

        def spin(n):
            _LOG.warning("spin called with %d", n)
            return original(n)

        tr_test_gadgets.spin = spin

    def _uninstrument(self, **kwargs):
        pass
'''

BROKEN_INSTRUMENTORS = '''
import sys

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor


class RaisingInstrumentor(BaseInstrumentor):
    """Patches half of its library, then raises."""

    def instrumentation_dependencies(self):
        return ()

    def _instrument(self, **kwargs):
        import tr_test_widgets

        self._original = tr_test_widgets.spin
        tr_test_widgets.spin = lambda n: -1
        raise RuntimeError("widgets instrumentation is broken")

    def _uninstrument(self, **kwargs):
        import tr_test_widgets

        tr_test_widgets.spin = self._original


class ExitingInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self):
        return ()

    def _instrument(self, **kwargs):
        sys.exit(3)

    def _uninstrument(self, **kwargs):
        raise ValueError("nothing to undo")


class BadDependenciesInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self):
        raise LookupError("no dependencies today")

    def _instrument(self, **kwargs):
        raise AssertionError("never called")

    def _uninstrument(self, **kwargs):
        pass
'''

PROGRAM = '''
import logging
import tr_test_gadgets
assert tr_test_gadgets.spin(1) == 2 and tr_test_gadgets.spin(2) == 3
import sqlalchemy
logging.getLogger("app").warning("the program's own warning")
print("done", sqlalchemy.__version__)
'''


def _otel_instrumentation_version() -> str:
    from importlib.metadata import version

    return version("opentelemetry-instrumentation")


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    root = tmp_path_factory.mktemp("thirdparty")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    py = str(root / "venv" / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "zz_test_environment.pth"), "w") as f:
        # after its own site-packages; addsitedir so that the editable install's .pth files count too
        f.write("import site; site.addsitedir(%r)\n" % sysconfig.get_paths()["purelib"])
    wheels = str(root / "wheels")
    os.mkdir(wheels)
    write_wheel(wheels, "tr-test-gadgets", "1.0", {"tr_test_gadgets/__init__.py": "def spin(n):\n    return n + 1\n"})
    write_wheel(wheels, "tr-test-widgets", "1.0", {
        "tr_test_widgets/__init__.py": "def spin(n):\n    return n + 1\n",
        "tr_test_levers/__init__.py": "def pull():\n    return 'pulled'\n",
        "tr_test_cogs/__init__.py": "def turn():\n    return 'turned'\n"})
    write_wheel(wheels, "tr-test-broken-instrumentation", "0.1",
                {"tr_test_broken_instrumentation/__init__.py": BROKEN_INSTRUMENTORS}, "",
                "[opentelemetry_instrumentor]\n"
                "tr_test_widgets = tr_test_broken_instrumentation:RaisingInstrumentor\n"
                "tr_test_levers = tr_test_broken_instrumentation:ExitingInstrumentor\n"
                "tr_test_cogs = tr_test_broken_instrumentation:BadDependenciesInstrumentor\n")
    write_wheel(wheels, "tr-test-gadgets-instrumentation", "0.1",
                {"tr_test_gadgets_instrumentation/__init__.py": GADGETS_INSTRUMENTOR},
                'Provides-Extra: instruments\nRequires-Dist: tr-test-gadgets>=1; extra == "instruments"\n',
                "[opentelemetry_instrumentor]\ntr_test_gadgets = tr_test_gadgets_instrumentation:GadgetsInstrumentor\n")
    proc = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--find-links", wheels, "sqlalchemy==2.1.9",
         "opentelemetry-instrumentation-sqlalchemy==" + _otel_instrumentation_version(), "tr-test-gadgets",
         "tr-test-gadgets-instrumentation", "tr-test-widgets", "tr-test-broken-instrumentation",
         "asgiref"] + ["opentelemetry-%s==%s" % (name, _otel_instrumentation_version())
                       for name in ("instrumentation-asgi", "instrumentation-fastapi", "util-http")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root / "fastapi0141"),
                           "fastapi==" + FASTAPI_BEFORE_TELEMETRY], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return py


FASTAPI_BEFORE_TELEMETRY = "0.141.1"  # the last release before fastapi.telemetry (0.142.0)


def old_fastapi(venv_python: str) -> str:
    """The folder holding FastAPI 0.141.1, for PYTHONPATH."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(venv_python))), "fastapi0141")


def test_upstream_messages_are_trace_run_lines_and_unsupported_versions_are_named(venv_python, tmp_path):
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    env = clean_env(OTEL_TRACES_EXPORTER="none", XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([TRACE_RUN, venv_python, str(script)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout == "done 2.1.9\n", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "the program's own warning" in lines  # the program's logging is left as it was
    ours = [line for line in lines if line != "the program's own warning"]
    assert all(line.startswith("trace-run: ") for line in ours), ours  # nothing upstream reaches stderr bare
    (sqlalchemy,) = [line for line in ours if "sqlalchemy" in line.lower()]
    assert sqlalchemy.startswith("trace-run: warning: third-party instrumentor sqlalchemy not applied: it instruments ")
    assert "< 2.1.0" in sqlalchemy and "sqlalchemy 2.1.9 is installed" in sqlalchemy, sqlalchemy
    gadgets = [line for line in ours if "tr_test_gadgets" in line]
    assert gadgets == ["trace-run: warning: opentelemetry.instrumentation.tr_test_gadgets: gadgets instrumented",
                       "trace-run: warning: opentelemetry.instrumentation.tr_test_gadgets: spin called with 1"], ours


BROKEN_PROGRAM = '''
import sys

import tr_test_gadgets
import tr_test_widgets
import tr_test_levers
import tr_test_cogs

assert tr_test_widgets.spin(1) == 2, tr_test_widgets.spin(1)  # the half it patched is undone
assert tr_test_levers.pull() == "pulled" and tr_test_cogs.turn() == "turned"
assert tr_test_gadgets.spin(1) == 2  # the instrumentor that works is applied
del sys.modules["tr_test_widgets"]
import tr_test_widgets  # noqa: F811  imported again: not tried again
print("done")
'''


def test_an_upstream_instrumentor_that_fails_is_reported_once_and_left_off(venv_python, tmp_path):
    script = tmp_path / "app.py"
    script.write_text(BROKEN_PROGRAM)
    env = clean_env(OTEL_TRACES_EXPORTER="none", XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([TRACE_RUN, venv_python, str(script)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert all(line.startswith("trace-run: ") for line in lines), lines
    broken = sorted(line for line in lines if "not applied" in line)
    assert broken == [
        "trace-run: warning: third-party instrumentor tr_test_cogs not applied (LookupError: no dependencies today)",
        "trace-run: warning: third-party instrumentor tr_test_levers not applied (SystemExit: 3); undoing it failed "
        "too (ValueError: nothing to undo), what it patched may stay",
        "trace-run: warning: third-party instrumentor tr_test_widgets not applied "
        "(RuntimeError: widgets instrumentation is broken)",
    ], lines
    assert "trace-run: warning: opentelemetry.instrumentation.tr_test_gadgets: gadgets instrumented" in lines


UPSTREAM_APPS = '''
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

by_program = FastAPI()  # the program applies the upstream FastAPI instrumentor itself
left_alone = FastAPI()  # the upstream FastAPI instrumentor is installed; trace-run does not apply it
for one in (by_program, left_alone):
    one.get("/items/{item_id}")(lambda item_id: {"item": item_id})
FastAPIInstrumentor.instrument_app(by_program)
# what the upstream Starlette instrumentor does to every app: its ASGI middleware in the stack
starlette_app = Starlette(routes=[Route("/items/{item_id}", lambda request: PlainTextResponse("s"))],
                          middleware=[Middleware(OpenTelemetryMiddleware)])
# the upstream ASGI middleware wrapped around an app by hand, as its documentation shows
wrapped = OpenTelemetryMiddleware(Starlette(routes=[Route("/items/{item_id}", lambda request: PlainTextResponse("w"))]))
APPS = {"/program": by_program, "/alone": left_alone, "/starlette": starlette_app, "/wrapped": wrapped}


async def app(scope, receive, send):
    for prefix, one in APPS.items():
        if scope["type"] == "http" and scope["path"].startswith(prefix):
            return await one(dict(scope, path=scope["path"][len(prefix):]), receive, send)
    if scope["type"] == "lifespan":
        return await left_alone(scope, receive, send)
'''


def test_upstream_asgi_and_fastapi_instrumentors_make_the_one_span(venv_python, tmp_path):
    """Applied by the program, the upstream instrumentor's span is the request's only one (FastAPI turns its
    own off, trace-run steps aside); installed but not applied by the program, trace-run leaves it unused and
    FastAPI's own span is the one."""
    answers, spans, err = serve(tmp_path, UPSTREAM_APPS, [("/program/items/1", [("traceparent", TRACEPARENT)]),
                                                          ("/alone/items/2", []), ("/starlette/items/3", []),
                                                          ("/wrapped/items/4", [])],
                                python=venv_python, expect=4, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert answers == [(200, '{"item":"1"}'), (200, '{"item":"2"}'), (200, "s"), (200, "w")], err
    by_path = {}
    for span in servers(spans):
        by_path.setdefault(span.attributes.get("url.path") or span.attributes.get("http.target"), []).append(span)
    assert sorted(by_path) == ["/items/1", "/items/2", "/items/3", "/items/4"], servers(spans)
    (program,), (alone,), (starlette,) = by_path["/items/1"], by_path["/items/2"], by_path["/items/3"]
    (wrapped,) = by_path["/items/4"]
    assert wrapped.scope == "opentelemetry.instrumentation.asgi", wrapped.scope
    assert program.scope == "opentelemetry.instrumentation.fastapi", program.scope
    assert program.trace_id == "%032x" % 7 and program.parent_id == "%016x" % 9
    assert alone.scope == "fastapi" and alone.name == "GET /items/{item_id}"
    assert starlette.scope == "opentelemetry.instrumentation.asgi", starlette.scope


OLD_FASTAPI_APP = '''
import fastapi
from fastapi import FastAPI

assert fastapi.__version__ == "%s", fastapi.__version__
app = FastAPI()


@app.get("/items/{item_id}")
def item(item_id: int):
    return {"item": item_id}
''' % FASTAPI_BEFORE_TELEMETRY


def test_fastapi_before_its_telemetry_gets_trace_runs_spans(venv_python, tmp_path):
    """FastAPI 0.141.1 makes no span of its own: trace-run's Starlette span is the one, and the upstream
    FastAPI instrumentor installed beside it is not applied."""
    answers, spans, err = serve(tmp_path, OLD_FASTAPI_APP, [("/items/5?api_key=k", [("traceparent", TRACEPARENT)])],
                                python=venv_python, expect=1, PYTHONPATH=old_fastapi(venv_python),
                                XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert answers == [(200, '{"item":5}')], err
    (span,) = servers(spans)
    assert span.scope == "trace_run.instrumentors.starlette" and span.name == "GET /items/{item_id}"
    assert span.trace_id == "%032x" % 7 and span.parent_id == "%016x" % 9
    assert span.attributes["http.route"] == "/items/{item_id}" and span.attributes["url.query"] == "api_key=REDACTED"
    assert len(spans) == 1  # nothing from the upstream instrumentor (no `http send` / `http receive` spans)


TRACEPARENT = "00-%032x-%016x-01" % (7, 9)
