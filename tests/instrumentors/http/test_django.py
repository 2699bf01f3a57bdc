"""Django in-process: the instrumentor applied by hand, WSGIHandler and ASGIHandler called directly.

Settings are configured once for this process (Django allows no second `configure()`), with this
module as the URLconf and SQLite in memory; real servers and PostgreSQL are in test_django_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import sys

import inline_values
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind, StatusCode
from test_asgi import PARENT, Driver, fresh_settings, http_scope
from trace_run.instrumentors.django import DjangoInstrumentor
from trace_run.instrumentors.self_tracing import django_upstream_middleware as upstream_middleware
from trace_run.instrumentors.sqlite3 import Sqlite3Instrumentor

django = pytest.importorskip("django")  # in the test extra: the skip only spares a partial install


class Boom(Exception):
    pass


def _views():
    from django.db import connection
    from django.http import Http404, HttpResponse, StreamingHttpResponse

    def user(request, id):
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s", [id])
            return HttpResponse("user %d" % cursor.fetchone()[0])

    def boom(request):
        raise Boom("boom")

    def missing(request):
        raise Http404("none")

    def stream(request):
        def body():
            yield b"a"
            with connection.cursor() as cursor:  # while the body is sent: still the request's
                cursor.execute("SELECT 1")
            yield b"b"

        return StreamingHttpResponse(body())

    return user, boom, missing, stream


urlpatterns: list = []


@pytest.fixture(scope="module")
def site():
    from django.conf import settings as django_settings

    if not django_settings.configured:
        django_settings.configure(
            ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], DEBUG=False, MIDDLEWARE=[], SECRET_KEY="tests",
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        )
        django.setup()
    from django.http import FileResponse
    from django.urls import include, path

    user, boom, missing, stream = _views()
    urlpatterns[:] = [
        path("users/<int:id>/", user), path("boom/", boom), path("missing/", missing),
        path("api/", include([path("stream/", stream)])), path("", user, {"id": 0}),
        path("file/", lambda request: FileResponse(io.BytesIO(b"file body"))),
    ]
    return django_settings


@pytest.fixture
def traced(site, instrumented):
    from django.db import connections

    fresh_settings()
    connections.close_all()  # a connection an earlier test opened was made under that test's instrumentation
    instrumented(Sqlite3Instrumentor)
    yield instrumented(DjangoInstrumentor)
    connections.close_all()
    fresh_settings()


def environ(path: str, query: str = "", **headers) -> dict:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "testserver",
           "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
           "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "HTTP_HOST": "example.test:8000"}
    env.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return env


def wsgi_get(path: str, query: str = "", **headers) -> tuple:
    from django.core.handlers.wsgi import WSGIHandler

    status = []
    body = WSGIHandler()(environ(path, query, **headers), lambda s, h, exc_info=None: status.append(s))
    try:
        return status[0], b"".join(body)
    finally:
        body.close()


def server_spans(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


def view_queries(exporter) -> list:
    """The views' own statements (not the PRAGMAs Django runs on a new connection)."""
    return [s for s in exporter.get_finished_spans() if s.attributes.get("db.query.text") in ("SELECT %s", "SELECT ?")]


def test_wsgi_span_named_by_the_route_with_the_http_attributes(traced):
    provider, exporter = traced
    assert wsgi_get("/users/5/", "x=1", traceparent=PARENT) == ("200 OK", b"user 5")
    (span,) = server_spans(exporter)
    assert span.name == "GET users/<int:id>/" and span.attributes["http.route"] == "users/<int:id>/"
    assert span.parent.trace_id == 7 and span.parent.span_id == 9 and span.parent.is_remote
    attrs = span.attributes
    assert (attrs["http.request.method"], attrs["url.path"], attrs["url.query"], attrs["url.scheme"]) == (
        "GET", "/users/5/", "x=1", "http")
    assert (attrs["server.address"], attrs["server.port"], attrs["network.protocol.version"]) == (
        "example.test", 8000, "1.1")
    assert attrs["http.response.status_code"] == 200 and span.status.status_code == StatusCode.UNSET
    (query,) = view_queries(exporter)
    assert query.parent.span_id == span.context.span_id and query.attributes["db.system.name"] == "sqlite"


def test_root_route_and_nothing_matched(traced):
    provider, exporter = traced
    assert wsgi_get("/")[0] == "200 OK"
    assert wsgi_get("/nowhere/")[0] == "404 Not Found"
    root, nowhere = server_spans(exporter)
    assert root.name == "GET /" and root.attributes["http.route"] == "/"  # path("", ...): the empty route
    assert nowhere.name == "GET" and "http.route" not in nowhere.attributes
    assert nowhere.attributes["http.response.status_code"] == 404 and nowhere.status.status_code == StatusCode.UNSET


