"""Values trace-run builds from traffic are bounded (issue 14, item 13): a 1 MB URL, a 10 KB captured
header and a 7 MB SQL statement arrive cut to the bound, marked, with nothing secret revealed by the cut."""

from __future__ import annotations

from support import clean_env, run_traced, write_script

APP = r"""
import http.server, sqlite3, threading
import requests

class Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = "http://127.0.0.1:%d/%s?a=1&X-Amz-Signature=SIGSECRET%s" % (
    server.server_address[1], "p" * 1_000_000, "S" * 100_000)
print("http", requests.get(url, headers={"X-Big": "h" * 10_000}, timeout=10).status_code)

db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE items (id INTEGER, name TEXT)")
rows = ",".join("(%d, 'secret-%d')" % (i, i) for i in range(300_000))
sql = "INSERT INTO items (id, name) VALUES " + rows
print(len(sql) > 7_000_000)
db.execute(sql)
print(db.execute("SELECT count(*) FROM items").fetchone()[0])
"""


def _run(tmp_path, receiver, **extra):
    app = write_script(tmp_path, APP)
    env = clean_env(**receiver.env(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST="x-big", **extra))
    proc = run_traced(["python", app], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["True", "300000"], proc.stdout
    spans = receiver.wait_for(lambda s: any(x.name == "INSERT items" for x in s) and any(
        x.kind == "CLIENT" and "url.full" in x.attributes for x in s))
    client = [s for s in spans if "url.full" in s.attributes][0]
    insert = [s for s in spans if s.name == "INSERT items"][0]
    return client, insert, receiver.raw_bytes()


def test_huge_url_header_and_statement_arrive_bounded_and_marked(tmp_path, receiver):
    client, insert, raw = _run(tmp_path, receiver)
    url = client.attributes["url.full"]
    assert len(url) == 4096 and url.endswith("...")
    assert url.startswith("http://127.0.0.1:") and "/ppp" in url
    header = client.attributes["http.request.header.x-big"]
    assert header == ["h" * 4093 + "..."]
    assert sorted(client.attributes["trace_run.truncated"]) == ["http.request.header.x-big", "url.full"]
    text = insert.attributes["db.query.text"]
    assert text.startswith("INSERT INTO items (id, name) VALUES (?)") and text.endswith("...")
    assert len(text) <= 4096
    assert insert.attributes["trace_run.truncated"] == ["db.query.text"]
    assert b"secret-" not in raw
    assert len(raw) < 64 * 1024  # not 8 MB


def test_upstream_value_length_limit_wins(tmp_path, receiver):
    client, insert, raw = _run(tmp_path, receiver, OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT="100")
    assert len(client.attributes["url.full"]) == 100 and client.attributes["url.full"].endswith("...")
    assert len(insert.attributes["db.query.text"]) <= 100
    assert insert.attributes["db.query.text"].endswith("...")
    assert b"secret-" not in raw


def test_query_value_cut_at_the_bound_is_still_redacted(tmp_path, receiver):
    """The signature value straddles the bound: the part before the cut must not leave the process."""
    client, _insert, raw = _run(tmp_path, receiver, OTEL_TRACE_RUN_MAX_VALUE_LENGTH="1000060")
    url = client.attributes["url.full"]
    assert url.endswith("?a=1&X-Amz-Signature=REDACTED...") and len(url) < 1000060
    assert b"SIGSECRET" not in raw and b"SSSS" not in raw


def test_huge_statement_sanitized_from_a_bounded_prefix():
    """A 7 MB statement: only a prefix is scanned, no literal survives the cut (not even one cut in half)."""
    from trace_run.instrumentors.sql_sanitize import analyze

    rows = ",".join("(%d, 'secret-%d')" % (i, i) for i in range(300_000))
    result = analyze("INSERT INTO items (id, name) VALUES " + rows, True, 4096)
    assert result.truncated and result.operation == "INSERT" and result.collection == "items"
    assert result.text.startswith("INSERT INTO items (id, name) VALUES (?)") and result.text.endswith("...")
    assert "secret" not in result.text and len(result.text) <= 4096
    # a string literal, a dollar-quoted body and a number cut in the middle by the scan bound
    for head, literal in (("SELECT ", "'" + "x" * 100_000 + "'"), ("SELECT ", "$q$" + "x" * 100_000 + "$q$"),
                          ("SELECT 'a', ", "7" * 100_000)):
        out = analyze(head + literal + " FROM t", True, 100)
        assert out.truncated and "x" not in out.text and "7" not in out.text, out
        assert out.text.startswith("SELECT ?") and out.text.endswith("...") and len(out.text) <= 100
    raw = analyze(("SELECT '" + "x" * 100_000 + "'").encode(), False, 100)  # bytes, not sanitized: still bounded
    assert len(raw.text) == 100 and raw.truncated


def test_huge_url_redacted_from_a_bounded_prefix_userinfo_whole():
    from trace_run.instrumentors.http_common import bounded_url

    url = "https://user:hunter2@" + "h" * 5000 + ".example/" + "p" * 1_000_000 + "?sig=" + "S" * 10
    text, cut = bounded_url(url)
    assert cut and len(text) == 4096 and text.startswith("https://REDACTED:REDACTED@hhh") and "hunter2" not in text
    text, cut = bounded_url("https://u:hunter2@example.com/p?a=1&sig=" + "S" * 1_000_000)
    assert cut and text == "https://REDACTED:REDACTED@example.com/p?a=1&sig=REDACTED..."


def test_server_url_path_query_and_user_agent_bounded():
    from trace_run.instrumentors.wsgi import server_attributes

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/" + "p" * 100_000,
               "QUERY_STRING": "a=1&sig=" + "S" * 100_000, "HTTP_USER_AGENT": "u" * 10_000,
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    _name, attrs = server_attributes(environ)
    assert attrs["url.path"] == "/" + "p" * 4092 + "..."
    assert attrs["url.query"] == "a=1&sig=REDACTED..."
    assert attrs["user_agent.original"] == "u" * 4093 + "..."
    assert sorted(attrs["trace_run.truncated"]) == ["url.path", "url.query", "user_agent.original"]
