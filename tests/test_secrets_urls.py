"""Credentials in URLs: sensitive query values on client and server spans, userinfo with http.client.

Real programs under trace-run call a real Flask server with every client we
trace; the spans received and every exported byte are checked.
"""

from __future__ import annotations

import uuid

import pytest
from support import clean_env, run_traced, write_script

CALLS = r"""
import http.client, sys, threading, urllib.request
import httpx, requests, urllib3
from flask import Flask
from werkzeug.serving import make_server

query = sys.argv[1]
app = Flask(__name__)
app.add_url_rule("/q", "q", lambda: "ok")
# one thread: shutdown() returns once the last request is handled whole, its span ended (threaded, a
# handler thread could still be closing the last response, its span unended, as the program exits)
server = make_server("127.0.0.1", 0, app, threaded=False)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = "http://127.0.0.1:%d/q?%s" % (server.server_port, query)
assert requests.get(url, timeout=10).status_code == 200
assert httpx.get(url, timeout=10).status_code == 200
assert urllib3.PoolManager().request("GET", url).status == 200
assert urllib.request.urlopen(url, timeout=10).status == 200
server.shutdown()
"""

SECRETS = ["t%02d%s" % (i, uuid.uuid4().hex[:12]) for i in range(16)]
NAMES = ["token", "Access_Token", "refresh_token", "id_token", "api_key", "APIKEY", "key", "password", "passwd",
         "pwd", "secret", "client_secret", "auth", "session", "X-Amz-Signature", "sig"]
QUERY = "page=2&" + "&".join("%s=%s" % (n, s) for n, s in zip(NAMES, SECRETS)) + ";rest=1&monkey=ok&keys=1"
EXPECTED = "page=2&" + "&".join("%s=REDACTED" % n for n in NAMES) + "&monkey=ok&keys=1"


def _call(tmp_path, receiver, query: str, **env) -> tuple:
    app = write_script(tmp_path, CALLS)
    proc = run_traced(["python", app, query], env=clean_env(**receiver.env(), **env))
    assert proc.returncode == 0, proc.stderr
    spans = receiver.wait_for(count=8)
    servers = [s.attributes["url.query"] for s in spans if s.kind == "SERVER"]
    clients = {s.scope.rsplit(".", 1)[-1]: s.attributes["url.full"].split("?", 1)[1] for s in spans
               if s.kind == "CLIENT"}
    return servers, clients, receiver.raw_bytes(), proc.stderr


def test_sensitive_query_values_are_redacted_on_client_and_server_spans(tmp_path, receiver):
    servers, clients, raw, _ = _call(tmp_path, receiver, QUERY)
    assert servers == [EXPECTED] * 4
    assert clients == {"requests": EXPECTED, "httpx": EXPECTED, "urllib3": EXPECTED, "urllib": EXPECTED}
    assert [s for s in SECRETS if s.encode() in raw] == []


@pytest.mark.parametrize("setting,query,expected", [
    ("mytoken, Session", "mytoken=A1&token=B2&SESSION=C3&sig=D4", "mytoken=REDACTED&token=B2&SESSION=REDACTED&sig=D4"),
    ("none", "sig=A1&token=B2&X-Amz-Signature=C3", "sig=A1&token=B2&X-Amz-Signature=C3"),
])
def test_sensitive_query_parameters_are_configurable(tmp_path, receiver, setting, query, expected):
    servers, clients, raw, stderr = _call(tmp_path, receiver, query, OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS=setting)
    assert servers == [expected] * 4 and set(clients.values()) == {expected}
    assert "trace-run:" not in stderr


USERINFO = r"""
import http.client, sys, urllib.request

port, password = int(sys.argv[1]), sys.argv[2]
for call in (lambda: urllib.request.urlopen("http://user:%s@127.0.0.1:%d/x?a=1" % (password, port), timeout=5),
             lambda: urllib.request.urlopen("http://%s@127.0.0.1:%d/y" % (password, port), timeout=5),
             lambda: http.client.HTTPConnection("user:%s@[::1]" % password, port, timeout=5).request("GET", "/z")):
    try:
        call()
    except Exception:
        pass  # the host part `user:pw@127.0.0.1` does not resolve: the span ends with that error
"""


def test_urllib_and_http_client_userinfo_stays_out_of_server_address(tmp_path, receiver):
    password = "pw" + uuid.uuid4().hex
    app = write_script(tmp_path, USERINFO)
    proc = run_traced(["python", app, "8", password], env=clean_env(**receiver.env()))
    assert proc.returncode == 0, proc.stderr
    spans = receiver.wait_for(count=3)
    got = sorted((s.attributes["server.address"], s.attributes["url.full"]) for s in spans)
    assert got == [
        ("127.0.0.1", "http://REDACTED:REDACTED@127.0.0.1:8/x?a=1"),
        ("127.0.0.1", "http://REDACTED@127.0.0.1:8/y"),
        ("::1", "http://REDACTED:REDACTED@[::1]:8/z"),
    ]
    assert all(s.status == "ERROR" and s.attributes["server.port"] == 8 for s in spans)
    assert password.encode() not in receiver.raw_bytes()


# -- in process -------------------------------------------------------------------------------


def test_redact_query_values_run_to_the_next_ampersand_and_names_match_whole():
    from trace_run.core import config
    from trace_run.instrumentors import http_common

    config.reset()
    http_common.reset()
    cases = [
        ("X-Amz-Signature=abc;rest&page=1", "X-Amz-Signature=REDACTED&page=1"),
        ("a=1;TOKEN=x#frag", "a=1;TOKEN=REDACTED#frag"),
        ("monkey=1&keyring=2&key=3", "monkey=1&keyring=2&key=REDACTED"),
        ("token", "token"),
        ("page=2", "page=2"),
    ]
    assert [(q, http_common.redact_query(q)) for q, _ in cases] == cases
    assert [http_common.redact_url("https://h/p?" + q) for q, _ in cases] == ["https://h/p?" + e for _, e in cases]
    query = "page=2&sort=name"
    assert http_common.redact_query(query) is query  # nothing to redact: no new string
