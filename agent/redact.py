"""Attribute redaction before export, for the PII a program puts on spans itself.

OTEL_TRACE_RUN_REDACT_ATTRIBUTES names attributes to delete and
OTEL_TRACE_RUN_HASH_ATTRIBUTES attributes whose values become `sha256:<16 hex>`
(same input, same hash: still good for grouping and joining). Both are comma
lists of case-insensitive glob patterns (`user.email`, `enduser.*`,
`http.request.header.x-*`) matched against span, event and link attribute
names; deleting wins over hashing. Resource attributes are not touched.

Spans are immutable once ended, so a span with a matching attribute is
exported as a redacted copy; the others pass through as they are. With
trace-run's OTLP encoder the rules run as each span ends, just before it is
encoded (sdk._preencoder); otherwise `wrap` puts them in front of the exporter,
on the export thread.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from typing import Optional, Sequence

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link
from trace_run.core import config

DELETE, HASH = "delete", "hash"
_CACHE_MAX = 4096  # attribute names are few; a program inventing names per call does not grow us


class Rules:
    """Compiled once: one regex per action; answers per attribute name are cached."""

    def __init__(self, delete: Sequence[str] = (), hashed: Sequence[str] = ()):
        self._delete = _compile(delete)
        self._hash = _compile(hashed)
        self._cache: dict = {}

    def __bool__(self) -> bool:
        return self._delete is not None or self._hash is not None

    def action(self, name: str) -> Optional[str]:
        try:
            return self._cache[name]
        except KeyError:
            pass
        low = name.lower()
        if self._delete is not None and self._delete.match(low):
            found = DELETE
        elif self._hash is not None and self._hash.match(low):
            found = HASH
        else:
            found = None
        if len(self._cache) < _CACHE_MAX:
            self._cache[name] = found
        return found

    def apply(self, attributes) -> Optional[dict]:
        """A redacted copy of `attributes`, or None when nothing matches."""
        if not attributes:
            return None
        out = None
        for key, value in attributes.items():
            act = self.action(key)
            if act is None:
                continue
            if out is None:
                out = dict(attributes)
            if act == DELETE:
                del out[key]
            else:
                out[key] = hash_value(value)
        return out


def _compile(patterns: Sequence[str]):
    patterns = [p.strip().lower() for p in patterns if p.strip()]
    if not patterns:
        return None
    return re.compile("|".join("(?:%s)" % fnmatch.translate(p) for p in patterns))


def hash_value(value):
    if isinstance(value, (list, tuple)):
        return tuple(hash_value(v) for v in value)
    return "sha256:" + hashlib.sha256(str(value).encode("utf-8", "surrogatepass")).hexdigest()[:16]


class _RedactedSpan(ReadableSpan):
    """A copy of an ended span with other attributes; keeps the original's dropped counts."""

    def __init__(self, span: ReadableSpan, attributes, events, links):
        super().__init__(
            name=span.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes=attributes, events=events, links=links, kind=span.kind,
            instrumentation_info=getattr(span, "_instrumentation_info", None), status=span.status,
            start_time=span.start_time, end_time=span.end_time, instrumentation_scope=span.instrumentation_scope,
        )
        self._dropped = (span.dropped_attributes, span.dropped_events, span.dropped_links)

    @property
    def dropped_attributes(self) -> int:
        return self._dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._dropped[2]


def _redact_each(items, rules: Rules, rebuild):
    """A new list with rebuilt copies of the events or links whose attributes matched; None if none did."""
    out = None
    for i, item in enumerate(items):
        cleaned = rules.apply(item.attributes)
        if cleaned is not None:
            if out is None:
                out = list(items)
            out[i] = rebuild(item, _frozen(cleaned))
    return out


def redact_span(span: ReadableSpan, rules: Rules) -> ReadableSpan:
    """The span itself when no attribute matches, else a redacted copy."""
    attributes = rules.apply(span.attributes)
    events, links = span.events, span.links
    new_events = _redact_each(events, rules, lambda e, attrs: Event(e.name, attrs, e.timestamp))
    new_links = _redact_each(links, rules, lambda link, attrs: Link(link.context, attrs))
    if attributes is None and new_events is None and new_links is None:
        return span
    return _RedactedSpan(
        span,
        _frozen(attributes) if attributes is not None else span.attributes,
        new_events if new_events is not None else events,
        new_links if new_links is not None else links,
    )


def _frozen(attributes: dict) -> BoundedAttributes:
    return BoundedAttributes(maxlen=None, attributes=attributes, immutable=True, max_value_len=None)


class RedactingExporter(SpanExporter):
    """Applies the rules to each batch, then hands it to the real exporter."""

    def __init__(self, exporter: SpanExporter, rules: Rules):
        self.exporter = exporter
        self.rules = rules

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rules = self.rules
        return self.exporter.export([redact_span(s, rules) for s in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def rules_from_config() -> Rules:
    return Rules(config.get("OTEL_TRACE_RUN_REDACT_ATTRIBUTES"), config.get("OTEL_TRACE_RUN_HASH_ATTRIBUTES"))


def wrap(exporter: SpanExporter) -> SpanExporter:
    """The exporter behind the configured rules; itself when there are none (no cost)."""
    rules = rules_from_config()
    return RedactingExporter(exporter, rules) if rules else exporter
