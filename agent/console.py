"""`OTEL_TRACES_EXPORTER=console`: each local trace printed as a tree when its
local root span ends, with a timeline bar per span, like a trace UI's
waterfall. (`console_json` is the SDK's JSON-per-span exporter.)
"""

from __future__ import annotations

import sys
import threading
from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

_KEY_ATTRIBUTES = (
    "http.request.method", "http.route", "url.full", "http.response.status_code",
    "db.system.name", "db.query.text", "server.address", "server.port",
    "messaging.system", "messaging.destination.name", "error.type",
)
_BAR = 30
_MAX_PENDING = 10000


class TreeConsoleExporter(SpanExporter):
    def __init__(self, out=None):
        self._out = out
        self._pending: dict = {}  # trace_id -> [spans]
        self._count = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ready = []
        with self._lock:
            for span in spans:
                tid = span.context.trace_id
                self._pending.setdefault(tid, []).append(span)
                self._count += 1
                if span.parent is None or span.parent.is_remote:
                    ready.append((tid, span))
            for tid, root in ready:
                group = self._pending.get(tid, [])
                tree = _subtree(root, group)
                ids = {s.context.span_id for s in tree}
                rest = [s for s in group if s.context.span_id not in ids]
                if rest:
                    self._pending[tid] = rest
                else:
                    self._pending.pop(tid, None)
                self._count -= len(tree)
                self._write(render(root, tree))
            while self._count > _MAX_PENDING and self._pending:  # bounded memory
                tid = next(iter(self._pending))
                self._count -= len(self._pending.pop(tid))
        return SpanExportResult.SUCCESS

    def _write(self, text: str) -> None:
        out = self._out or sys.stdout
        try:
            out.write(text)
            out.flush()
        except Exception:
            pass

    def shutdown(self) -> None:
        with self._lock:
            leftovers = [s for group in self._pending.values() for s in group]
            self._pending.clear()
            self._count = 0
        for span in leftovers:  # parents never ended here: print them flat
            self._write(render(span, [span]))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _subtree(root: ReadableSpan, spans: list) -> list:
    children: dict = {}
    for s in spans:
        if s.parent is not None and not s.parent.is_remote:
            children.setdefault(s.parent.span_id, []).append(s)
    out = []
    stack = [root]
    while stack:
        s = stack.pop()
        out.append(s)
        stack.extend(children.get(s.context.span_id, ()))
    return out


def render(root: ReadableSpan, spans: list) -> str:
    children: dict = {}
    for s in spans:
        if s is not root and s.parent is not None:
            children.setdefault(s.parent.span_id, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: s.start_time or 0)
    t0 = root.start_time or 0
    total = max(1, (root.end_time or t0) - t0)
    service = root.resource.attributes.get("service.name", "") if root.resource else ""
    lines = ["trace %032x  service=%s" % (root.context.trace_id, service)]
    if root.parent is not None:
        lines[0] += "  (continues remote parent %016x)" % root.parent.span_id

    def walk(span: ReadableSpan, depth: int) -> None:
        start = (span.start_time or t0) - t0
        dur = (span.end_time or span.start_time or 0) - (span.start_time or 0)
        a = min(_BAR - 1, max(0, int(start * _BAR / total)))
        b = min(_BAR, max(a + 1, int(round((start + dur) * _BAR / total))))
        bar = " " * a + "#" * (b - a) + " " * (_BAR - b)
        status = span.status.status_code
        label = "ERROR" if status is StatusCode.ERROR else "ok"
        attrs = span.attributes or {}
        shown = " ".join("%s=%s" % (k, attrs[k]) for k in _KEY_ATTRIBUTES if k in attrs)
        name = "  " * depth + span.name
        lines.append("  |%s| %-40s %-8s %9.2f ms  %-5s %s" % (
            bar, name, span.kind.name, dur / 1e6, label, shown))
        if status is StatusCode.ERROR and span.status.description:
            lines.append("  |%s|   %s! %s" % (" " * _BAR, "  " * depth, span.status.description))
        for child in children.get(span.context.span_id, ()):
            walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines) + "\n"
