"""While the exporter's build reads files on a thread of trace-run's, a program that closes
descriptors waits for it (within _WAIT_S).

The build imports ~70 modules: each import opens a file, reads it and closes it. A daemonizer's
`os.closerange` between that open and close took the file from under the import, the program's
next `open` got the same number, and the import's own close then closed the program's file (its
next write: EBADF). Retrying the build does not undo that, so `os.closerange` and `os.close` wait
while a build reads. They are wrapped only for that while (a program that took a reference to them
meanwhile keeps one that passes straight through), and the reading thread itself never waits.
Under gevent or eventlet nothing is wrapped: a greenlet does not yield in the middle of an import's
blocking read, so no other greenlet can close its file meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import Iterator

_WAIT_S = 3.0
_real_close = os.close
_real_closerange = os.closerange
_readers: set = set()  # idents of the threads reading now
_state: dict = {}  # "cond": the Condition they notify, made on first use (after gevent's patching)


def _wait_for_readers() -> None:
    cond = _state.get("cond")
    if cond is not None and _readers and threading.get_ident() not in _readers:
        with cond:
            cond.wait_for(lambda: not _readers, _WAIT_S)


@functools.wraps(_real_close)
def _close(*args, **kwargs):
    _wait_for_readers()
    return _real_close(*args, **kwargs)


@functools.wraps(_real_closerange)
def _closerange(*args, **kwargs):
    _wait_for_readers()
    return _real_closerange(*args, **kwargs)


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """The calling thread reads files: the program's closes wait until it is done."""
    from . import green

    if green.loaded():
        yield
        return
    cond = _state.get("cond") or _state.setdefault("cond", threading.Condition(threading.Lock()))
    me = threading.get_ident()
    with cond:
        _readers.add(me)
        if os.close is _real_close:  # a program's own wrapper is left alone
            os.close = _close
        if os.closerange is _real_closerange:
            os.closerange = _closerange
    try:
        yield
    finally:
        with cond:
            _readers.discard(me)
            if not _readers:
                _restore()
            cond.notify_all()


def _restore() -> None:
    if os.close is _close:
        os.close = _real_close
    if os.closerange is _closerange:
        os.closerange = _real_closerange


def _after_fork_in_child() -> None:
    """The child has none of the parent's reading threads (a fork waits for a build, within a bound)."""
    _readers.clear()
    _state.clear()
    _restore()


os.register_at_fork(after_in_child=_after_fork_in_child)
