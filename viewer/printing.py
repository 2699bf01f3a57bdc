"""`trace-run view --print TRACE_ID`: one stored trace as the console exporter's tree.

The drawing is agent/console.py's `render`; stored spans are adapted to the few
ReadableSpan attributes it reads. A span of another service than its parent's is
labelled with its service; a span whose parent never arrived starts a tree of its own,
marked as continuing that parent.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from types import SimpleNamespace


def _adapt(row, trace_int: int, status_code) -> SimpleNamespace:
    from opentelemetry.trace import SpanKind, StatusCode

    span_id, parent, name, kind, service, start, end, status, message, attributes, resource = row

    return SimpleNamespace(
        name=name, service=service, start_time=start, end_time=end,
        context=SimpleNamespace(trace_id=trace_int, span_id=int(span_id, 16)),
        parent=SimpleNamespace(span_id=int(parent, 16), is_remote=False) if parent else None,
        kind=SpanKind(kind - 1) if 1 <= kind <= 5 else SimpleNamespace(name="UNSPECIFIED"),
        status=SimpleNamespace(status_code=status_code[status] if status in status_code else StatusCode.UNSET,
                               description=message),
        attributes=json.loads(attributes), resource=SimpleNamespace(attributes=json.loads(resource)),
    )


def print_trace(db_path: str, trace_id: str, out) -> int:
    from opentelemetry.trace import StatusCode
    from trace_run.agent.console import render

    trace_id = trace_id.strip().lower()
    if not os.path.exists(db_path):
        sys.stderr.write("trace-run view: no store at %s\n" % db_path)
        return 1
    try:
        trace_int = int(trace_id, 16)
    except ValueError:
        sys.stderr.write("trace-run view: %r is not a trace id (32 hex digits)\n" % trace_id)
        return 2
    conn = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True)
    try:
        rows = conn.execute(
            "SELECT span_id, parent_span_id, name, kind, service, start_ns, end_ns, status_code, status_message, "
            "attributes, resource FROM spans WHERE trace_id = ? ORDER BY start_ns, rowid", (trace_id,)).fetchall()
    finally:
        conn.close()
    if not rows:
        sys.stderr.write("trace-run view: no trace %s in %s\n" % (trace_id, db_path))
        return 1
    codes = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}
    spans = [_adapt(r, trace_int, codes) for r in rows]
    by_id = {s.context.span_id: s for s in spans}
    for s in spans:
        parent = by_id.get(s.parent.span_id) if s.parent else None
        if parent is not None and parent.service != s.service:
            s.name = "%s [%s]" % (s.name, s.service)
    roots = [s for s in spans if s.parent is None or s.parent.span_id not in by_id]
    for root in roots:
        out.write(render(root, spans))
    return 0
