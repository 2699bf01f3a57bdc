"""The export thread's waits make no object the garbage collector tracks, and its work starts when the program is
not between a full collection and a count of what is left.

A program that counts `len(gc.get_objects())` does it right after `gc.collect()` (psycopg's leak tests: three
collections, then the count). An export thread whose timer ran out meanwhile waits for the GIL until the collection
is over and gets it before the count: a request started then hands the GIL back at its first socket call with its
objects alive (~150 of urllib3's for a refused connection), and even a thread that only goes back to waiting leaves
`threading.Event.wait`'s waiter lock, bound method and argument tuple, new and tracked. Here a wait is a lock
acquired with a keyword timeout (no tuple, no new lock), and before a batch or a retry the thread waits until no
full collection happened for QUIET_S: the request then runs while the program does its work, not while it counts.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Optional

QUIET_S = 0.005  # no full collection for this long: the program is not between a collection and its count
MAX_WAIT_S = 1.0  # a program collecting all the time does not hold exports up longer than this


class QuietEvent:
    """threading.Event's set, clear, is_set and wait, for one waiting thread (the export thread), whose wait makes no
    object the garbage collector tracks. Made where the thread runs (a green lock where gevent or eventlet patched)."""

    def __init__(self) -> None:
        self._flag = False
        self._bell = threading.Lock()  # held while nothing was set: set() lets the waiter through
        self._bell.acquire()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        if self._bell.locked():
            try:
                self._bell.release()
            except RuntimeError:  # released meanwhile (by another set)
                pass

    def clear(self) -> None:
        self._flag = False
        self._bell.acquire(blocking=False)

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._flag:
            return True
        if timeout is None:
            self._bell.acquire()
        else:
            self._bell.acquire(timeout=max(0.0, timeout))  # a keyword: no argument tuple is made
        return self._flag


_pause: list = []  # a lock never released, made on first use


def _full_collections() -> int:
    return gc.get_stats()[-1]["collections"]


def prepare() -> None:
    """Make what wait_for_quiet waits on, now (where the export thread is made), not in its first wait."""
    if not _pause:
        lock = threading.Lock()
        lock.acquire()
        _pause.append(lock)


def wait_for_quiet() -> None:
    """Return once QUIET_S passed without a full collection (at most MAX_WAIT_S); never raises."""
    try:
        prepare()
        deadline = time.monotonic() + MAX_WAIT_S
        seen = _full_collections()
        while True:
            _pause[0].acquire(timeout=QUIET_S)  # (never got: it waits QUIET_S)
            now = _full_collections()
            if now == seen or time.monotonic() >= deadline:
                return
            seen = now
    except Exception:  # (gc.get_stats is CPython's): at once
        return
