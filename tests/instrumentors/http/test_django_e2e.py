"""Django under trace-run with real servers and real PostgreSQL (tests/apps/django_site).

gunicorn's sync worker and `manage.py runserver` serve it through WSGIHandler, uvicorn through
ASGIHandler; the same requests give the same spans: one SERVER span named by the route, continuing
the incoming `traceparent`, the ORM's queries its children (also those made while a streamed body
is sent), a 500 from an unhandled exception marked ERROR. Then the program-configured cases:
`settings.configure()` with the upstream instrumentor installed, and a program that applies the
upstream instrumentor itself (trace-run steps aside: one SERVER span, upstream's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from support import HERE, PG_DSN, TRACE_RUN, clean_env, run_traced, write_script
from support.otlp_receiver import Receiver
from test_http_e2e import free_port, get, wait_port

SITE = os.path.join(HERE, "apps", "django_site")
BIN = os.path.dirname(sys.executable)
PARENT_TRACE, PARENT_SPAN = "%032x" % 7, "%016x" % 9
PARENT = "00-%s-%s-01" % (PARENT_TRACE, PARENT_SPAN)
SCOPE = "trace_run.instrumentors.django"
# this test process's own table (parallel workers keep apart), named in letters: a test looks for
# the digit of the queried id in the query text
TABLE = "trace_run_django_items_" + "".join(chr(ord("a") + int(d)) for d in str(os.getpid()))
QUERY = 'SELECT "%s"' % TABLE  # the ORM quotes the table name


@pytest.fixture(scope="module")
def items_table():
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS %s" % TABLE)
        conn.execute("CREATE TABLE %s (id serial PRIMARY KEY, name text)" % TABLE)
        conn.execute("INSERT INTO %s (id, name) VALUES (3, 'three')" % TABLE)
    yield
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS %s" % TABLE)


SERVERS = {
    "gunicorn-sync": [os.path.join(BIN, "gunicorn"), "-k", "sync", "-w", "1", "-b", "127.0.0.1:{port}",
                      "djsite.wsgi:application"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "djsite.asgi:application", "--port", "{port}"],
    "runserver": [sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:{port}"],
}


class Served:
    """A server of the site under trace-run, exporting to its own receiver."""

    def __init__(self, how: str, **env):
        self.rx = Receiver().start()
        self.port = free_port()
        cmd = [TRACE_RUN] + [c.replace("{port}", str(self.port)) for c in SERVERS[how]]
        env = clean_env(**self.rx.env(OTEL_SERVICE_NAME="django-" + how, TRACE_RUN_TEST_PG_DSN=PG_DSN,
                                      TRACE_RUN_TEST_DJANGO_TABLE=TABLE, **env))
        self.proc = subprocess.Popen(cmd, cwd=SITE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        wait_port(self.port, self.proc, timeout=30)

    def get(self, path: str, headers=()):
        return get("http://127.0.0.1:%d%s" % (self.port, path), headers=headers)

    def server_span(self, marker: str):
        """The one SERVER span whose url.query holds `marker`, and every span of its trace."""
        def found(spans):
            return [s for s in spans if s.kind == "SERVER" and marker in s.attributes.get("url.query", "")]

        spans = self.rx.wait_for(lambda spans: found(spans), timeout=20)
        spans = self.rx.wait_for(lambda spans: False, timeout=0.5)  # anything more (a duplicate) arrives too
        (server,) = found(spans)
        return server, [s for s in spans if s.trace_id == server.trace_id and s is not server]

    def stop(self) -> str:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        finally:
            err = self.proc.stderr.read()
            self.proc.stderr.close()
            self.rx.stop()
        assert "instrumentation error" not in err, err
        return err


@pytest.mark.parametrize("how", list(SERVERS))
def test_requests_spans_and_orm_children_under_real_servers(how, items_table):
    served = Served(how)
    try:
        status, body = served.get("/api/items/3/?mark=item", [("traceparent", PARENT)])
        assert status == 200 and body == "%s 1" % PARENT_TRACE  # the view ran inside the incoming trace
        span, children = served.server_span("mark=item")
        assert span.name == "GET api/items/<int:item_id>/" and span.scope == SCOPE
        assert span.trace_id == PARENT_TRACE and span.parent_id == PARENT_SPAN
        assert span.attributes["http.route"] == "api/items/<int:item_id>/"
        assert span.attributes["http.request.method"] == "GET" and span.attributes["url.path"] == "/api/items/3/"
        assert span.attributes["http.response.status_code"] == 200 and span.status == "UNSET"
        assert span.attributes["server.port"] == served.port and span.attributes["url.scheme"] == "http"
        (query,) = [c for c in children if c.name == QUERY]
        assert query.kind == "CLIENT" and query.parent_id == span.span_id
        assert query.attributes["db.system.name"] == "postgresql" and "3" not in query.attributes["db.query.text"]

        status, body = served.get("/boom/?mark=boom")
        assert status == 500
        span, children = served.server_span("mark=boom")
        assert span.name == "GET boom/" and span.status == "ERROR"
        assert span.attributes["http.response.status_code"] == 500 and span.attributes["error.type"] == "KeyError"
        assert [c.parent_id for c in children if c.name == QUERY] == [span.span_id]

        assert all(c.parent_id == span.span_id for c in children)  # the connection's set-up queries too

        assert served.get("/missing/?mark=missing")[0] == 404  # Http404 from the view: the client's fault
        span, _ = served.server_span("mark=missing")
        assert span.name == "GET missing/" and span.status == "UNSET" and "error.type" not in span.attributes

        assert served.get("/nowhere?mark=nowhere")[0] == 404  # nothing matched: the method alone
        span, _ = served.server_span("mark=nowhere")
        assert span.name == "GET" and "http.route" not in span.attributes

        stream_trace = "%032x" % 8  # a trace of its own
        parent = "00-%s-%s-01" % (stream_trace, PARENT_SPAN)
        status, body = served.get("/api/stream/?mark=stream", [("traceparent", parent)])
        assert status == 200 and body == "first 1 %s" % stream_trace
        span, children = served.server_span("mark=stream")
        assert span.name == "GET api/stream/" and span.trace_id == stream_trace
        (query,) = [c for c in children if c.name == QUERY]  # made while the body was being sent
        assert query.parent_id == span.span_id and query.end <= span.end  # the span covers the whole body
    finally:
        served.stop()
    # Nothing else: every span belongs to a request (runserver's start-up checks are chatter).
    roots = [s for s in served.rx.spans if s.parent_id is None]
    assert all(s.kind == "SERVER" for s in roots), roots


def test_runserver_start_up_checks_show_with_chatter_on(items_table):
    """runserver's system checks and migrations check query the database before serving; with
    OTEL_TRACE_RUN_CHATTER=true those queries are traced (and off, as above, they are not)."""
    served = Served("runserver", OTEL_TRACE_RUN_CHATTER="true")
    try:
        spans = served.rx.wait_for(lambda spans: any(s.kind == "CLIENT" for s in spans), timeout=20)
    finally:
        served.stop()
    checks = [s for s in spans if s.kind == "CLIENT"]
    assert checks and all(s.parent_id is None for s in checks)
    assert any("django_migrations" in s.attributes.get("db.query.text", "") or s.name.startswith("SELECT")
               for s in checks), checks


CONFIGURED = '''
import sys, threading, urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django
import django.core.handlers.wsgi, django.core.management.base  # the parts trace-run patches
from django.conf import settings

print("configured before the program:", settings.configured)
settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], MIDDLEWARE=MIDDLEWARE)  # "already configured"?
django.setup()
UPSTREAM

from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("users/<int:id>/", lambda request, id: HttpResponse("user %d" % id))]

from django.core.wsgi import get_wsgi_application


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
serving = threading.Thread(target=server.handle_request)
serving.start()
url = "http://127.0.0.1:%d/users/42/?mark=configured" % server.server_port
print(urllib.request.urlopen(url, timeout=10).read().decode())
serving.join()  # the server closes the response (ending its span) after the client has read it
'''


def _configured_program(tmp_path, middleware=(), upstream: bool = False) -> str:
    source = CONFIGURED.replace("MIDDLEWARE=MIDDLEWARE", "MIDDLEWARE=%r" % list(middleware))
    source = source.replace("UPSTREAM", "from opentelemetry.instrumentation.django import DjangoInstrumentor\n"
                            "DjangoInstrumentor().instrument()" if upstream else "")
    return write_script(tmp_path, source)


def _server_and_client(rx: Receiver) -> tuple:
    """The program's one SERVER span and the urllib CLIENT span that called it."""
    rx.wait_for(lambda spans: any(s.kind == "SERVER" for s in spans), timeout=15)
    spans = rx.wait_for(lambda spans: False, timeout=0.5)
    (server,) = [s for s in spans if s.kind == "SERVER"]
    (client,) = [s for s in spans if s.kind == "CLIENT"]
    return server, client


