"""wsgi.server_attributes in C (instrumentors/_wsgi_native.c) answers what the Python function answers, for
any environ: the same name, attributes and order, with the peer attributes kept or not, under value bounds
and header capture; what it was not written for goes to the Python function."""

from __future__ import annotations

import importlib
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trace_run.core import config, runtime_context
from trace_run.instrumentors import http_common, wsgi

_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
if runtime_context.NATIVE is None and not _COMPILER:
    pytest.skip("no C compiler: the extension is optional", allow_module_level=True)
native = importlib.import_module("trace_run.instrumentors._wsgi_native")

_TEXT = st.one_of(st.none(), st.text(max_size=10), st.sampled_from(
    ["127.0.0.1:8000", "[::1]:8080", "example.com", "10.0.0.1, 10.0.0.2", "HTTP/1.1", "HTTP/2", "", "/", "/a/b",
     "/caf\xc3\xa9", "a=1&password=s3cret&b=2", "curl/8.0 " + "x" * 30]))
_ENVIRONS = st.fixed_dictionaries({
    "REQUEST_METHOD": st.one_of(st.sampled_from(["GET", "POST", "PATCH", "get", "PURGE", "", b"GET"]), st.none()),
    "SCRIPT_NAME": st.one_of(_TEXT, st.just(b"/b")), "PATH_INFO": _TEXT, "QUERY_STRING": _TEXT,
    "wsgi.url_scheme": st.one_of(st.none(), st.sampled_from(["http", "https"])),
    "HTTP_HOST": _TEXT, "SERVER_NAME": _TEXT, "SERVER_PORT": st.one_of(_TEXT, st.integers(0, 70000)),
    "HTTP_X_FORWARDED_FOR": _TEXT, "REMOTE_ADDR": _TEXT, "HTTP_USER_AGENT": _TEXT,
    "SERVER_PROTOCOL": st.one_of(_TEXT, st.integers(0, 40)), "HTTP_X_REQUEST_ID": _TEXT,
    "HTTP_AUTHORIZATION": _TEXT}).map(lambda d: {k: v for k, v in d.items() if v is not None})


def _answer(fn, environ):
    try:
        name, attrs = fn(dict(environ) if type(environ) is dict else environ)
        return name, list(attrs.items())  # the order too: the encoded span's
    except Exception as exc:
        return "raised", type(exc), str(exc)


def test_the_extension_is_built_and_used_where_a_c_compiler_is():
    if not _COMPILER:
        pytest.skip("no C compiler: the extension is optional")
    assert wsgi.server_attributes is native.server_attributes
    assert wsgi.python_server_attributes is not native.server_attributes


@settings(max_examples=500, deadline=None)
@given(_ENVIRONS, st.sampled_from([None, "4", "12", "40"]), st.sampled_from(["", "x-request-id,authorization"]))
def test_any_environ_gets_the_python_functions_answer(environ, limit, capture):
    with pytest.MonkeyPatch.context() as mp:
        if limit is not None:
            mp.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", limit)
        mp.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", capture)
        config.reset()
        http_common.reset()
        try:
            wsgi._PEERS.clear()
            python = _answer(wsgi.python_server_attributes, environ)
            wsgi._PEERS.clear()
            fresh = _answer(native.server_attributes, environ)
            kept = _answer(native.server_attributes, environ)  # the peer attributes from _PEERS now
            python_kept = _answer(wsgi.python_server_attributes, environ)
        finally:
            mp.delenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", raising=False)
            mp.delenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST")
            config.reset()
            http_common.reset()
    assert fresh == python == kept == python_kept


class _Environ(dict):
    pass


@pytest.mark.parametrize("environ", [
    _Environ(REQUEST_METHOD="GET", PATH_INFO="/sub"),  # a dict subclass: the Python function
    {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "HTTP_HOST": ["unhashable"]},  # a peer key that is no key
    {"REQUEST_METHOD": "GET", "PATH_INFO": 5},  # the Python function's own error
    {"REQUEST_METHOD": "GET"},
])
def test_odd_environs_answer_as_the_python_function(environ):
    assert _answer(native.server_attributes, environ) == _answer(wsgi.python_server_attributes, environ)


