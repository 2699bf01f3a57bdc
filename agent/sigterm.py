"""SIGTERM: flush within OTEL_TRACE_RUN_EXIT_TIMEOUT, then die of it, as promptly as bare.

A Python-level handler runs only when the main thread comes back to the interpreter: in a C call
that releases the GIL (a psycopg2 query, hashing) that was the call's whole length, and
orchestrators send SIGKILL after a grace period. So the signal is also caught at the C level by
faulthandler, which writes to a pipe at once, from any thread, without the GIL; a watcher thread
blocked on that pipe flushes and dies of SIGTERM without waiting for the main thread. The
Python-level handler stays as well (faulthandler chains to it), for C code that keeps the GIL but
checks for signals (`re`): whichever comes first flushes. While it is installed,
`signal.getsignal(SIGTERM)` and what `signal.signal` returns show SIG_DFL, what the program would
see bare; a program that sets SIG_DFL back (after taking SIGTERM for a while) gets trace-run's handler
back in its place, and `_thread.interrupt_main(SIGTERM)`, which only simulates the signal for a
Python-level handler and does nothing to one at SIG_DFL, does nothing then either. A C call that
keeps the GIL and never checks for signals still delays the exit until it returns: no Python code
can run meanwhile.
"""

from __future__ import annotations

import _thread
import faulthandler
import functools
import os
import signal
import sys
import threading
from typing import Callable

from trace_run.core import compat, config

from . import green
from .owned_sockets import identity

_SIGTERM = signal.SIGTERM
_original_signal = signal.signal
_original_getsignal = signal.getsignal
_on_term: Callable[[], None] = None  # runtime.on_sigterm: flush (or note a flush under way), die
_fds: list = []  # read end, write end of this process's pipe, and their identities
_GRACE_S = 1.0  # beyond the exit timeout: the flush's own bounded waits end within it