@pytest.mark.parametrize("middleware", [(), ("django.middleware.common.CommonMiddleware",)])
def test_settings_configure_by_the_program_with_the_upstream_instrumentor_installed(tmp_path, receiver, middleware):
    """opentelemetry-instrumentation-django is installed here: applied at `import django` it would call
    settings.configure() itself and the program's own call would fail ("Settings already configured").
    trace-run builds Django in and never applies it; the program runs as bare, with or without MIDDLEWARE."""
    script = _configured_program(tmp_path, middleware)
    bare = run_traced([sys.executable, script], trace_run=False, timeout=60)
    traced = run_traced([sys.executable, script], env=clean_env(**receiver.env()), timeout=60)
    assert bare.returncode == 0, bare.stderr
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == bare.stdout == "configured before the program: False\nuser 42\n"
    assert "Settings already configured" not in traced.stderr
    span, client = _server_and_client(receiver)
    assert span.name == "GET users/<int:id>/" and span.scope == SCOPE
    assert span.trace_id == client.trace_id and span.parent_id == client.span_id


UPSTREAM_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"


@pytest.mark.parametrize("listed", [False, True], ids=["instrument-call", "middleware-listed"])
def test_a_program_using_the_upstream_instrumentor_keeps_its_one_server_span(tmp_path, receiver, listed):
    """DjangoInstrumentor().instrument() (which puts its middleware in MIDDLEWARE), or its middleware
    listed in MIDDLEWARE by the program as well: Django's requests get upstream's SERVER span, not a
    second one of trace-run's."""
    script = _configured_program(tmp_path, [UPSTREAM_MIDDLEWARE] if listed else [], upstream=True)
    traced = run_traced([sys.executable, script], env=clean_env(**receiver.env()), timeout=60)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.endswith("user 42\n")
    span, client = _server_and_client(receiver)
    assert span.scope == "opentelemetry.instrumentation.django"
    assert span.trace_id == client.trace_id and span.parent_id == client.span_id
