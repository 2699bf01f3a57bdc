"""sqlite3 in process: spans per call shape, isinstance kept, errors unchanged, toggles, uninstrument."""

from __future__ import annotations

import sqlite3
import sys
import warnings

import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span
from trace_run.core import config
from trace_run.instrumentors.sqlite3 import Sqlite3Instrumentor


@pytest.fixture
def traced(instrumented):
    provider, exporter = instrumented(Sqlite3Instrumentor)
    return provider.get_tracer("test"), exporter


def _spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]


def test_every_call_shape_makes_one_client_span_under_the_current_span(traced):
    tracer, exporter = traced
    with tracer.start_as_current_span("request") as parent:
        conn = sqlite3.connect(":memory:")
        assert isinstance(conn, sqlite3.Connection) and type(conn).__name__ == "Connection"
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
        cur = conn.cursor()
        assert isinstance(cur, sqlite3.Cursor)
        cur.execute("SELECT name FROM items WHERE id = 2")
        assert cur.fetchall() == [("b",)]
        cur.executemany("UPDATE items SET name = ? WHERE id = ?", [("x", 1)])
        cur.executescript("DELETE FROM items WHERE id = 3; SELECT 1;")
        conn.executescript("SELECT 2")
        conn.close()
    spans = _spans(exporter)
    assert [s.name for s in spans] == ["CREATE items", "INSERT items", "SELECT items", "UPDATE items",
                                       "sqlite", "SELECT"]
    for s in spans:
        assert s.parent.span_id == parent.get_span_context().span_id
        assert s.context.trace_id == parent.get_span_context().trace_id
        assert s.attributes["db.system.name"] == "sqlite"
        assert s.attributes["db.namespace"] == ":memory:"
        assert "server.address" not in s.attributes
    assert spans[1].attributes["db.operation.batch.size"] == 3
    assert "db.operation.batch.size" not in spans[3].attributes  # a batch of one is no batch
    assert spans[2].attributes["db.query.text"] == "SELECT name FROM items WHERE id = ?"
    assert spans[2].attributes["db.operation.name"] == "SELECT"
    assert spans[2].attributes["db.collection.name"] == "items"


def test_custom_factories_keep_working(traced, tmp_path):
    tracer, exporter = traced

    class MyCursor(sqlite3.Cursor):
        mine = True

    class MyConnection(sqlite3.Connection):
        def cursor(self, factory=MyCursor):
            return super().cursor(factory)

    path = str(tmp_path / "db.sqlite")
    conn = sqlite3.connect(path, 5.0, 0, None, True, MyConnection)
    assert isinstance(conn, MyConnection)
    cur = conn.cursor()
    assert isinstance(cur, MyCursor) and cur.mine
    cur.execute("SELECT 1")
    conn2 = sqlite3.connect(database=path, factory=MyConnection)
    conn2.execute("SELECT 2")
    row_conn = sqlite3.dbapi2.connect(path)
    row_conn.row_factory = sqlite3.Row
    assert row_conn.execute("SELECT 3 AS n").fetchone()["n"] == 3
    spans = _spans(exporter)
    assert [s.name for s in spans] == ["SELECT"] * 3
    assert spans[0].attributes["db.namespace"] == path


def test_errors_reach_the_program_unchanged(traced):
    tracer, exporter = traced
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE u (id integer UNIQUE)")
    conn.execute("INSERT INTO u VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as info:
        conn.execute("INSERT INTO u VALUES (1)")
    assert type(info.value) is sqlite3.IntegrityError
    coded = sys.version_info >= (3, 11)  # sqlite_errorcode and sqlite_errorname are 3.11's
    assert getattr(info.value, "sqlite_errorname", None) == ("SQLITE_CONSTRAINT_UNIQUE" if coded else None)
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        conn.cursor().execute("SELEC 1")
    failed = [s for s in _spans(exporter) if s.status.status_code.name == "ERROR"]
    assert [(s.name, s.attributes["error.type"], s.attributes.get("db.response.status_code")) for s in failed] == [
        ("INSERT u", "sqlite3.IntegrityError", "2067" if coded else None),
        ("sqlite", "sqlite3.OperationalError", "1" if coded else None)]
    assert all("UNIQUE" not in (s.status.description or "") for s in failed)  # messages may hold data


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before 3.11 CPython itself crashes (SIGSEGV) on a call to a "
                    "connection whose second __init__ failed, bare: the case exists from 3.11 on")
