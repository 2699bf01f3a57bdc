"""Shared pieces of the queue instrumentors (pika, Celery).

- Header carriers: message headers are whatever the sender put there, so the
  getter accepts only a dict of str/bytes values and treats anything else as
  "no context"; extraction never raises.
- Chatter suppression: a library's own background traffic (broker polling,
  heartbeats, result-backend housekeeping) runs with the ecosystem's suppress
  key set, plus a marker saying the suppression is ours, so the consumer
  instrumentors can still open their span for a message (and lift the
  suppression inside it) while suppression set by anyone else is honoured.
"""

from __future__ import annotations

from typing import Any, Optional

from opentelemetry import context, propagate
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

__all__ = [
    "HeaderGetter", "HeaderSetter", "GETTER", "SETTER", "extract", "inject", "chatter_enabled",
    "suppress_chatter", "quiet_context", "is_our_quiet", "unquiet",
]

# Set next to the suppress key when the suppression is trace-run's chatter filter.
_CHATTER_KEY = context.create_key("trace_run_chatter_suppressed")
_PLAIN_KEY = "suppress_instrumentation"  # the old spelling opentelemetry-instrumentation also reads


class HeaderGetter(textmap.Getter):
    """Reads a dict of message headers; non-dict carriers and non-text values read as missing."""

    def get(self, carrier: Any, key: str) -> Optional[list]:
        if not isinstance(carrier, dict):
            return None
        value = carrier.get(key)
        if isinstance(value, str):
            return [value]
        if isinstance(value, (bytes, bytearray)):
            try:
                return [bytes(value).decode("ascii")]
            except UnicodeDecodeError:
                return None
        return None

    def keys(self, carrier: Any) -> list:
        return [k for k in carrier if isinstance(k, str)] if isinstance(carrier, dict) else []


class HeaderSetter(textmap.Setter):
    def set(self, carrier: Any, key: str, value: str) -> None:
        carrier[key] = value


class AttrGetter(textmap.Getter):
    """Reads attributes of an object (a Celery task request)."""

    def get(self, carrier: Any, key: str) -> Optional[list]:
        value = getattr(carrier, key, None)
        if isinstance(value, str):
            return [value]
        return None

    def keys(self, carrier: Any) -> list:
        return [k for k in getattr(carrier, "__dict__", {}) if isinstance(k, str)]


GETTER = HeaderGetter()
SETTER = HeaderSetter()
ATTR_GETTER = AttrGetter()
_EMPTY = Context()


def extract(carrier: Any, getter: textmap.Getter = GETTER) -> Context:
    """The producer's context from message headers, on an empty base (no suppression carried in).

    Garbage gives an empty context: the message is then handled in a new trace.
    """
    if carrier is None:
        return _EMPTY
    try:
        return propagate.extract(carrier, context=_EMPTY, getter=getter)
    except Exception:
        return _EMPTY


def inject(headers: dict, ctx: Optional[Context] = None) -> None:
    propagate.inject(headers, context=ctx, setter=SETTER)


def chatter_enabled() -> bool:
    """OTEL_TRACE_RUN_CHATTER: trace libraries' background traffic too."""
    from trace_run.agent import config

    return bool(config.get("OTEL_TRACE_RUN_CHATTER"))


def quiet_context(base: Optional[Context] = None) -> Context:
    """`base` (default: current) with instrumentation suppressed as chatter."""
    ctx = context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True, base)
    return context.set_value(_CHATTER_KEY, True, ctx)


def is_our_quiet(ctx: Optional[Context] = None) -> bool:
    """True when the current suppression (if any) is only trace-run's chatter filter."""
    return bool(context.get_value(_CHATTER_KEY, ctx)) and not context.get_value(_PLAIN_KEY, ctx)


def unquiet(ctx: Context) -> Context:
    """`ctx` with instrumentation enabled again (inside the handling of one message)."""
    ctx = context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, False, ctx)
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
