"""requests' and urllib3's `traceparent` written by http.client below them (propagation.WireLine), and
every case that takes the copy instead: a real local server reports the header lines it received."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry import baggage, context, propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from trace_run.agent.sdk import build_propagator
from trace_run.core import config
from trace_run.instrumentors import http_client, http_common
from trace_run.instrumentors import requests as requests_instrumentor
from trace_run.instrumentors.http_client import HttpClientInstrumentor
from trace_run.instrumentors.requests import RequestsInstrumentor
from trace_run.instrumentors.urllib3 import Urllib3Instrumentor

ALL = (RequestsInstrumentor, Urllib3Instrumentor, HttpClientInstrumentor)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    failures: dict = {}

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/redirect"):
            return self._answer(302, b"", [("Location", "/seen")])
        if self.path.startswith("/flaky"):  # 503 on the first call of each key, then what /seen says
            key = self.path
            if not _Handler.failures.get(key):
                _Handler.failures[key] = True
                return self._answer(503, b"{}", [("Content-Type", "application/json")])
        seen = {"traceparent": self.headers.get_all("traceparent") or [],
                "baggage": self.headers.get_all("baggage") or [],
                "names": [name.lower() for name in self.headers.keys()]}
        self._answer(200, json.dumps(seen).encode(), [("Content-Type", "application/json")])

    def _answer(self, status, body, headers):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % srv.server_port
    srv.shutdown()


def _instrument(provider):
    config.reset()
    http_common.reset()
    for cls in ALL:
        cls().instrument(tracer_provider=provider, skip_dep_check=True)


def _uninstrument():
    for cls in ALL:
        cls().uninstrument()
    config.reset()
    http_common.reset()


@pytest.fixture
def traced():
    """requests, urllib3 and http.client instrumented, the default propagators (tracecontext, baggage):
    (provider, exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    old = propagate.get_global_textmap()
    propagate.set_global_textmap(build_propagator(["tracecontext", "baggage"]))
    _instrument(provider)
    yield provider, exporter
    _uninstrument()
    propagate.set_global_textmap(old)
    provider.shutdown()


def _client(exporter):
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    return span


def _traceparent_of(span) -> str:
    return "00-%032x-%016x-01" % (span.context.trace_id, span.context.span_id)


def test_the_line_goes_out_once_and_the_request_is_neither_copied_nor_changed(traced, server):
    import requests

    _, exporter = traced
    session = requests.Session()
    prepared = session.prepare_request(requests.Request("GET", server + "/seen", headers={"X-Mine": "1"}))
    before = dict(prepared.headers)
    r = session.send(prepared)
    seen = r.json()
    client = _client(exporter)
    assert seen["traceparent"] == [_traceparent_of(client)]  # one header, the CLIENT span's
    assert client.name == "GET" and client.attributes["http.response.status_code"] == 200
    assert r.request is prepared and dict(prepared.headers) == before  # sent as it was: no copy, nothing added
    assert "x-mine" in seen["names"] and seen["names"].count("traceparent") == 1


def test_each_redirect_and_each_retry_carries_its_own_spans_line(traced, server):
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    _, exporter = traced
    r = requests.get(server + "/redirect")
    first, second = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert first.attributes["http.response.status_code"] == 302
    assert r.json()["traceparent"] == [_traceparent_of(second)]
    assert r.history[0].request.headers.get("traceparent") is None  # not copied: the line went on the wire
    assert first.context.span_id != second.context.span_id

    exporter.clear()
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=Retry(total=2, status_forcelist=[503], backoff_factor=0)))
    seen = session.get(server + "/flaky/retry-1").json()  # urllib3 retries inside one adapter.send: one span
    assert seen["traceparent"] == [_traceparent_of(_client(exporter))]


def test_an_unsampled_trace_sends_its_context_on_the_wire(server):
    import requests

    provider = TracerProvider(sampler=ALWAYS_OFF)
    old = propagate.get_global_textmap()
    propagate.set_global_textmap(build_propagator(["tracecontext", "baggage"]))
    _instrument(provider)
    try:
        with provider.get_tracer("t").start_as_current_span("root") as root:
            seen = requests.get(server + "/seen").json()
        ids = root.get_span_context()
        assert seen["traceparent"] == ["00-%032x-%016x-00" % (ids.trace_id, ids.span_id)]
    finally:
        _uninstrument()
        propagate.set_global_textmap(old)


def _copied(r) -> bool:
    """The request sent was a copy carrying the header (the path before the wire line)."""
    return "traceparent" in r.request.headers