def test_a_traced_request_names_its_span_from_the_c_attributes():
    """Through the middleware and the deferred span, the attributes the C made are the span's."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    middleware = wsgi.TraceMiddleware(app, tracer_provider=provider)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "QUERY_STRING": "token=abc", "HTTP_HOST": "h:8",
               "REMOTE_ADDR": "10.0.0.9", "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    body = middleware(environ, lambda status, headers, exc_info=None: None)
    list(body)
    body.close()
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET" and span.kind.name == "SERVER"
    assert dict(span.attributes) == {
        "http.request.method": "GET", "url.scheme": "http", "url.path": "/hello", "url.query": "token=REDACTED",
        "server.address": "h", "server.port": 8, "client.address": "10.0.0.9", "network.protocol.version": "1.1",
        "http.response.status_code": 200}


def _peer_environ(agent: str = "curl/8.0", host: str = "h:81") -> dict:
    # each value a new str object, as a real server makes them per request (not the code's constants)
    fresh = "".join
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "HTTP_HOST": fresh([host]), "SERVER_NAME": fresh(["s"]),
            "SERVER_PORT": fresh(["81"]), "REMOTE_ADDR": fresh(["10.0.0.9"]), "HTTP_USER_AGENT": fresh([agent]),
            "SERVER_PROTOCOL": fresh(["HTTP/1.1"])}


def _peer_key(environ: dict) -> tuple:
    from trace_run.instrumentors import bounds
    return tuple(environ.get(k) for k in ("HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "HTTP_X_FORWARDED_FOR",
                                          "REMOTE_ADDR", "HTTP_USER_AGENT", "SERVER_PROTOCOL")) + (bounds.limit(),)


def test_the_last_peers_found_follow_every_change_of_the_kept_ones():
    """The C keeps the last key it found in _PEERS (equal values: the same entry, without hashing the new str
    objects); a changed _PEERS (an entry replaced, cleared) or other values are looked up as the Python does."""
    wsgi._PEERS.clear()
    first = _answer(native.server_attributes, _peer_environ())
    assert first == _answer(wsgi.python_server_attributes, _peer_environ())
    assert _answer(native.server_attributes, _peer_environ()) == first  # equal values, other objects
    # an entry replaced (the same key): the new one, as the Python's lookup finds it
    wsgi._PEERS[_peer_key(_peer_environ())] = {"server.address": "replaced"}
    replaced = _answer(native.server_attributes, _peer_environ())
    assert replaced == _answer(wsgi.python_server_attributes, _peer_environ())
    assert ("server.address", "replaced") in replaced[1]
    # cleared: worked out again, and kept again in _PEERS
    wsgi._PEERS.clear()
    assert _answer(native.server_attributes, _peer_environ()) == first
    assert wsgi._PEERS[_peer_key(_peer_environ())]["server.address"] == "h"
    # values of the same length but other text: their own attributes
    other = _answer(native.server_attributes, _peer_environ(agent="curl/9.0", host="g:81"))
    assert other == _answer(wsgi.python_server_attributes, _peer_environ(agent="curl/9.0", host="g:81"))
    assert ("user_agent.original", "curl/9.0") in other[1] and ("server.address", "g") in other[1]
    assert _answer(native.server_attributes, _peer_environ()) == first


def test_peer_values_of_a_str_subclass_are_looked_up_each_time():
    """A str subclass can hash and compare as it likes: never kept as the last key, looked up as Python does."""
    class Loud(str):
        def __eq__(self, other):
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    wsgi._PEERS.clear()
    environ = dict(_peer_environ(), HTTP_USER_AGENT=Loud("curl/8.0"))
    for _ in range(3):
        assert _answer(native.server_attributes, environ) == _answer(wsgi.python_server_attributes, environ)
    wsgi._PEERS[_peer_key(environ)] = {"server.address": "from the subclass key"}
    assert ("server.address", "from the subclass key") in _answer(native.server_attributes, environ)[1]
