"""Samplers of our own: a rate limiter for services whose traffic swings by
orders of magnitude (the ratio samplers then give either too few or too many
traces)."""

from __future__ import annotations

import time
from typing import Optional, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.util.types import Attributes


class RateLimitingSampler(Sampler):
    """At most `per_second` new traces per second, as a token bucket.

    Thread-safe without a lock: the bucket state is one tuple swapped in a
    single assignment; a lost race costs at most one extra or one fewer trace,
    never a crash. The unsampled path reads the clock and two floats.
    """

    def __init__(self, per_second: float):
        self.per_second = float(per_second)
        self._capacity = max(1.0, self.per_second)
        self._state = (self._capacity, time.monotonic())  # (tokens, when)

    def should_sample(
        self,
        parent_context: Optional[Context],
        trace_id: int,
        name: str,
        kind: Optional[SpanKind] = None,
        attributes: Attributes = None,
        links: Optional[Sequence[Link]] = None,
        trace_state=None,
    ) -> SamplingResult:
        now = time.monotonic()
        tokens, when = self._state
        tokens = min(self._capacity, tokens + (now - when) * self.per_second)
        if tokens >= 1.0:
            self._state = (tokens - 1.0, now)
            decision = Decision.RECORD_AND_SAMPLE
        else:
            self._state = (tokens, now)
            decision = Decision.DROP
        parent_state = get_current_span(parent_context).get_span_context().trace_state
        return SamplingResult(decision, attributes if decision is Decision.RECORD_AND_SAMPLE else None,
                              parent_state)

    def get_description(self) -> str:
        return "RateLimitingSampler{%g/s}" % self.per_second