def test_a_traceparent_of_the_callers_own_is_replaced_by_the_copy(traced, server):
    import requests

    _, exporter = traced
    theirs = "00-%032x-%016x-01" % (7, 9)
    r = requests.get(server + "/seen", headers={"TraceParent": theirs})
    assert r.json()["traceparent"] == [_traceparent_of(_client(exporter))] and _copied(r)


def test_baggage_in_the_context_takes_the_propagators(traced, server):
    import requests

    _, exporter = traced
    token = context.attach(baggage.set_baggage("tenant", "t-1"))
    try:
        r = requests.get(server + "/seen")
    finally:
        context.detach(token)
    seen = r.json()
    assert seen["traceparent"] == [_traceparent_of(_client(exporter))] and seen["baggage"] == ["tenant=t-1"]
    assert _copied(r)


def test_an_adapter_subclass_takes_the_copy(traced, server):
    import requests
    from requests.adapters import HTTPAdapter

    class Mine(HTTPAdapter):
        pass

    _, exporter = traced
    session = requests.Session()
    session.mount("http://", Mine())
    r = session.get(server + "/seen")
    assert r.json()["traceparent"] == [_traceparent_of(_client(exporter))] and _copied(r)


def test_replaced_connection_classes_take_the_copy(traced, server, monkeypatch):
    """What urllib3.http2's and emscripten's inject_into_urllib3 do: the pools' connection class replaced
    (here by a subclass that still sends, so the header is seen to arrive), or the pool classes."""
    import requests
    import urllib3.connection
    import urllib3.connectionpool

    _, exporter = traced

    class Conn(urllib3.connection.HTTPConnection):
        pass

    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "ConnectionCls", Conn)
    r = requests.get(server + "/seen")
    assert r.json()["traceparent"] == [_traceparent_of(_client(exporter))] and _copied(r)
    monkeypatch.undo()

    class Pool(urllib3.connectionpool.HTTPConnectionPool):
        pass

    exporter.clear()
    session = requests.Session()
    adapter = session.get_adapter(server)
    adapter.poolmanager.pool_classes_by_scheme = dict(adapter.poolmanager.pool_classes_by_scheme, http=Pool)
    r = session.get(server + "/seen")
    assert r.json()["traceparent"] == [_traceparent_of(_client(exporter))] and _copied(r)


def test_without_http_clients_instrumentor_the_copy_carries_the_header(traced, server):
    """http.client uninstrumented (or its putrequest wrapped again by someone else): nobody below would
    write the line, so requests copies the request and adds the header as before."""
    import http.client

    import requests

    provider, exporter = traced
    HttpClientInstrumentor().uninstrument()
    assert http_client.wired is None
    r = requests.get(server + "/seen")
    assert r.json()["traceparent"] == [_traceparent_of(_client(exporter))] and _copied(r)

    HttpClientInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    ours = http.client.HTTPConnection.putrequest
    assert ours is http_client.wired

    def someone_elses(self, *args, **kwargs):
        return ours(self, *args, **kwargs)

    http.client.HTTPConnection.putrequest = someone_elses
    try:
        exporter.clear()
        r = requests.get(server + "/seen")
        assert r.json()["traceparent"] == [_traceparent_of(_client(exporter))] and _copied(r)
    finally:
        http.client.HTTPConnection.putrequest = ours


def test_a_connection_with_its_own_output_gets_the_line_through_putheader(traced, server, monkeypatch):
    """A connection class that takes over `_output` (to log what it sends, say) sees the line as a header."""
    import requests
    import urllib3.connection

    _, exporter = traced
    written = []
    original = urllib3.connection.HTTPConnection._output

    def _output(self, s):
        written.append(s)
        return original(self, s)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_output", _output, raising=False)
    r = requests.get(server + "/seen")
    line = ("traceparent: " + _traceparent_of(_client(exporter))).encode()
    assert r.json()["traceparent"] == [line[13:].decode()] and not _copied(r)
    assert written.count(line) == 1


def test_the_line_is_only_for_the_http_client_request_made_in_the_span(traced, server):
    """An http.client request made with HTTP instrumentation suppressed by someone else's mark (True, not a
    line) sends nothing of ours; one made in requests' span sends the line."""
    import http.client

    from trace_run.core.compat import SUPPRESS_HTTP_INSTRUMENTATION_KEY

    token = context.attach(context.set_value(SUPPRESS_HTTP_INSTRUMENTATION_KEY, True))
    try:
        conn = http.client.HTTPConnection(server.split("//")[1])
        conn.request("GET", "/seen")
        seen = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        context.detach(token)
    assert seen["traceparent"] == []
    assert not traced[1].get_finished_spans()


