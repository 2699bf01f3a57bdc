"""W3C propagation on the hot path: the answer of the default propagators without running them.

With OTEL_PROPAGATORS at its default (tracecontext then baggage, exact types), most carriers hold no
`traceparent` or `baggage` header, and most contexts carry no baggage and no trace state. Then what
`propagate.extract` and `propagate.inject` would do is known: extract changes nothing, inject writes
one `traceparent` header. Running the composite propagator for that costs ~3 us per call; every
other case still goes through `opentelemetry.propagate`, so a configured propagator always runs.
"""

from __future__ import annotations

from typing import Any, Optional

# isort: off
# opentelemetry.trace first: the agent builds the SDK when it is imported, and opentelemetry.propagate
# (which imports it half-way through) must not be half-built then (see http_common).
from opentelemetry import trace
from opentelemetry import baggage, propagate
# isort: on
from trace_run.core import runtime_context
from trace_run.core.runtime_context import get_current

__all__ = ["default_pair", "inject", "wire_line", "WireLine"]

# The agent's propagator, named rather than imported: instrumentors never import the agent.
_AGENT_TRACECONTEXT = ("trace_run.agent.tracecontext", "W3CTraceContextPropagator")
_known: tuple = (None, None)  # (the global propagator, its traceparent flags mask or None; see _flags_mask)


def _flags_mask(textmap: Any) -> Optional[int]:
    """For the default pair, the trace-flags bits its tracecontext propagator writes (the SDK's writes
    the flags byte whole, the agent's the sampled bit); None for any other propagator setting."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if type(textmap) is not CompositePropagator:
        return None
    kinds = [type(p) for p in getattr(textmap, "_propagators", ())]
    if len(kinds) != 2 or kinds[1] is not W3CBaggagePropagator:
        return None
    if kinds[0] is TraceContextTextMapPropagator:
        return 0xFF
    if (kinds[0].__module__, kinds[0].__qualname__) == _AGENT_TRACECONTEXT:
        return 0x01
    return None


def _mask() -> Optional[int]:
    global _known
    textmap = propagate.get_global_textmap()
    known = _known
    if known[0] is not textmap:
        known = _known = (textmap, _flags_mask(textmap))
    return known[1]


def default_pair() -> bool:
    """Whether the global propagator is OTEL_PROPAGATORS' default pair (_mask's answer, a call shorter:
    every request asks)."""
    known = _known
    if known[0] is not propagate.get_global_textmap():
        return _mask() is not None
    return known[1] is not None


_SpanContext = trace.SpanContext
_NO_STATE = trace.DEFAULT_TRACE_STATE  # an empty TraceState (what SpanContext defaults to)
# the key baggage keeps its dict under in a context (read as baggage.get_all reads it: a dict, or none at all)
_BAGGAGE_KEY = getattr(baggage, "_BAGGAGE_KEY", None)


def _plain_ids(span: trace.Span) -> Optional[tuple]:
    """(trace id, span id, flags) where the global propagator is the default pair and would write one
    `traceparent` and nothing else (no trace state, no baggage); None: the propagator has to run."""
    known = _known  # (_mask's answer where the propagator is the one it remembers: a call less)
    mask = known[1] if known[0] is propagate.get_global_textmap() else _mask()
    if mask is None:
        return None
    ctx = span.get_span_context()
    if type(ctx) is _SpanContext and runtime_context.CONTEXT_IS_TUPLE:  # its fields as the tuple holds them
        trace_id, span_id, _, flags, state, valid = ctx
    else:
        trace_id, span_id, flags, state, valid = (ctx.trace_id, ctx.span_id, ctx.trace_flags, ctx.trace_state,
                                                  ctx.is_valid)
    if not valid or not (state is _NO_STATE or not state):  # (the default, told without TraceState.__len__)
        return None
    if _BAGGAGE_KEY is not None:
        held = get_current().get(_BAGGAGE_KEY)
        if held and isinstance(held, dict):  # get_all's answer: {} unless a dict is held
            return None
    elif baggage.get_all(get_current()):
        return None
    return trace_id, span_id, flags & mask


def inject(carrier: Any, span: trace.Span) -> None:
    """`propagate.inject(carrier, context=trace.set_span_in_context(span))` for a dict-like carrier."""
    ids = _plain_ids(span)
    if ids is not None:
        carrier["traceparent"] = "00-%032x-%016x-%02x" % ids
        return
    propagate.inject(carrier, context=trace.set_span_in_context(span))


class WireLine(bytes):
    """A `traceparent` header line as http.client buffers it (`name: value`, no line end). An HTTP client
    layer above http.client leaves it in the context, as the value of its "suppress HTTP instrumentation"
    mark, for http.client's `putrequest` to add to the request it sends: the header goes on the wire
    without the caller's request being copied and without the libraries' per-header work."""

    __slots__ = ()


def wire_line(span: trace.Span) -> Optional[WireLine]:
    """The `traceparent` line `inject` would write for `span`; None where the propagator has to run."""
    ids = _plain_ids(span)
    return None if ids is None else WireLine(b"traceparent: 00-%032x-%016x-%02x" % ids)
