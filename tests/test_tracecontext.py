"""W3C Trace Context Level 1, rule by rule (both directions), then end to end.

Each row names the rule; where the SDK's propagator differs the row says so.
The end-to-end tests use the W3C harness's method: a Flask service under
trace-run (tests/apps/w3c_service.py, the service the real harness was run
against) gets traceparent/tracestate and calls back a server of the test,
which reads the trace context the service propagated.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from apps.fault_servers import free_port
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.span import TraceState
from support import HERE, TRACE_RUN, clean_env, python
from trace_run.agent.tracecontext import W3CTraceContextPropagator

P = W3CTraceContextPropagator()
T = "4bf92f3577b34da6a3ce929d0e0e4736"
S = "00f067aa0ba902b7"
VALID = "00-%s-%s-01" % (T, S)


def extract(headers: dict):
    """headers: name -> value or list of values (several header lines)."""
    carrier = {k: v for k, v in headers.items()}

    class Getter:
        def get(self, c, key):
            v = c.get(key)
            if v is None:
                return None
            return v if isinstance(v, list) else [v]

        def keys(self, c):
            return list(c)

    return trace.get_current_span(P.extract(carrier, getter=Getter())).get_span_context()


PARENT_ROWS = [
    # (rule, traceparent, valid?, sampled)
    ("version 00", VALID, True, True),
    ("not sampled", "00-%s-%s-00" % (T, S), True, False),
    ("OWS around the value", " \t%s \t" % VALID, True, True),
    ("version 00 with more fields", VALID + "-what-the-future-will-be-like", False, None),
    ("version 00 followed by a dot", VALID + ".", False, None),
    ("future version, 55 chars", "cc-%s-%s-01" % (T, S), True, True),
    ("future version with more fields", "cc-%s-%s-01-what-the-future-will-be-like" % (T, S), True, True),
    ("future version, bad separator after flags", "cc-%s-%s-01.what-the-future" % (T, S), False, None),
    ("future version, unknown flags keep only sampled", "cc-%s-%s-09" % (T, S), True, True),
    ("version ff is invalid", "ff-%s-%s-01" % (T, S), False, None),
    ("version illegal chars", ".0-%s-%s-01" % (T, S), False, None),
    ("version illegal chars 2", "0.-%s-%s-01" % (T, S), False, None),
    ("version too long", "000-%s-%s-01" % (T, S), False, None),
    ("version too short", "0-%s-%s-01" % (T, S), False, None),
    ("version upper case", "CC-%s-%s-01" % (T, S), False, None),
    ("trace-id all zero", "00-%s-%s-01" % ("0" * 32, S), False, None),
    ("trace-id illegal chars", "00-%s.-%s-01" % (T[:31], S), False, None),
    ("trace-id upper case", "00-%s-%s-01" % (T.upper(), S), False, None),
    ("trace-id too long", "00-%s0-%s-01" % (T, S), False, None),
    ("trace-id too short", "00-%s-%s-01" % (T[:31], S), False, None),
    ("parent-id all zero", "00-%s-%s-01" % (T, "0" * 16), False, None),
    ("parent-id illegal chars", "00-%s-%s.-01" % (T, S[:15]), False, None),
    ("parent-id upper case", "00-%s-%s-01" % (T, "00F067AA0BA902B7"), False, None),
    ("parent-id too long", "00-%s-%s0-01" % (T, S), False, None),
    ("parent-id too short", "00-%s-%s-01" % (T, S[:15]), False, None),
    ("flags illegal chars", "00-%s-%s-.0" % (T, S), False, None),
    ("flags too long", "00-%s-%s-001" % (T, S), False, None),
    ("flags too short", "00-%s-%s-1" % (T, S), False, None),
    ("flags upper case", "00-%s-%s-0A" % (T, S), False, None),
    ("empty", "", False, None),
    ("garbage", "\x00\xff garbage", False, None),
    ("huge", "00-" + "a" * 100000, False, None),
]


@pytest.mark.parametrize("rule,value,valid,sampled", PARENT_ROWS, ids=[r[0] for r in PARENT_ROWS])
def test_traceparent_rules(rule, value, valid, sampled):
    ctx = extract({"traceparent": value, "tracestate": "foo=1"})
    if not valid:
        assert not ctx.is_valid, rule
        return
    assert ctx.is_valid and ctx.is_remote
    assert (ctx.trace_id, ctx.span_id) == (int(T, 16), int(S, 16))
    assert ctx.trace_flags == (1 if sampled else 0)  # only the sampled bit survives
    assert ctx.trace_state.to_header() == "foo=1"


def test_duplicated_traceparent_is_invalid():
    # The SDK's propagator takes the first of several traceparent headers; Level 1 starts a new trace.
    assert not extract({"traceparent": [VALID, VALID]}).is_valid
    assert not extract({"traceparent": VALID + "," + VALID}).is_valid  # combined by the HTTP server


def test_missing_traceparent_ignores_tracestate():
    assert not extract({"tracestate": "foo=1"}).is_valid
    assert not extract({}).is_valid


STATE_ROWS = [
    # (rule, tracestate header value(s), expected header or None = discarded)
    ("simple", "foo=1", "foo=1"),
    ("several members keep order", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
     "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ("several headers combined in order", ["rojo=1,congo=2", "sample=3"], "rojo=1,congo=2,sample=3"),
    ("empty header ignored", "", None),
    ("empty header among others", ["foo=1", ""], "foo=1"),
    ("empty header first", ["", "foo=1"], "foo=1"),
    ("empty and whitespace-only members skipped", "foo=1,, \t ,bar=2,", "foo=1,bar=2"),
    ("OWS around members", "foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3"),
    # a duplicated key keeps its first member (the SDK and the older trace-run dropped the whole tracestate)
    ("duplicated key keeps one", "foo=1,foo=1", "foo=1"),
    ("duplicated key with other values keeps the first", "foo=1,bar=2,foo=3", "foo=1,bar=2"),
    ("duplicated key across headers keeps the first", ["foo=1", "foo=2"], "foo=1"),
    ("key with space discards", "foo =1", None),
    ("upper-case key discards", "FOO=1", None),
    ("key with dot discards", "foo.bar=1", None),
    # keys by the current Recommendation: ( lcalpha / DIGIT ) 0*255( keychar ), `@` is a keychar
    ("key may start with a digit", "1foo=1", "1foo=1"),
    ("vendor key", "tenant@vendor=1", "tenant@vendor=1"),
    ("tenant may start with a digit", "1tenant@vendor=1", "1tenant@vendor=1"),
    ("key ending in @", "foo@=1,bar=2", "foo@=1,bar=2"),
    ("key starting with @ discards", "@foo=1,bar=2", None),
    ("key with @@", "foo@@bar=1,bar=2", "foo@@bar=1,bar=2"),
    ("key with two @", "foo@bar@baz=1,bar=2", "foo@bar@baz=1,bar=2"),
    ("@ followed by a digit", "foo@1bar=1", "foo@1bar=1"),
    ("key starting with _ discards", "_foo=1", None),
    ("key of 256 chars", "z" * 256 + "=1", "z" * 256 + "=1"),
    ("key of 257 chars discards", "z" * 257 + "=1", None),
    ("256 chars with @ at 242", "t" * 241 + "@" + "v" * 14 + "=1", "t" * 241 + "@" + "v" * 14 + "=1"),
    ("256 chars with @ at 243", "t" * 242 + "@" + "v" * 13 + "=1", "t" * 242 + "@" + "v" * 13 + "=1"),
    ("@ then 15 chars", "t@" + "v" * 15 + "=1", "t@" + "v" * 15 + "=1"),
    ("257 chars with an @ discards", "t" * 242 + "@" + "v" * 14 + "=1", None),
    ("all allowed key characters", "abcdefghijklmnopqrstuvwxyz0123456789_-*/=1",
     "abcdefghijklmnopqrstuvwxyz0123456789_-*/=1"),
    ("value of 256 chars", "foo=" + "v" * 256, "foo=" + "v" * 256),
    ("value of 257 chars discards", "foo=" + "v" * 257, None),
    ("empty value discards", "foo=,bar=3", None),
    ("value with = discards", "foo=bar=baz", None),
    ("value with a non-printable discards", "foo=a\x01b", None),
    ("value with non-ASCII discards", "foo=caf\xe9", None),
    ("value may hold spaces inside", "foo=a b", "foo=a b"),
    ("member without = discards", "foo", None),
    ("32 members", ",".join("k%02d=1" % i for i in range(32)), ",".join("k%02d=1" % i for i in range(32))),
    ("33 members discard", ",".join("k%02d=1" % i for i in range(33)), None),
    ("33 members with a duplicate discard", ",".join("k%02d=1" % i for i in range(32)) + ",k00=2", None),
]


@pytest.mark.parametrize("rule,value,expected", STATE_ROWS, ids=[r[0] for r in STATE_ROWS])
def test_tracestate_rules(rule, value, expected):
    ctx = extract({"traceparent": VALID, "tracestate": value})
    assert ctx.is_valid, "a bad tracestate never invalidates the traceparent"
    got = ctx.trace_state.to_header() if ctx.trace_state else None
    assert (got or None) == expected, rule


def test_all_printable_value_characters():
    # every printable character but "," and "="; a leading space is part of the value by the grammar
    value = "".join(map(chr, list(range(0x20, 0x2C)) + list(range(0x2D, 0x3D)) + list(range(0x3E, 0x7F))))
    ctx = extract({"traceparent": VALID, "tracestate": "foo=1,bar=" + value})
    assert ctx.trace_state["bar"] == value
    assert len(extract({"traceparent": VALID, "tracestate": "foo=1,bar=" + value + "=x"}).trace_state) == 0


def _inject(ctx: SpanContext) -> dict:
    carrier: dict = {}
    P.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(ctx)))
    return carrier


def test_inject_round_trip_and_flags():
    state = TraceState([("rojo", "1"), ("congo", "2")])
    out = _inject(SpanContext(int(T, 16), int(S, 16), False, TraceFlags(0xFF), state))
    # only the sampled bit is sent (Level 1: other flags MUST be zero); the SDK sends ff
    assert out == {"traceparent": "00-%s-%s-01" % (T, S), "tracestate": "rojo=1,congo=2"}
    back = extract(out)
    assert (back.trace_id, back.span_id, back.trace_flags) == (int(T, 16), int(S, 16), 1)
    assert _inject(SpanContext(1, 2, False, TraceFlags(0)))["traceparent"] == "00-%032x-%016x-00" % (1, 2)


def test_inject_nothing_without_a_valid_span():
    assert _inject(trace.INVALID_SPAN_CONTEXT) == {}
    assert "tracestate" not in _inject(SpanContext(1, 2, False, TraceFlags(1), TraceState()))


def test_inject_shortens_tracestate_to_512_as_the_spec_says():
    long_member = ("big", "x" * 200)  # > 128 chars: dropped first
    members = [("k%02d" % i, "v" * 26) for i in range(16)]  # 30 chars each
    state = TraceState([members[0], long_member] + members[1:])
    header = _inject(SpanContext(1, 2, False, TraceFlags(1), state))["tracestate"]
    assert len(header) <= 512
    assert "big=" not in header
    assert header.startswith("k00=") and "k15=" in header  # 16*30+15 = 495 fits once the long one is gone
    many = TraceState([("k%02d" % i, "v" * 40) for i in range(20)])  # 44 chars each, 899 in all
    header = _inject(SpanContext(1, 2, False, TraceFlags(1), many))["tracestate"]
    assert len(header) <= 512 and header.startswith("k00=") and "k10=" in header and "k11=" not in header


def test_fields_and_misbehaving_getter():
    assert P.fields == {"traceparent", "tracestate"}

    class Bad:
        def get(self, c, key):
            raise RuntimeError("broken carrier")

        def keys(self, c):
            return []

    assert not trace.get_current_span(P.extract({}, getter=Bad())).get_span_context().is_valid


def test_is_the_propagator_for_tracecontext():
    from trace_run.agent import sdk

    composite = sdk.build_propagator(["tracecontext"])
    assert any(isinstance(p, W3CTraceContextPropagator) for p in composite._propagators)


def test_keys_of_the_new_grammar_log_nothing(caplog):
    # the API's TraceState constructor would log "Invalid key/value pair" for foo@ and drop it
    with caplog.at_level(logging.DEBUG):
        ctx = extract({"traceparent": VALID, "tracestate": "foo@=1,a@b@c=2,foo@=3"})
    assert ctx.trace_state.to_header() == "foo@=1,a@b@c=2"
    assert caplog.records == []


# -- end to end: the W3C harness's method against a Flask service under trace-run ----------------

HARNESS_TRACE = "12345678901234567890123456789012"
HARNESS_PARENT = "00-%s-1234567890123456-00" % HARNESS_TRACE


class _Callbacks(ThreadingHTTPServer):
    """Stands in for the harness: records the trace context of each callback it receives."""

    daemon_threads = True

    def __init__(self):
        self.seen: dict = {}
        self.arrived = threading.Condition()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):  # noqa: N805 - the server is `self` here
                handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
                with self.arrived:
                    self.seen[handler.path] = (handler.headers.get_all("traceparent") or [],
                                               handler.headers.get_all("tracestate") or [])
                    self.arrived.notify_all()
                handler.send_response(200)
                handler.send_header("Content-Length", "0")
                handler.end_headers()

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def wait(self, path: str, timeout: float = 20.0):
        with self.arrived:
            self.arrived.wait_for(lambda: path in self.seen, timeout)
            return self.seen.pop(path)


@pytest.fixture(scope="module")
def w3c_service():
    """(post, callbacks): the service under trace-run, and a function that sends it one request."""
    callbacks = _Callbacks()
    threading.Thread(target=callbacks.serve_forever, daemon=True).start()
    port = free_port()
    proc = subprocess.Popen([TRACE_RUN, python(), os.path.join(HERE, "apps", "w3c_service.py"), str(port)],
                            env=clean_env(OTEL_TRACES_EXPORTER="none"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # the dev server logs every request: not into a pipe
    deadline = time.monotonic() + 30
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "service did not start"
            time.sleep(0.1)
    counter = iter(range(1_000_000))

    def post(headers: list):
        """Send `headers` (name, value pairs; a name may repeat) and return the callback's
        (traceparent values, tracestate as a dict or None when absent)."""
        path = "/callback/%d" % next(counter)
        body = json.dumps([{"url": "http://127.0.0.1:%d%s" % (callbacks.server_port, path), "arguments": []}])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.putrequest("POST", "/test")
        for name, value in headers + [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]:
            conn.putheader(name, value)
        conn.endheaders(body.encode())
        assert conn.getresponse().status == 200
        conn.close()
        parents, states = callbacks.wait(path)
        assert len(parents) == 1, parents
        members = [m.strip() for m in ",".join(states).split(",") if m.strip()]
        return parents[0], (dict(m.split("=", 1) for m in members) if states else None)

    yield post
    proc.terminate()
    proc.wait(timeout=30)
    callbacks.shutdown()


def _continued(post, *states):
    """Propagated tracestate (dict or None) for a request with HARNESS_PARENT and these tracestate lines."""
    parent, state = post([("traceparent", HARNESS_PARENT)] + [("tracestate", s) for s in states])
    assert parent.split("-")[1] == HARNESS_TRACE, parent  # the trace goes on
    assert parent.split("-")[2] != "1234567890123456", parent  # through a span of the service
    return state


def test_harness_duplicated_keys_are_inherited(w3c_service):
    # test_tracestate_duplicated_keys: inherited, duplicates kept as they are or all but one dropped
    assert _continued(w3c_service, "foo=1,foo=1") == {"foo": "1"}
    assert _continued(w3c_service, "foo=1,foo=2") == {"foo": "1"}
    assert _continued(w3c_service, "foo=1", "foo=1") == {"foo": "1"}
    assert _continued(w3c_service, "foo=1", "foo=2") == {"foo": "1"}
    assert _continued(w3c_service, "bar=0,foo=1,baz=2,foo=3") == {"bar": "0", "foo": "1", "baz": "2"}


def test_harness_keys_with_at_signs_are_inherited(w3c_service):
    # test_tracestate_key_illegal_vendor_format: foo@, foo@@bar, foo@bar@baz are keys; @foo is not
    assert _continued(w3c_service, "foo@=1,bar=2") == {"foo@": "1", "bar": "2"}
    assert _continued(w3c_service, "foo@@bar=1,bar=2") == {"foo@@bar": "1", "bar": "2"}
    assert _continued(w3c_service, "foo@bar@baz=1,bar=2") == {"foo@bar@baz": "1", "bar": "2"}
    assert _continued(w3c_service, "@foo=1,bar=2") is None


def test_harness_key_length_limit(w3c_service):
    # test_tracestate_key_length_limit: 256 characters whatever the place of an @, 257 never
    for key in ("z" * 256, "t" * 241 + "@" + "v" * 14, "t" * 242 + "@" + "v" * 13, "t@" + "v" * 15):
        assert _continued(w3c_service, "foo=1", key + "=1") == {"foo": "1", key: "1"}, key
    assert _continued(w3c_service, "foo=1", "z" * 257 + "=1") is None
    assert _continued(w3c_service, "foo=1", "t" * 242 + "@" + "v" * 14 + "=1") is None


def test_harness_neighbours_still_pass(w3c_service):
    # what already conformed stays so: bad keys and values, member count, OWS, order, no tracestate
    assert _continued(w3c_service, "foo =1") is None
    assert _continued(w3c_service, "FOO=1") is None
    assert _continued(w3c_service, "foo.bar=1") is None
    assert _continued(w3c_service, "foo=bar=baz") is None
    assert _continued(w3c_service, "foo=1", "") == {"foo": "1"}
    assert _continued(w3c_service) is None
    assert _continued(w3c_service, " foo=1 \t,\t bar=2 ") == {"foo": "1", "bar": "2"}
    many = ["bar%02d=%02d" % (i, i) for i in range(1, 33)]
    assert _continued(w3c_service, ",".join(many[:10]), ",".join(many[10:])) == dict(m.split("=") for m in many)
    assert _continued(w3c_service, ",".join(many), "bar33=33") is None
    parent, state = w3c_service([("traceparent", "00-%s-1234567890123456-0x" % HARNESS_TRACE),
                                 ("tracestate", "foo=1")])
    assert parent.split("-")[1] != HARNESS_TRACE and state is None  # a bad traceparent restarts the trace