def test_the_wire_line_is_injects_header(traced):
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    from trace_run.instrumentors import propagation

    span = NonRecordingSpan(SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(1)))
    carrier: dict = {}
    propagation.inject(carrier, span)
    line = propagation.wire_line(span)
    assert type(line) is propagation.WireLine and line == b"traceparent: " + carrier["traceparent"].encode()
    assert requests_instrumentor._ADAPTER is not None  # this urllib3's layout was recognised
    invalid = NonRecordingSpan(SpanContext(0, 0, is_remote=False))
    assert propagation.wire_line(invalid) is None


def _order(seen) -> tuple:
    """(where traceparent came, where x-mine came) among the header lines: the wire line comes right after
    putrequest's own, before the caller's headers; the copy's after them."""
    return seen["names"].index("traceparent"), seen["names"].index("x-mine")


def test_urllib3_sends_the_line_and_leaves_the_callers_headers(traced, server):
    import urllib3

    _, exporter = traced
    headers = {"X-Mine": "1"}
    seen = json.loads(urllib3.PoolManager().request("GET", server + "/seen", headers=headers).data)
    assert seen["traceparent"] == [_traceparent_of(_client(exporter))] and headers == {"X-Mine": "1"}
    at, mine = _order(seen)
    assert at < mine  # on the wire from putrequest, not a copy of the headers

    exporter.clear()
    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(server.rsplit(":", 1)[1]), headers={"X-Mine": "2"})
    seen = json.loads(pool.urlopen("GET", "/seen").data)  # the pool's own headers
    assert seen["traceparent"] == [_traceparent_of(_client(exporter))] and pool.headers == {"X-Mine": "2"}


@pytest.mark.parametrize("case", ["own-traceparent", "own-traceparent-header-dict", "connection-class"])
def test_urllib3_takes_the_copy_where_the_line_could_not_be_told_apart(traced, server, case):
    import urllib3
    import urllib3.connection

    _, exporter = traced
    port = int(server.rsplit(":", 1)[1])
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port)
    headers = {"X-Mine": "1"}
    if case == "own-traceparent":
        headers["TRACEPARENT"] = "00-%032x-%016x-01" % (7, 9)
    elif case == "own-traceparent-header-dict":
        headers = urllib3.HTTPHeaderDict({"X-Mine": "1", "TraceParent": "00-%032x-%016x-01" % (7, 9)})
    else:
        class Conn(urllib3.connection.HTTPConnection):
            pass

        pool.ConnectionCls = Conn
    seen = json.loads(pool.urlopen("GET", "/seen", headers=headers).data)
    ours = _traceparent_of(_client(exporter))
    assert seen["traceparent"] == [ours]  # the caller's own replaced, never sent beside ours
    at, mine = _order(seen)
    if case == "own-traceparent-header-dict":
        assert mine < at  # the copy's header (where HTTPHeaderDict puts a key replaced: at the end)
    elif case == "own-traceparent":
        assert "TRACEPARENT" in headers and mine < at  # the caller's dict as it was; the copy's header
    else:
        assert mine < at  # the copy's header, after the caller's


def test_a_copied_dict_keeps_no_case_variant_of_a_header_written(traced):
    """inject_copy on a plain dict: the caller's `TraceParent` is replaced by the `traceparent` written (a
    dict is case-sensitive: both would go out); a `Baggage` the propagators did not write, and headers
    that are not theirs, stay as given; the caller's dict is not changed."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    span = NonRecordingSpan(SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(1)))
    given = {"TraceParent": "00-%032x-%016x-01" % (7, 9), "Baggage": "a=1", "X-Other": "1", "x-other": "2"}
    before = dict(given)
    sent = http_common.inject_copy(given, span)
    assert sent == {"traceparent": "00-%032x-%016x-01" % (0xA1, 0xB2), "Baggage": "a=1", "X-Other": "1",
                    "x-other": "2"}
    assert given == before


def test_a_connection_whose_putheader_refuses_the_line_still_sends_its_request(traced, server, monkeypatch):
    """A connection class of its own (its `_output` replaced) whose `putheader` raises for our header: the
    request goes out without it and the program sees no error of ours."""
    import requests
    import urllib3.connection

    original_output = urllib3.connection.HTTPConnection._output
    original_putheader = urllib3.connection.HTTPConnection.putheader

    def _output(self, s):
        return original_output(self, s)

    def putheader(self, header, *values):
        if header == "traceparent":
            raise ValueError("not this one")
        return original_putheader(self, header, *values)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_output", _output, raising=False)
    monkeypatch.setattr(urllib3.connection.HTTPConnection, "putheader", putheader)
    r = requests.get(server + "/seen")
    assert r.status_code == 200 and r.json()["traceparent"] == [] and not _copied(r)
    assert _client(traced[1]).attributes["http.response.status_code"] == 200
