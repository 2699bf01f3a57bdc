"""W3C Trace Context Level 1, rule by rule (both directions).

Each row names the rule; where the SDK's propagator differs the row says so.
"""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.span import TraceState
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
    ("duplicated key discards", "foo=1,foo=1", None),
    ("duplicated key with other values discards", "foo=1,foo=2", None),
    ("duplicated key across headers discards", ["foo=1", "foo=1"], None),
    ("key with space discards", "foo =1", None),
    ("upper-case key discards", "FOO=1", None),
    ("key with dot discards", "foo.bar=1", None),
    ("key starting with digit (simple) discards", "1foo=1", None),
    ("vendor key", "tenant@vendor=1", "tenant@vendor=1"),
    ("tenant may start with a digit", "1tenant@vendor=1", "1tenant@vendor=1"),
    ("empty vendor discards", "foo@=1,bar=2", None),
    ("empty tenant discards", "@foo=1,bar=2", None),
    ("double at discards", "foo@@bar=1,bar=2", None),
    ("two ats discard", "foo@bar@baz=1,bar=2", None),
    ("vendor starting with a digit discards", "foo@1bar=1", None),
    ("key of 256 chars", "z" * 256 + "=1", "z" * 256 + "=1"),
    ("key of 257 chars discards", "z" * 257 + "=1", None),
    ("tenant 241 + vendor 14", "t" * 241 + "@" + "v" * 14 + "=1", "t" * 241 + "@" + "v" * 14 + "=1"),
    ("tenant of 242 discards", "t" * 242 + "@v=1", None),
    ("vendor of 15 discards", "t@" + "v" * 15 + "=1", None),
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
