"""Chatter suppression: a library's own background traffic makes no spans.

Broker polling, heartbeats, result-backend housekeeping and pool health checks
run with the ecosystem's suppress key set, plus a marker saying the
suppression is ours, so a consumer instrumentor can still open its span for a
message (and lift the suppression inside it) while suppression set by anyone
else is honoured. OTEL_TRACE_RUN_CHATTER=true turns the filter off.
"""

from __future__ import annotations

from typing import Optional

from opentelemetry import context
from opentelemetry.context.context import Context
from trace_run.core.compat import SUPPRESS_INSTRUMENTATION_KEY

__all__ = ["chatter_enabled", "suppress_chatter", "quiet_context", "is_our_quiet", "unquiet"]

# Set next to the suppress key when the suppression is trace-run's chatter filter.
_CHATTER_KEY = context.create_key("trace_run_chatter_suppressed")
_PLAIN_KEY = "suppress_instrumentation"  # the old spelling opentelemetry-instrumentation also reads


def chatter_enabled() -> bool:
    """OTEL_TRACE_RUN_CHATTER: trace libraries' background traffic too."""
    from trace_run.core import config

    return bool(config.get("OTEL_TRACE_RUN_CHATTER"))


def quiet_context(base: Optional[Context] = None) -> Context:
    """`base` (default: current) with instrumentation suppressed as chatter."""
    ctx = context.set_value(SUPPRESS_INSTRUMENTATION_KEY, True, base)
    return context.set_value(_CHATTER_KEY, True, ctx)


def is_our_quiet(ctx: Optional[Context] = None) -> bool:
    """True when the current suppression (if any) is only trace-run's chatter filter."""
    return bool(context.get_value(_CHATTER_KEY, ctx)) and not context.get_value(_PLAIN_KEY, ctx)


def unquiet(ctx: Context) -> Context:
    """`ctx` with instrumentation enabled again (inside the handling of one message)."""
    ctx = context.set_value(SUPPRESS_INSTRUMENTATION_KEY, False, ctx)
    return context.set_value(_CHATTER_KEY, False, ctx)


class suppress_chatter:  # noqa: N801 - used like a function: `with suppress_chatter():`
    """Run a block as library chatter: no spans, unless OTEL_TRACE_RUN_CHATTER is on."""

    __slots__ = ("_token",)

    def __enter__(self):
        self._token = None
        if not chatter_enabled():
            self._token = context.attach(quiet_context())
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._token is not None:
            context.detach(self._token)
        return False