def test_unhandled_exception_is_a_500_error_and_http404_is_not(traced):
    provider, exporter = traced
    assert wsgi_get("/boom/")[0] == "500 Internal Server Error"
    assert wsgi_get("/missing/")[0] == "404 Not Found"
    boom, missing = server_spans(exporter)
    assert boom.name == "GET boom/" and boom.status.status_code == StatusCode.ERROR
    assert boom.attributes["error.type"] == __name__ + ".Boom" and boom.attributes["http.response.status_code"] == 500
    assert [e.name for e in boom.events] == ["exception"]
    assert missing.status.status_code == StatusCode.UNSET and "error.type" not in missing.attributes


def test_an_exception_django_propagates_is_unchanged(traced, site):
    """DEBUG_PROPAGATE_EXCEPTIONS: the view's exception leaves the handler, the very same object."""
    provider, exporter = traced
    site.DEBUG_PROPAGATE_EXCEPTIONS = True
    try:
        with pytest.raises(Boom) as raised:
            wsgi_get("/boom/")
    finally:
        site.DEBUG_PROPAGATE_EXCEPTIONS = False
    assert str(raised.value) == "boom"
    (span,) = server_spans(exporter)
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == __name__ + ".Boom"


def test_streamed_wsgi_response_is_measured_whole(traced):
    from django.core.handlers.wsgi import WSGIHandler

    provider, exporter = traced
    body = WSGIHandler()(environ("/api/stream/"), lambda s, h, exc_info=None: None)
    assert next(iter(body)) == b"a" and server_spans(exporter) == []  # still sending: the span is open
    assert b"".join(body) == b"b"
    body.close()
    (span,) = server_spans(exporter)
    (query,) = view_queries(exporter)
    assert span.name == "GET api/stream/" and query.parent.span_id == span.context.span_id
    assert query.end_time <= span.end_time


def test_the_server_gets_django_s_own_response_and_file_wrapper(traced):
    """What WSGIHandler returns is unchanged (callers read `status_code`; servers look for their file
    wrapper to use sendfile); the span ends when the server closes it."""
    from wsgiref.util import FileWrapper

    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpResponse

    provider, exporter = traced
    response = WSGIHandler()(environ("/users/3/"), lambda s, h, exc_info=None: None)
    assert isinstance(response, HttpResponse) and response.status_code == 200 and bytes(response.content) == b"user 3"
    assert server_spans(exporter) == []
    response.close()
    env = dict(environ("/file/"), **{"wsgi.file_wrapper": FileWrapper})
    wrapper = WSGIHandler()(env, lambda s, h, exc_info=None: None)
    assert type(wrapper) is FileWrapper and len(server_spans(exporter)) == 1
    assert b"".join(wrapper) == b"file body"
    wrapper.close()
    first, second = server_spans(exporter)
    assert first.name == "GET users/<int:id>/" and second.name == "GET file/"
    assert second.attributes["http.response.status_code"] == 200


def asgi_call(scope, exporter, incoming=()) -> Driver:
    from django.core.handlers.asgi import ASGIHandler

    driver = Driver(exporter, incoming)
    asyncio.run(ASGIHandler()(scope, driver.receive, driver.send))
    return driver


def test_asgi_handler_gets_the_same_spans(traced):
    provider, exporter = traced
    driver = asgi_call(http_scope(path="/users/7/", query=b"", headers=[(b"traceparent", PARENT.encode())]),
                       exporter)
    assert [kind for kind, _ in driver.sent] == ["http.response.start", "http.response.body"]
    asgi_call(http_scope(path="/boom/", query=b""), exporter)
    asgi_call(http_scope(path="/nowhere", query=b""), exporter)
    user, boom, nowhere = server_spans(exporter)
    assert user.name == "GET users/<int:id>/" and user.parent.span_id == 9
    assert user.attributes["http.response.status_code"] == 200 and user.attributes["client.address"] == "10.0.0.5"
    (query,) = view_queries(exporter)
    assert query.parent.span_id == user.context.span_id  # a sync view run in a thread: still the request's
    assert boom.status.status_code == StatusCode.ERROR and boom.attributes["error.type"] == __name__ + ".Boom"
    assert nowhere.name == "GET" and nowhere.attributes["http.response.status_code"] == 404


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_streamed_asgi_response_ends_the_span_with_the_last_body(traced):
    provider, exporter = traced
    driver = asgi_call(http_scope(path="/api/stream/", query=b""), exporter)
    # (message type, spans ended before it was sent): the SERVER span ends after the final body only
    bodies = [ended for kind, ended in driver.sent if kind == "http.response.body"]
    assert len(bodies) >= 3 and len(server_spans(exporter)) == 1
    assert bodies[-1] == len(exporter.get_finished_spans()) - 1  # all but the SERVER span, ended after it
    (span,) = server_spans(exporter)
    (query,) = view_queries(exporter)
    assert query.parent.span_id == span.context.span_id


