"""W3C Trace Context Level 1, to the letter, in both directions.

Where the SDK's propagator differs, this one follows the Recommendation:
- several `traceparent` headers (or one holding a list) are invalid: a new trace starts;
- a version other than 00 and ff is parsed by the version-00 prefix rules
  (55 characters, then the end or a `-`); only the `sampled` flag is kept;
- flags other than `sampled` are never sent (Level 1: "Vendors MUST set those to zero");
- tracestate: keys by the current Recommendation's grammar (1-256 characters
  of `a-z 0-9 _ - * / @`, the first a letter or digit: `foo@`, `1foo` and
  `a@b@c` are keys, `@foo` is not; the older `tenant@vendor` split is gone),
  values 1-256 printable characters without `,` and `=`, at most 32 members;
  any bad member discards the whole tracestate, a duplicated key keeps its
  first (leftmost) member, empty and whitespace-only members are skipped,
  several headers are combined in order;
- on injection a tracestate over 512 characters is shortened as the spec says:
  members over 128 characters go first, then members from the end.
No call logs or raises on bad input: the bad part is ignored.
"""

from __future__ import annotations

import re
from typing import Optional

from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.trace.span import TraceState

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_OWS = " \t"
# version-00 layout; later versions must start with the same 55 characters.
_PARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_TRACEPARENT = 1024  # no limit in the spec for future versions; a bound against abuse

_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
_VALUE_RE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
MAX_MEMBERS = 32
MAX_HEADER = 512  # what Level 1 says vendors SHOULD propagate at least
_LONG_MEMBER = 128


def parse_traceparent(value: str) -> Optional[tuple]:
    """(trace_id, span_id, sampled) from one traceparent value, or None if it is invalid."""
    if not isinstance(value, str) or len(value) > _MAX_TRACEPARENT:
        return None
    value = value.strip(_OWS)
    match = _PARENT_RE.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff":
        return None
    if version == "00":
        if len(value) != 55:
            return None
    elif len(value) > 55 and value[55] != "-":
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16) & 0x01


class _ParsedTraceState(TraceState):
    """A TraceState of members this module has already checked.

    The API's constructor validates keys by the older `tenant@vendor` grammar
    and logs each key it rejects (`foo@` among them), so the checked pairs go
    in as they are.
    """

    def __init__(self, pairs: dict) -> None:
        super().__init__()
        self._dict = pairs


def parse_tracestate(values) -> Optional[TraceState]:
    """A TraceState from one or more header values, or None when the list is invalid."""
    pairs: dict = {}
    count = 0
    for header in values:
        if not isinstance(header, str):
            return None
        for member in header.split(","):
            member = member.strip(_OWS)
            if not member:
                continue  # empty and whitespace-only members are allowed and skipped
            key, sep, val = member.partition("=")
            if not sep or _KEY_RE.fullmatch(key) is None or _VALUE_RE.fullmatch(val) is None:
                return None
            count += 1
            if count > MAX_MEMBERS:
                return None
            pairs.setdefault(key, val)  # one entry per key: the leftmost is the latest position
    return _ParsedTraceState(pairs)


def tracestate_header(state: TraceState) -> str:
    """The header for `state`, shortened to 512 characters the way Level 1 asks."""
    members = ["%s=%s" % (k, state[k]) for k in state]
    text = ",".join(members)
    if len(text) <= MAX_HEADER:
        return text
    # Entries longer than 128 characters go first, then entries from the end.
    while len(text) > MAX_HEADER:
        long_ones = [i for i, m in enumerate(members) if len(m) > _LONG_MEMBER]
        members.pop(long_ones[0] if long_ones else -1)
        text = ",".join(members)
    return text


def _values(getter: textmap.Getter, carrier, name: str) -> list:
    got = getter.get(carrier, name)
    if got is None:
        return []
    if isinstance(got, str):
        return [got]
    return list(got)


class W3CTraceContextPropagator(textmap.TextMapPropagator):
    """`tracecontext` in OTEL_PROPAGATORS."""

    def extract(self, carrier: textmap.CarrierT, context: Optional[Context] = None,
                getter: textmap.Getter = textmap.default_getter) -> Context:
        if context is None:
            context = Context()
        try:
            parents = _values(getter, carrier, TRACEPARENT)
            if len(parents) != 1:
                return context  # none, or duplicated: invalid
            parsed = parse_traceparent(parents[0])
            if parsed is None:
                return context
            trace_id, span_id, sampled = parsed
            states = _values(getter, carrier, TRACESTATE)
            state = parse_tracestate(states) if states else None
            span_context = trace.SpanContext(
                trace_id=trace_id,
                span_id=span_id,
                is_remote=True,
                trace_flags=trace.TraceFlags(sampled),
                trace_state=state,
            )
        except Exception:  # a carrier or getter that misbehaves: no parent
            return context
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    def inject(self, carrier: textmap.CarrierT, context: Optional[Context] = None,
               setter: textmap.Setter = textmap.default_setter) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        setter.set(carrier, TRACEPARENT, "00-%032x-%016x-%02x" % (
            span_context.trace_id, span_context.span_id, span_context.trace_flags & 0x01))
        state = span_context.trace_state
        if state:
            header = tracestate_header(state)
            if header:
                setter.set(carrier, TRACESTATE, header)

    @property
    def fields(self) -> set:
        return {TRACEPARENT, TRACESTATE}
