"""TraceRunInstrumentor keeps BaseInstrumentor's interface without importing it.

A program that imports `FlaskInstrumentor` and calls `instrument()` itself keeps working (with the
dependency check, as upstream), counts it as a `BaseInstrumentor` whenever it imports that class
(before or after ours), and gets upstream's answers on the edges: one instance per class, a warning
for instrumenting twice or uninstrumenting what is not instrumented, a dependency conflict logged
(or raised when asked). The suppression checks agree with opentelemetry-instrumentation's.
"""

from __future__ import annotations

import json
import logging
import textwrap

import pytest
from support import clean_env, run_traced, write_script

UPSTREAM_LOGGER = "opentelemetry.instrumentation.instrumentor"

FLASK_BY_HAND = """
import json, sys
{before}
from trace_run.instrumentors.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
import flask

app = flask.Flask("byhand")

@app.route("/items/<int:n>")
def item(n):
    return "item %d" % n

original = flask.Flask.__dict__["wsgi_app"]
loaded_early = "opentelemetry.instrumentation.instrumentor" in sys.modules
FlaskInstrumentor().instrument(tracer_provider=provider)  # no skip_dep_check: the check runs
assert FlaskInstrumentor().is_instrumented_by_opentelemetry
body = app.test_client().get("/items/7").get_data(as_text=True)
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
out = {{"body": body, "spans": [(s.name, s.kind.name) for s in exporter.get_finished_spans()],
       "isinstance": isinstance(FlaskInstrumentor(), BaseInstrumentor),
       "issubclass": issubclass(FlaskInstrumentor, BaseInstrumentor),
       "same": FlaskInstrumentor() is FlaskInstrumentor(), "loaded_early": loaded_early}}
FlaskInstrumentor().uninstrument()
out["restored"] = flask.Flask.__dict__["wsgi_app"] is original
print(json.dumps(out))
"""


@pytest.mark.parametrize("before", ["", "from opentelemetry.instrumentation.instrumentor import BaseInstrumentor"])
def test_a_program_instruments_flask_by_hand(tmp_path, before):
    path = write_script(tmp_path, FLASK_BY_HAND.format(before=before))
    proc = run_traced(["python", path], trace_run=False, env=clean_env(), check=True)
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["body"] == "item 7"
    assert seen["spans"] == [["GET /items/<int:n>", "SERVER"]]
    assert seen["isinstance"] is True and seen["issubclass"] is True and seen["same"] is True
    assert seen["loaded_early"] is bool(before)
    assert seen["restored"] is True
    assert proc.stderr == ""


def test_a_program_instruments_flask_by_hand_under_the_agent(tmp_path):
    """The agent applied it already: the program's instrument() neither warns nor wraps again."""
    path = write_script(tmp_path, FLASK_BY_HAND.format(before=""))
    proc = run_traced(["python", path], env=clean_env(OTEL_TRACES_EXPORTER="none"), check=True)
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["spans"] == [["GET /items/<int:n>", "SERVER"]] and seen["isinstance"] is True
    assert "already instrumented" not in proc.stderr


@pytest.fixture
def fresh_class():
    """A throwaway instrumentor class (its own singleton), with a library it claims."""
    from trace_run.instrumentors.base import TraceRunInstrumentor

    made = []

    def make(dependencies=()):
        class Throwaway(TraceRunInstrumentor):
            library = ""
            patched = 0

            def instrumentation_dependencies(self):
                return dependencies

            def _patch(self, **kwargs):
                type(self).patched += 1

        made.append(Throwaway)
        return Throwaway

    yield make


def test_twice_warns_as_upstream_and_does_nothing(fresh_class, caplog):
    cls = fresh_class()
    inst = cls()
    assert cls() is inst
    with caplog.at_level(logging.WARNING, logger=UPSTREAM_LOGGER):
        assert inst.uninstrument() is None
        inst.instrument()
        inst.instrument()
        inst.uninstrument()
    assert cls.patched == 1 and not inst.is_instrumented_by_opentelemetry
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (UPSTREAM_LOGGER, "WARNING", "Attempting to uninstrument while already uninstrumented"),
        (UPSTREAM_LOGGER, "WARNING", "Attempting to instrument while already instrumented"),
    ]


