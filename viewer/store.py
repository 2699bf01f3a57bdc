"""The SQLite store: spans kept whole, a summary row per trace, cross-service edges.

One writer (the ingest thread) and many readers (the HTTP threads), in WAL mode. The
per-trace summary and the cross-service edges are maintained on insert, so that the
pages read small tables instead of scanning spans.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import sys
import threading
from typing import Optional

SPAN_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "service", "start_ns", "end_ns",
                "status_code", "status_message", "attributes", "events", "links", "resource", "scope")
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
MAX_IDLE_READERS = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL, name TEXT NOT NULL,
    kind INTEGER NOT NULL, service TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status_code INTEGER NOT NULL, status_message TEXT NOT NULL, attributes TEXT NOT NULL,
    events TEXT NOT NULL, links TEXT NOT NULL, resource TEXT NOT NULL, scope TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS spans_by_id ON spans (trace_id, span_id);
CREATE INDEX IF NOT EXISTS spans_by_parent ON spans (trace_id, parent_span_id);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL, error_count INTEGER NOT NULL, root_service TEXT, root_name TEXT,
    root_start INTEGER, has_root INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_by_seq ON traces (seq);
CREATE TABLE IF NOT EXISTS trace_services (
    trace_id TEXT NOT NULL, service TEXT NOT NULL, PRIMARY KEY (trace_id, service)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trace_services_by_service ON trace_services (service, trace_id);
CREATE TABLE IF NOT EXISTS span_names (
    service TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (service, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges (
    trace_id TEXT NOT NULL, parent_service TEXT NOT NULL, child_service TEXT NOT NULL,
    duration_ns INTEGER NOT NULL, error INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS edges_by_trace ON edges (trace_id);
CREATE INDEX IF NOT EXISTS edges_by_pair ON edges (parent_service, child_service, duration_ns);
CREATE TABLE IF NOT EXISTS edge_stats (
    parent_service TEXT NOT NULL, child_service TEXT NOT NULL, calls INTEGER NOT NULL, errors INTEGER NOT NULL,
    PRIMARY KEY (parent_service, child_service)) WITHOUT ROWID;
"""

_INSERT_SPAN = "INSERT OR IGNORE INTO spans (%s) VALUES (%s)" % (
    ", ".join(SPAN_COLUMNS), ", ".join("?" * len(SPAN_COLUMNS)))
# The summary of the spans just inserted (rowid > ?), merged into each trace's row.
_MERGE_TRACES = """
INSERT INTO traces (trace_id, seq, start_ns, end_ns, span_count, error_count)
SELECT trace_id, min(rowid), min(start_ns), max(end_ns), count(*), sum(status_code = 2)
FROM spans NOT INDEXED WHERE rowid > ? GROUP BY trace_id
ON CONFLICT (trace_id) DO UPDATE SET
    start_ns = min(start_ns, excluded.start_ns), end_ns = max(end_ns, excluded.end_ns),
    span_count = span_count + excluded.span_count, error_count = error_count + excluded.error_count
"""
# A root is the span without a parent; until one arrives, the earliest span stands in.
_SET_ROOT = """
UPDATE traces SET root_service = ?, root_name = ?, root_start = ?, has_root = ?
WHERE trace_id = ? AND has_root = 0 AND (? = 1 OR root_start IS NULL OR ? < root_start)
"""
# Cross-service parent/child pairs completed by this batch: new children of any parent,
# and new parents of children stored earlier. The batch's rows are found by rowid; NOT INDEXED
# and CROSS JOIN (outer loop first) keep the planner from scanning an index of the whole store.
_NEW_CHILD_EDGES = """
INSERT INTO edges SELECT c.trace_id, p.service, c.service, c.end_ns - c.start_ns, c.status_code = 2
FROM spans c CROSS JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id
WHERE c.rowid > ? AND c.parent_span_id != '' AND p.service != c.service
"""
_COUNT_NEW_EDGES = """
INSERT INTO edge_stats SELECT parent_service, child_service, count(*), sum(error)
FROM edges NOT INDEXED WHERE rowid > ? GROUP BY parent_service, child_service
ON CONFLICT (parent_service, child_service) DO UPDATE SET
    calls = calls + excluded.calls, errors = errors + excluded.errors
"""
_NEW_PARENT_EDGES = """
INSERT INTO edges SELECT c.trace_id, p.service, c.service, c.end_ns - c.start_ns, c.status_code = 2
FROM spans p CROSS JOIN spans c ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id
WHERE p.rowid > ? AND c.rowid <= ? AND p.service != c.service
"""


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA cache_size = -32000")  # 32 MB per connection
    return conn


def open_db(path: str) -> sqlite3.Connection:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    conn = connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(SCHEMA)
    return conn


