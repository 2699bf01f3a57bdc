"""The JSON API behind the pages (see README, "trace-run view"): queries on a read connection."""

from __future__ import annotations

import json
import math
import sqlite3

from .store import KINDS, STATUS

MAX_LIMIT = 500


class ApiError(ValueError):
    """A bad query: answered with 400 and {"error": message}."""


def _one(params: dict, name: str) -> str:
    values = params.get(name) or [""]
    return values[-1].strip()


def _int(params: dict, name: str):
    text = _one(params, name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError("%s=%r is not an integer" % (name, text[:40]))


def _float(params: dict, name: str):
    text = _one(params, name)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ApiError("%s=%r is not a number" % (name, text[:40]))


def _hex(text: str, what: str) -> str:
    text = text.strip().lower()
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ApiError("%s %r is not hex" % (what, text[:40]))
    return text


def _json_path(key: str) -> str:
    return '$."%s"' % key.replace('"', '""')  # SQLite's JSON path quoting


# The string form of a JSON value at a path, as a user would type it (true, 42, 1.5, text).
_AS_TEXT = ("CASE json_type({col}, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
            "ELSE CAST(json_extract({col}, ?) AS TEXT) END = ?")


def list_traces(db: sqlite3.Connection, params: dict) -> dict:
    where, args = [], []
    service = _one(params, "service")
    if service:
        # correlated, so the newest-first scan stops at `limit` matches instead of listing the service's traces
        where.append("EXISTS (SELECT 1 FROM trace_services ts WHERE ts.trace_id = t.trace_id AND ts.service = ?)")
        args.append(service)
    name = _one(params, "name")
    if name:
        where.append("EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.trace_id AND s.name = ?)")
        args.append(name)
    min_ms = _float(params, "min_duration_ms")
    if min_ms is not None:
        where.append("t.end_ns - t.start_ns >= ?")
        args.append(int(min_ms * 1e6))
    if _one(params, "errors").lower() in ("1", "true", "yes", "on"):
        where.append("t.error_count > 0")
    attr = _one(params, "attr")
    if attr:
        key, sep, value = attr.partition("=")
        if not sep or not key.strip():
            raise ApiError("attr=%r is not key=value" % attr[:80])
        path = _json_path(key.strip())
        value = value.strip()
        where.append("EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.trace_id AND (%s OR %s))" % (
            _AS_TEXT.format(col="s.attributes"), _AS_TEXT.format(col="s.resource")))
        args += [path, path, value, path, path, value]
    trace_id = _one(params, "trace_id")
    if trace_id:
        where.append("t.trace_id = ?")
        args.append(_hex(trace_id, "trace_id"))
    for name_, op in (("start_ns", ">="), ("end_ns", "<="), ("before_ns", "<")):
        value = _int(params, name_)
        if value is not None:
            where.append("t.start_ns %s ?" % op)
            args.append(value)
    limit = _int(params, "limit")
    limit = 50 if limit is None else max(1, min(limit, MAX_LIMIT))
    sql = ("SELECT t.trace_id, t.root_service, t.root_name, t.start_ns, t.end_ns, t.span_count, t.error_count "
           "FROM traces t %s ORDER BY t.start_ns DESC LIMIT ?" % ("WHERE " + " AND ".join(where) if where else ""))
    rows = db.execute(sql, args + [limit]).fetchall()
    ids = [r[0] for r in rows]
    services: dict = {}
    missing: dict = {}
    if ids:
        marks = ",".join("?" * len(ids))
        for trace_id, svc in db.execute(
                "SELECT trace_id, service FROM trace_services WHERE trace_id IN (%s)" % marks, ids):
            services.setdefault(trace_id, []).append(svc)
        missing = dict(db.execute(
            "SELECT c.trace_id, count(*) FROM spans c WHERE c.trace_id IN (%s) AND c.parent_span_id != '' "
            "AND NOT EXISTS (SELECT 1 FROM spans p WHERE p.trace_id = c.trace_id AND p.span_id = c.parent_span_id) "
            "GROUP BY c.trace_id" % marks, ids).fetchall())
    traces = []
    for trace_id, root_service, root_name, start, end, span_count, error_count in rows:
        svcs = sorted(services.get(trace_id, ()))
        traces.append({
            "trace_id": trace_id, "root_service": root_service or "", "root_name": root_name or "",
            "start_ns": str(start), "duration_ms": (end - start) / 1e6, "span_count": span_count,
            "service_count": len(svcs), "error_count": error_count, "services": svcs,
            "missing_parents": missing.get(trace_id, 0),
        })
    return {"traces": traces}


def get_trace(db: sqlite3.Connection, trace_id: str):
    """The whole trace, or None when no span of it is stored."""
    trace_id = _hex(trace_id, "trace id")
    rows = db.execute(
        "SELECT span_id, parent_span_id, name, kind, service, start_ns, end_ns, status_code, status_message, "
        "attributes, events, links, resource, scope FROM spans WHERE trace_id = ? ORDER BY start_ns, rowid",
        (trace_id,)).fetchall()
    if not rows:
        return None
    ids = {r[0] for r in rows}
    spans = []
    for (span_id, parent, name, kind, service, start, end, status, message, attributes, events, links,
         resource, scope) in rows:
        spans.append({
            "span_id": span_id, "parent_span_id": parent, "name": name, "kind": KINDS.get(kind, "UNSPECIFIED"),
            "service": service, "start_ns": str(start), "end_ns": str(end), "duration_ms": (end - start) / 1e6,
            "status_code": STATUS.get(status, "UNSET"), "status_message": message,
            "attributes": json.loads(attributes), "events": json.loads(events), "links": json.loads(links),
            "resource": json.loads(resource), "scope": json.loads(scope),
            "missing_parent": bool(parent) and parent not in ids,
        })
    return {"trace_id": trace_id, "spans": spans}


def _percentile(db: sqlite3.Connection, parent: str, child: str, calls: int, q: float) -> float:
    """Nearest-rank percentile of an edge's child durations: one seek in the (pair, duration) index."""
    rank = max(1, math.ceil(q * calls))
    row = db.execute("SELECT duration_ns FROM edges WHERE parent_service = ? AND child_service = ? "
                     "ORDER BY duration_ns LIMIT 1 OFFSET ?", (parent, child, min(rank, calls) - 1)).fetchone()
    return row[0] / 1e6 if row else 0.0


def services(db: sqlite3.Connection) -> dict:
    names = [r[0] for r in db.execute("SELECT DISTINCT service FROM span_names ORDER BY service")]
    edges = []
    for parent, child, calls, errors in db.execute(
            "SELECT parent_service, child_service, calls, errors FROM edge_stats "
            "ORDER BY parent_service, child_service").fetchall():
        edges.append({"parent": parent, "child": child, "calls": calls, "errors": errors,
                      "p50_ms": _percentile(db, parent, child, calls, 0.5),
                      "p99_ms": _percentile(db, parent, child, calls, 0.99)})
    return {"services": names, "edges": edges}


def span_names(db: sqlite3.Connection, params: dict) -> dict:
    service = _one(params, "service")
    if service:
        rows = db.execute("SELECT name FROM span_names WHERE service = ? ORDER BY name", (service,))
    else:
        rows = db.execute("SELECT DISTINCT name FROM span_names ORDER BY name")
    return {"names": [r[0] for r in rows]}

