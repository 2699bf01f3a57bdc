"""A bound on the values trace-run builds from traffic (URLs, SQL, commands, headers).

A 1 MB URL or a 7 MB INSERT would otherwise be exported whole, and a batch of
such spans is over any collector's request limit. A value over the bound keeps
its first characters and ends in `...` (as Datadog's and Sentry's agents mark
a cut), and its key is listed in the span's `trace_run.truncated` attribute,
so a reader can tell a cut value from one that ends in dots. The upstream
`OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` / `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`,
when set, is the bound (the SDK would cut there anyway, without a mark).
Values the program sets itself are left to those upstream limits.
"""

from __future__ import annotations

from typing import Any, Optional

from trace_run.core import config

MARK = "..."
TRUNCATED = "trace_run.truncated"

__all__ = ["MARK", "TRUNCATED", "limit", "cut", "put", "note", "update", "set_on_span"]


def limit() -> Optional[int]:
    """The bound in characters (None: no bound); worked out once (a few times per request otherwise)."""
    return config.derived(_LIMIT, _limit)


_LIMIT = "bounds.limit"  # config.derived's key


def _limit() -> Optional[int]:
    value = config.get("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    if value is None:
        value = config.get("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    if value is None:
        value = config.get("OTEL_TRACE_RUN_MAX_VALUE_LENGTH")
    return value


def cut(text: str, bound: Optional[int] = None, force: bool = False) -> tuple:
    """(text within `bound`, whether it was cut); `force`: the text is already a cut prefix, mark it."""
    if bound is None:
        bound = limit()
        if bound is None:
            return text, False
    if len(text) <= bound and not force:
        return text, False
    if bound <= len(MARK):
        return text[:bound], True
    if len(text) > bound - len(MARK):
        text = text[:bound - len(MARK)]
    return text + MARK, True


def note(attrs: dict, key: str) -> None:
    """List `key` in `trace_run.truncated`."""
    keys = attrs.get(TRUNCATED)
    attrs[TRUNCATED] = (list(keys) if keys else []) + [key]


def put(attrs: dict, key: str, text: str, bound: Optional[int] = None, force: bool = False) -> None:
    """attrs[key] = text within the bound, noted when cut."""
    text, was_cut = cut(text, bound, force)
    attrs[key] = text
    if was_cut:
        note(attrs, key)


def update(attrs: dict, more: dict) -> None:
    """attrs.update(more), the keys listed as cut in both kept."""
    before = attrs.get(TRUNCATED)
    attrs.update(more)
    if before and more.get(TRUNCATED):
        attrs[TRUNCATED] = list(before) + list(more[TRUNCATED])


def set_on_span(span: Any, attrs: dict) -> None:
    """span.set_attributes(attrs), adding to (not replacing) the keys the span already lists as cut."""
    if attrs.get(TRUNCATED):
        before = (getattr(span, "attributes", None) or {}).get(TRUNCATED)
        if before:
            attrs = dict(attrs)
            attrs[TRUNCATED] = list(before) + list(attrs[TRUNCATED])
    span.set_attributes(attrs)
