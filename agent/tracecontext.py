"""W3C Trace Context propagator used for `tracecontext`.

Starts as the SDK's; the HTTP work makes every Level 1 rule explicit here
(see tests/test_tracecontext.py).
"""

from __future__ import annotations

from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


class W3CTraceContextPropagator(TraceContextTextMapPropagator):
    pass