def test_lifespan_is_refused_by_django_as_bare(traced):
    provider, exporter = traced
    with pytest.raises(ValueError, match="lifespan"):
        asgi_call({"type": "lifespan", "asgi": {"version": "3.0"}}, exporter, [{"type": "lifespan.startup"}])
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("variable", ["OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"])
def test_excluded_urls(site, instrumented, monkeypatch, variable):
    monkeypatch.setenv(variable, "/health,users/9")
    if variable == "OTEL_PYTHON_EXCLUDED_URLS":  # the Django variable, when set, replaces the general one
        monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "/users/5")
    fresh_settings()
    provider, exporter = instrumented(DjangoInstrumentor)
    assert wsgi_get("/users/9/")[0] == "200 OK"
    assert wsgi_get("/users/5/")[0] == "200 OK"
    asgi_call(http_scope(path="/users/9/", query=b""), exporter)
    assert [s.attributes["url.path"] for s in server_spans(exporter)] == ["/users/5/"]
    fresh_settings()


def test_a_bad_exclusion_pattern_is_reported_once_and_the_rest_apply(site, instrumented, monkeypatch, capfd):
    monkeypatch.setenv("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "(unclosed,users/9")
    fresh_settings()
    provider, exporter = instrumented(DjangoInstrumentor)
    wsgi_get("/users/9/")
    wsgi_get("/users/5/")
    fresh_settings()
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "OTEL_PYTHON_DJANGO_EXCLUDED_URLS" in line]
    assert len(lines) == 1 and lines[0].startswith("trace-run:") and "(unclosed" in lines[0], err
    assert [s.attributes["url.path"] for s in server_spans(exporter)] == ["/users/5/"]


def test_header_capture_and_redaction_as_for_flask(site, instrumented, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-tenant,authorization")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-type")
    fresh_settings()
    provider, exporter = instrumented(DjangoInstrumentor)
    wsgi_get("/users/1/", X_TENANT="acme", AUTHORIZATION="Bearer secret")
    fresh_settings()
    (span,) = server_spans(exporter)
    assert span.attributes["http.request.header.x-tenant"] == ("acme",)
    assert span.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    assert span.attributes["http.response.header.content-type"] == ("text/html; charset=utf-8",)


_LATIN1 = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=80)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(traceparent=_LATIN1 | st.just(PARENT[:-1] + "x"), tracestate=_LATIN1, baggage=_LATIN1)
def test_fuzzed_propagation_headers_never_fail_a_request(traced, traceparent, tracestate, baggage):
    provider, exporter = traced
    exporter.clear()
    assert wsgi_get("/users/2/", TRACEPARENT=traceparent, TRACESTATE=tracestate, BAGGAGE=baggage) == (
        "200 OK", b"user 2")
    (span,) = server_spans(exporter)
    assert span.name == "GET users/<int:id>/"


@pytest.mark.skipif(not inline_values.observable(),
                    reason="this interpreter has no inline attribute values a __dict__ read replaces (3.11, 3.12 do)")
def test_the_handler_keeps_its_inline_attributes(traced):
    """The per-request question "is upstream's middleware in this handler's chain" reads the handler's mark with
    getattr: reading its `__dict__` turned Django's own reads of the handler, every request, to the slow path."""
    from django.core.handlers.wsgi import WSGIHandler

    provider, exporter = traced
    handler = WSGIHandler()
    status: list = []
    for _ in range(2):
        body = handler(environ("/users/5/"), lambda s, h, exc_info=None: status.append(s))
        assert b"".join(body) == b"user 5"
        body.close()
    assert status == ["200 OK"] * 2
    assert [s.name for s in server_spans(exporter)] == ["GET users/<int:id>/"] * 2
    assert inline_values.dict_made(handler, "_middleware_chain") is False


def test_upstream_middleware_is_recognised():
    upstream = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
    assert upstream_middleware(["django.middleware.common.CommonMiddleware", upstream])
    assert upstream_middleware((upstream,))
    assert not upstream_middleware(["django.middleware.common.CommonMiddleware"])
    assert not upstream_middleware([]) and not upstream_middleware(None) and not upstream_middleware([None, 3])


def test_system_checks_run_as_chatter(traced):
    """What a command runs before its work (system checks) makes no spans; the command's own work does."""
    from django.core import checks
    from django.core.management.base import BaseCommand
    from django.db import connection

    provider, exporter = traced

    def queries_the_database(**kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 2")
        return []

    checks.register(queries_the_database, "trace-run-test")
    try:
        BaseCommand().check(tags=["trace-run-test"])
    finally:
        checks.registry.registry.registered_checks.discard(queries_the_database)
    assert exporter.get_finished_spans() == ()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 3")
    assert [s.name for s in exporter.get_finished_spans()] == ["SELECT"]
