"""The SERVER span's host, client, user agent and protocol attributes are kept by their environ values
(wsgi._peer_attributes): kept or worked out afresh, the request's attributes are the same."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trace_run.core import config
from trace_run.instrumentors import bounds, wsgi

_TEXT = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(
    ["127.0.0.1:8000", "[::1]:8080", "::1", "example.com", "a.b:notaport", "10.0.0.1, 10.0.0.2", "HTTP/1.1",
     "HTTP/2", "11", "8000", ""]))


def _environ(draw_values: dict) -> dict:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "wsgi.url_scheme": "http"}
    environ.update({k: v for k, v in draw_values.items() if v is not None})
    return environ


_ENVIRONS = st.fixed_dictionaries({
    "HTTP_HOST": _TEXT, "SERVER_NAME": _TEXT, "SERVER_PORT": st.one_of(_TEXT, st.integers(0, 70000)),
    "HTTP_X_FORWARDED_FOR": _TEXT, "REMOTE_ADDR": _TEXT, "HTTP_USER_AGENT": st.one_of(_TEXT, st.text(max_size=40)),
    "SERVER_PROTOCOL": st.one_of(_TEXT, st.integers(0, 40)), "QUERY_STRING": _TEXT}).map(_environ)


def _fresh(environ: dict) -> tuple:
    wsgi._PEERS.clear()
    return wsgi.server_attributes(environ)


@settings(max_examples=300, deadline=None)
@given(_ENVIRONS, st.sampled_from([None, 8, 30]))
def test_kept_peer_attributes_are_the_ones_worked_out_afresh(environ, limit):
    with pytest.MonkeyPatch.context() as mp:
        if limit is not None:
            mp.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", str(limit))
        config.reset()
        try:
            fresh = _fresh(dict(environ))
            kept = wsgi.server_attributes(dict(environ))  # from _PEERS where it was kept
            again = wsgi.server_attributes(dict(environ))
        finally:
            mp.delenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", raising=False)
            config.reset()
    assert kept == fresh and again == fresh
    assert list(kept[1]) == list(fresh[1])  # the same order too (the encoded span's)


def test_the_kept_values_are_not_the_requests_own_dict():
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_HOST": "h:81", "REMOTE_ADDR": "10.1.1.1",
               "HTTP_USER_AGENT": "ua", "SERVER_PROTOCOL": "HTTP/1.1"}
    _fresh(environ)
    name, first = wsgi.server_attributes(environ)
    first["server.address"] = "changed by the span"
    assert wsgi.server_attributes(environ)[1]["server.address"] == "h"
    assert first is not wsgi.server_attributes(environ)[1]
    assert wsgi.server_attributes(environ)[1] == {
        "http.request.method": "GET", "url.scheme": "http", "url.path": "/", "server.address": "h",
        "server.port": 81, "client.address": "10.1.1.1", "user_agent.original": "ua",
        "network.protocol.version": "1.1"}


def test_a_cut_user_agent_is_noted_with_the_cut_path_and_never_kept(monkeypatch):
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    config.reset()
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/long/path", "HTTP_HOST": "h",
                   "HTTP_USER_AGENT": "a long agent"}
        wsgi._PEERS.clear()
        for _ in range(2):
            attrs = wsgi.server_attributes(environ)[1]
            assert attrs[bounds.TRUNCATED] == ["url.path", "user_agent.original"]
            assert attrs["user_agent.original"] == bounds.cut("a long agent", 5)[0] != "a long agent"
        assert not wsgi._PEERS
    finally:
        monkeypatch.delenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
        config.reset()


def test_the_store_stays_small():
    wsgi._PEERS.clear()
    for i in range(1000):
        wsgi.server_attributes({"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.%d.%d" % (i // 250, i % 250)})
    assert 0 < len(wsgi._PEERS) <= 256
    assert wsgi.server_attributes({"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.3.249"})[1][
        "client.address"] == "10.0.3.249"