def install(on_term: Callable[[], None]) -> None:
    """Take SIGTERM if the program left it at the default (main thread only, like signal.signal)."""
    global _on_term
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if _original_getsignal(_SIGTERM) is not signal.SIG_DFL:
            return  # the program (or its server) owns SIGTERM
        _on_term = on_term
        _original_signal(_SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return
    signal.signal, signal.getsignal = _signal, _getsignal
    if sys.version_info >= (3, 10):  # (its signum argument is 3.10's)
        _thread.interrupt_main = _interrupt_main
    _arm()
    os.register_at_fork(before=_mute, after_in_parent=_unmute, after_in_child=_arm)


def _on_sigterm(signum, frame) -> None:
    # Further SIGTERMs are ignored while the (bounded) flush runs: a supervisor that signals
    # twice (multiprocessing.Pool does) would otherwise kill the process in the middle of it.
    try:
        _original_signal(_SIGTERM, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    _on_term()


@functools.wraps(_original_getsignal)
def _getsignal(signalnum):
    handler = _original_getsignal(signalnum)
    return signal.SIG_DFL if handler is _on_sigterm else handler


@functools.wraps(_original_signal)
def _signal(signalnum, handler):
    if signalnum == _SIGTERM and handler is signal.SIG_DFL and _on_term is not None:
        return _take_back()
    previous = _original_signal(signalnum, handler)
    return signal.SIG_DFL if previous is _on_sigterm else previous


_original_interrupt_main = _thread.interrupt_main


@functools.wraps(_original_interrupt_main)
def _interrupt_main(signum=signal.SIGINT, /):
    if signum == _SIGTERM and _original_getsignal(_SIGTERM) is _on_sigterm:
        # bare, SIGTERM is at SIG_DFL here, which interrupt_main leaves alone: no signal was sent
        # (CPython's test_interrupt_main_noerror; trace-run's handler would flush and end the process)
        return None
    return _original_interrupt_main(signum)


def _take_back():
    """The program puts SIGTERM back to the default it saw: trace-run's handler, which stands for
    that default, comes back instead. Servers (uvicorn) restore the disposition they found after a
    graceful shutdown and raise SIGTERM again; SIG_DFL itself would end the process with no flush."""
    previous = _original_signal(_SIGTERM, _on_sigterm)
    if previous is not _on_sigterm and _fds:
        # the program's signal.signal displaced faulthandler's C handler; registering again while
        # faulthandler thinks it is still registered would not put it back
        faulthandler.unregister(_SIGTERM)
        _point_faulthandler_at(_fds[1])
    return signal.SIG_DFL if previous is _on_sigterm else previous


def _point_faulthandler_at(fd: int) -> None:
    # chain: CPython's own handler runs too. Not all_threads: reading other threads' frames without
    # the GIL crashed now and again (a thread ending meanwhile). A thread without Python state (rare:
    # the kernel gives a process's signal to its main thread first) writes nothing: the Python-level
    # handler still runs.
    faulthandler.register(_SIGTERM, file=fd, all_threads=False, chain=True)


def _mute() -> None:
    """Before a fork: a child signalled before its at-fork hook gives it a pipe of its own would
    write to ours and stop the parent. Meanwhile faulthandler writes to the pipe's read end (the
    write fails, nothing is sent); the Python-level handler still runs, in parent and child."""
    if _fds and _original_getsignal(_SIGTERM) is _on_sigterm:
        _point_faulthandler_at(_fds[0])


def _unmute() -> None:
    if _fds and _original_getsignal(_SIGTERM) is _on_sigterm:
        _point_faulthandler_at(_fds[1])


def _arm() -> None:
    """A pipe of this process's own for faulthandler to write to, and its watcher. After a fork
    the child makes its own: the parent's watcher must not take the child's SIGTERM for its own."""
    if not _make_pipe():
        return
    if green.loaded():
        return  # its threads are greenlets: a blocking read would stop the hub; the Python-level handler does it
    threading.Thread(target=_watch, name="trace-run-sigterm", daemon=True).start()


def _make_pipe() -> bool:
    """A new pipe for faulthandler while SIGTERM is ours; the old one (inherited, or closed by the
    program) is closed where its descriptors are still ours."""
    old, _fds[:] = list(_fds), []
    ours = _original_getsignal(_SIGTERM) is _on_sigterm  # else the program took SIGTERM, faulthandler's with it
    if ours:
        read_fd, write_fd = (_high(fd) for fd in os.pipe())
        os.set_blocking(write_fd, False)  # a full pipe loses bytes, it never blocks the signal handler
        _point_faulthandler_at(write_fd)
        _fds[:] = [read_fd, write_fd, identity(read_fd), identity(write_fd)]
    for fd, made in zip(old[:2], old[2:]):
        if identity(fd) == made:  # not closed (and reopened) by the program
            os.close(fd)
    return ours


def _high(fd: int) -> int:
    """`fd` moved to a high number: a program that closes descriptors and opens its own gets the
    low ones first (and `os.closerange(3, 1024)` misses ours where the descriptor limit is higher)."""
    try:
        import fcntl
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        soft = 4096 if soft < 0 else min(soft, 4096)  # RLIM_INFINITY; and a small descriptor table
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(3, soft - 64))
    except (ImportError, OSError, ValueError):
        return fd
    os.close(fd)
    return high


def _watch() -> None:
    while _fds:
        try:
            data = os.read(_fds[0], 1 << 16)
        except OSError:
            data = b""
        if not data:  # the program closed our pipe (a daemonizer closing every descriptor): a new one
            _make_pipe()
            continue
        if green.loaded():
            continue  # patched since: this real thread must not use green locks; the Python-level handler does it
        # The flush and the death each on a thread of their own, waited for within a bound: a flush stuck on
        # a lock (the main thread may hold it, interrupted by its own handler, which has SIGTERM ignored
        # meanwhile) must not leave a process that a second SIGTERM can no longer end.
        timeout = config.get("OTEL_TRACE_RUN_EXIT_TIMEOUT") / 1000.0
        compat.in_thread(_on_term, "trace-run-sigterm-exit").wait(timeout + _GRACE_S)
        compat.in_thread(die, "trace-run-sigterm-exit").wait(_GRACE_S)
        os._exit(128 + _SIGTERM)  # still alive: ended as a shell reports death by SIGTERM


def die() -> None:
    """Die of SIGTERM with its default disposition, from any thread."""
    if threading.current_thread() is threading.main_thread():
        _original_signal(_SIGTERM, signal.SIG_DFL)
    else:  # signal.signal works in the main thread only; Python's C API sets the disposition from any
        if not compat.default_signal_from_any_thread(_SIGTERM):
            os._exit(128 + _SIGTERM)  # as a shell reports death by SIGTERM
    os.kill(os.getpid(), _SIGTERM)
