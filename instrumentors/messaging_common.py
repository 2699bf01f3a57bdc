"""Shared pieces of the queue instrumentors (pika, Celery).

- Header carriers: message headers are whatever the sender put there, so the
  getter accepts only a dict of str/bytes values and treats anything else as
  "no context"; extraction never raises.
- Errors: how a failed publish or handler is recorded on its span.
(Chatter suppression, used by the queue and pool instrumentors, is in chatter.py.)
"""

from __future__ import annotations

from typing import Any, Optional

from opentelemetry import propagate
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Status, StatusCode

__all__ = [
    "HeaderGetter", "HeaderSetter", "GETTER", "SETTER", "extract", "inject", "record_error", "end_with_error",
]


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


def record_error(span: Any, exc: BaseException) -> None:
    """The exception as an event, ERROR status with its message, `error.type` (the class name)."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, "%s: %s" % (type(exc).__name__, exc)))
    span.set_attribute(ERROR_TYPE, type(exc).__qualname__)


def end_with_error(span: Any, exc: BaseException) -> None:
    """`fail` for base.call_in_span: record the error, end the span."""
    try:
        record_error(span, exc)
    finally:
        span.end()