class Store:
    """Owns the database file: a writer thread for ingest, a pool of reader connections."""

    def __init__(self, path: str, max_spans: int = 1_000_000, queue_batches: int = 32):
        self.path = path
        self.max_spans = max_spans
        self._db = open_db(path)
        self.span_count = self._db.execute("SELECT coalesce(sum(span_count), 0) FROM traces").fetchone()[0]
        self._queue: queue.Queue = queue.Queue(maxsize=queue_batches)
        self._readers: queue.LifoQueue = queue.LifoQueue()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.batch_rows = 20000
        if self.span_count > max_spans:  # a restart with a smaller --max-spans
            self._db.execute("BEGIN IMMEDIATE")
            self._evict(self._db)
            self._db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------
    def start(self) -> Store:
        self._thread = threading.Thread(target=self._run, name="trace-run-view-writer", daemon=True)
        self._thread.start()
        return self

    def submit(self, rows: list, timeout: float = 10.0) -> bool:
        """Queue rows for the writer; False when it is this far behind (the sender retries)."""
        if not rows:
            return True
        try:
            self._queue.put(rows, timeout=timeout)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]  # rows (a list), a flush Event, or None to stop
            count = len(items[0]) if isinstance(items[0], list) else 0
            while count < self.batch_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(more)
                count += len(more) if isinstance(more, list) else 0
            batch = [row for item in items if isinstance(item, list) for row in item]
            try:
                if batch:
                    self.insert(batch)
            except Exception as exc:  # a bad batch must not stop ingest
                sys.stderr.write("trace-run view: could not store %d spans: %s\n" % (len(batch), exc))
            for item in items:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    item.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is stored."""
        event = threading.Event()
        self._queue.put(event)
        return event.wait(timeout)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break
        self._db.close()

    def insert(self, rows: list) -> int:
        """Store span rows (one transaction); returns how many were new. Writer thread only."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.execute("SELECT coalesce(max(rowid), 0) FROM spans").fetchone()[0]
            added = db.executemany(_INSERT_SPAN, rows).rowcount
            if added:
                db.execute(_MERGE_TRACES, (before,))
                db.executemany(_SET_ROOT, _roots(rows))
                db.executemany("INSERT OR IGNORE INTO trace_services VALUES (?, ?)", {(r[0], r[5]) for r in rows})
                db.executemany("INSERT OR IGNORE INTO span_names VALUES (?, ?)", {(r[5], r[3]) for r in rows})
                edges_before = db.execute("SELECT coalesce(max(rowid), 0) FROM edges").fetchone()[0]
                db.execute(_NEW_CHILD_EDGES, (before,))
                db.execute(_NEW_PARENT_EDGES, (before, before))
                db.execute(_COUNT_NEW_EDGES, (edges_before,))
                self.span_count += added
                if self.span_count > self.max_spans:
                    self._evict(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    def _evict(self, db: sqlite3.Connection) -> None:
        """Drop the oldest traces (first seen first), whole, until the store holds max_spans."""
        excess = self.span_count - self.max_spans
        victims = []
        for trace_id, count in db.execute("SELECT trace_id, span_count FROM traces ORDER BY seq"):
            victims.append((trace_id,))
            excess -= count
            self.span_count -= count
            if excess <= 0:
                break
        gone: dict = {}
        for (trace_id,) in victims:
            for parent, child, calls, errors in db.execute(
                    "SELECT parent_service, child_service, count(*), sum(error) FROM edges WHERE trace_id = ? "
                    "GROUP BY parent_service, child_service", (trace_id,)):
                total = gone.setdefault((parent, child), [0, 0])
                total[0] += calls
                total[1] += errors
        db.executemany("UPDATE edge_stats SET calls = calls - ?, errors = errors - ? "
                       "WHERE parent_service = ? AND child_service = ?",
                       [(c, e, p, ch) for (p, ch), (c, e) in gone.items()])
        db.execute("DELETE FROM edge_stats WHERE calls <= 0")
        services = {row[0] for (trace_id,) in victims
                    for row in db.execute("SELECT service FROM trace_services WHERE trace_id = ?", (trace_id,))}
        for table in ("spans", "traces", "trace_services", "edges"):
            db.executemany("DELETE FROM %s WHERE trace_id = ?" % table, victims)
        for service in services:  # a service none of the remaining traces has leaves the map
            if db.execute("SELECT 1 FROM trace_services WHERE service = ? LIMIT 1", (service,)).fetchone() is None:
                db.execute("DELETE FROM span_names WHERE service = ?", (service,))

    # -- reading ---------------------------------------------------------------------------
    def reader(self) -> _Reader:
        return _Reader(self)

    def _take(self) -> sqlite3.Connection:
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            return connect(self.path)

    def _give(self, conn: sqlite3.Connection) -> None:
        if self._readers.qsize() >= MAX_IDLE_READERS:  # a burst of requests leaves no lasting caches
            conn.close()
        else:
            self._readers.put(conn)


class _Reader:
    """`with store.reader() as db:` a pooled read connection."""

    def __init__(self, store: Store):
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._conn = self._store._take()
        return self._conn

    def __exit__(self, *exc) -> None:
        if self._conn.in_transaction:
            self._conn.rollback()
        self._store._give(self._conn)


def _roots(rows: list) -> list:
    """Per trace in the batch, its root candidate: a parentless span, else the earliest."""
    best: dict = {}
    for r in rows:
        trace_id, parent, start = r[0], r[2], r[6]
        is_root = 0 if parent else 1
        cur = best.get(trace_id)
        if cur is None or (is_root, -start) > (cur[3], -cur[2]):
            best[trace_id] = (r[5], r[3], start, is_root)
    return [(svc, name, start, is_root, tid, is_root, start) for tid, (svc, name, start, is_root) in best.items()]