def test_a_connection_whose_second_init_failed_fails_as_bare_and_its_span_says_so(traced, tmp_path):
    """CPython's own test_connection_bad_reinit: `__init__` called again on an open connection, with a
    database that cannot be opened, leaves a connection every call on which raises ProgrammingError."""
    tracer, exporter = traced
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (t)")
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        conn.__init__(str(tmp_path))
    with pytest.raises(sqlite3.ProgrammingError, match="Base Connection.__init__ not called"):
        conn.executemany("INSERT INTO t VALUES (?)", ((v,) for v in range(3)))
    last = _spans(exporter)[-1]
    assert (last.name, last.status.status_code.name, last.attributes["error.type"]) == (
        "INSERT t", "ERROR", "sqlite3.ProgrammingError")
    assert last.attributes["db.system.name"] == "sqlite" and "db.namespace" not in last.attributes


def test_no_frame_of_trace_runs_is_under_the_drivers_c_methods(traced):
    """While sqlite3's C execute runs, the innermost Python frame is the caller's, as bare: a warning the
    driver raises from C names the program's line (CPython 3.12+'s deprecations of named placeholders
    with a sequence and of the default adapters; test_sqlite3 asserts the warning's filename). The trace
    callback, called from inside the C method, sees which frame that is."""
    from trace_run.core import runtime_context

    tracer, exporter = traced
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a)")
    seen = []
    conn.set_trace_callback(lambda statement: seen.append(sys._getframe(1).f_code.co_name))
    here = sys._getframe().f_code.co_name
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    conn.execute("SELECT 2")
    assert len(_spans(exporter)) == 4  # CREATE, and the three calls here, each traced
    # the native call path leaves no frame of ours; without it the Python wrapper is one
    expected = here if runtime_context.NATIVE is not None else "call_in_span"
    assert set(seen) == {expected}, seen
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cur.execute("SELECT :a", (1,))  # 3.12+: a DeprecationWarning from C, named placeholders with a sequence
    if sys.version_info >= (3, 12) and runtime_context.NATIVE is not None:
        assert [(w.category, w.filename) for w in caught] == [(DeprecationWarning, __file__)]


def test_sqlcommenter_appends_traceparent(traced, monkeypatch):
    tracer, exporter = traced
    monkeypatch.setenv("OTEL_TRACE_RUN_SQLCOMMENTER", "true")
    config.reset()
    conn = sqlite3.connect(":memory:")
    seen = []
    conn.set_trace_callback(seen.append)
    conn.execute("SELECT 1;")
    conn.cursor().execute("SELECT ?", (5,))
    spans = _spans(exporter)
    ctx = [s.context for s in spans]
    assert seen == ["SELECT 1 /*traceparent='00-%032x-%016x-01'*/;" % (ctx[0].trace_id, ctx[0].span_id),
                    "SELECT 5 /*traceparent='00-%032x-%016x-01'*/" % (ctx[1].trace_id, ctx[1].span_id)]
    assert [s.attributes["db.query.text"] for s in spans] == ["SELECT ?;", "SELECT ?"]


def test_sanitize_can_be_turned_off(traced, monkeypatch):
    tracer, exporter = traced
    monkeypatch.setenv("OTEL_TRACE_RUN_DB_SANITIZE", "false")
    config.reset()
    sqlite3.connect(":memory:").execute("SELECT 'raw'")
    (span,) = _spans(exporter)
    assert span.attributes["db.query.text"] == "SELECT 'raw'"


def test_suppressed_and_unsampled_calls_make_no_span(traced):
    tracer, exporter = traced
    conn = sqlite3.connect(":memory:")
    with suppress_instrumentation():
        conn.execute("SELECT 1")
    unsampled = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0)))
    with use_span(unsampled):
        conn.execute("SELECT 2")
    assert _spans(exporter) == []


def test_a_query_after_its_parent_ended_is_still_its_child(traced):
    """Work that outlives its request (a background task run after the response) stays in the trace."""
    tracer, exporter = traced
    conn = sqlite3.connect(":memory:")
    request = tracer.start_span("request")
    request.end()
    with use_span(request):
        conn.execute("SELECT 1")
    (span,) = _spans(exporter)
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.context.trace_id == request.get_span_context().trace_id


def test_a_connection_made_while_traced_goes_quiet_after_uninstrument(memory):
    provider, exporter = memory
    instrumentor = Sqlite3Instrumentor()
    instrumentor.instrument(tracer_provider=provider)
    conn = sqlite3.connect(":memory:")
    instrumentor.uninstrument()
    assert type(sqlite3.connect(":memory:")) is sqlite3.Connection
    conn.execute("SELECT 1")
    assert exporter.get_finished_spans() == ()