def test_a_dependency_conflict_is_logged_or_raised_as_upstream(fresh_class, caplog):
    from opentelemetry.instrumentation.dependencies import DependencyConflictError

    cls = fresh_class(("flask < 0.1",))
    inst = cls()
    with caplog.at_level(logging.ERROR, logger=UPSTREAM_LOGGER):
        assert inst.instrument() is None
    assert cls.patched == 0 and not inst.is_instrumented_by_opentelemetry
    (record,) = caplog.records
    assert record.levelname == "ERROR" and "flask < 0.1" in record.getMessage()
    with pytest.raises(DependencyConflictError):
        inst.instrument(raise_exception_on_conflict=True)
    inst.instrument(skip_dep_check=True)
    assert cls.patched == 1 and inst.is_instrumented_by_opentelemetry
    inst.uninstrument()


def test_a_missing_dependency_is_a_conflict_too(fresh_class, caplog):
    cls = fresh_class(("no-such-distribution-trace-run >= 1",))
    with caplog.at_level(logging.ERROR, logger=UPSTREAM_LOGGER):
        assert cls().instrument() is None
    assert cls.patched == 0 and "no-such-distribution-trace-run" in caplog.records[0].getMessage()


def test_suppression_checks_agree_with_opentelemetry_instrumentation():
    from opentelemetry import context
    from opentelemetry.instrumentation import utils
    from trace_run.instrumentors import base

    def both():
        return ((base.is_instrumentation_enabled(), utils.is_instrumentation_enabled()),
                (base.is_http_instrumentation_enabled(), utils.is_http_instrumentation_enabled()))

    assert both() == ((True, True), (True, True))
    with utils.suppress_instrumentation():
        assert both() == ((False, False), (False, False))
    with utils.suppress_http_instrumentation():
        assert both() == ((True, True), (False, False))
    token = context.attach(context.set_value("suppress_instrumentation", True))  # the old plain key
    try:
        assert both() == ((False, False), (False, False))
    finally:
        context.detach(token)


def test_every_builtin_instrumentor_is_a_base_instrumentor_by_isinstance():
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
    from trace_run.instrumentors import registry

    for entry in registry.BUILTIN.values():
        cls = registry.load(entry)
        assert isinstance(cls(), BaseInstrumentor), entry.name


def test_dependency_check_imports_packaging_only_when_a_program_asks(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        from trace_run.instrumentors.requests import RequestsInstrumentor
        RequestsInstrumentor().instrument(skip_dep_check=True)
        skipped = "packaging" in sys.modules
        RequestsInstrumentor().uninstrument()
        RequestsInstrumentor().instrument()
        applied = RequestsInstrumentor().is_instrumented_by_opentelemetry
        print(json.dumps([skipped, "packaging" in sys.modules, applied]))
    """)
    proc = run_traced(["python", "-c", code], trace_run=False, check=True)
    assert json.loads(proc.stdout) == [False, True, True]


def test_database_error_modules_are_told_by_name_as_the_regex_told_them():
    """errors.py compares module names instead of compiling a regex at import: the same answers."""
    import re

    from trace_run.instrumentors import errors

    old = re.compile(r"(?:psycopg|psycopg2|psycopg_pool|sqlite3|_sqlite3|redis|asyncpg|aiopg|pg8000|pymysql|MySQLdb"
                     r"|aiomysql|mysql\.connector|pymssql|pyodbc|oracledb|cx_Oracle|aiosqlite|sqlalchemy|django\.db)"
                     r"(?:\.|\Z)")
    names = ["psycopg", "psycopg.errors", "psycopgx", "psycopg2.extensions", "redis.exceptions", "redisx", "myredis",
             "mysql", "mysql.connector.errors", "mysql.other", "django", "django.db.utils", "django.dbx",
             "sqlalchemy.exc", "_sqlite3", "sqlite3.dbapi2", "builtins", "", "cx_Oracle", "cx_oracle"]
    assert [errors._is_db_module(n) for n in names] == [bool(old.match(n)) for n in names]
    assert sum(errors._is_db_module(n) for n in names) == 10
