"""Shared pieces of the queue instrumentors (pika, Celery).

- Header carriers: message headers are whatever the sender put there, so the
  getter accepts only a dict of str/bytes values and treats anything else as
  "no context"; extraction never raises.
(Chatter suppression, used by the queue and pool instrumentors, is in chatter.py.)
"""

from __future__ import annotations

from typing import Any, Optional

from opentelemetry import propagate
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

__all__ = [
    "HeaderGetter", "HeaderSetter", "GETTER", "SETTER", "extract", "inject",
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
