"""Whether an export found nobody listening at the collector (connection refused, no route, the name
not resolvable), and when.

At exit such a batch is not retried: the exporter's backoff (1 s, then 2 s, ...) would hold the
program's exit for half of OTEL_TRACE_RUN_EXIT_TIMEOUT with no one to deliver to, on every run of a
short program whose collector is down (runtime._flush_at_exit). A refusal is an answer; a collector
that is slow, or answers 429/503, is still retried within the exit timeout.
"""

from __future__ import annotations

import errno
import socket
import time

_NO_ONE_THERE = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL))
_last = [0.0]  # time.monotonic() of the last refusal (0: none)


def within(error: BaseException, depth: int = 8):
    """`error` and what it wraps, outermost first: urllib3's `reason`, the cause or context, requests'
    first argument (a ConnectionError around a MaxRetryError)."""
    for _ in range(depth):
        if error is None:
            return
        yield error
        args = getattr(error, "args", ())
        error = (getattr(error, "reason", None) or error.__cause__ or error.__context__
                 or (args[0] if args and isinstance(args[0], BaseException) else None))


def refused(error: BaseException) -> bool:
    """Is `error`, or what it wraps (urllib3's NewConnectionError and MaxRetryError, requests'
    ConnectionError), a connection nobody took?"""
    return any(isinstance(e, socket.gaierror) or (isinstance(e, OSError) and e.errno in _NO_ONE_THERE)
               for e in within(error))


def note(error: BaseException) -> None:
    """Called by the exporters' transports with each failed attempt's error."""
    try:
        if refused(error):
            _last[0] = time.monotonic()
    except Exception:  # an error object we cannot read: not a refusal we know of
        pass


def since(moment: float) -> bool:
    """Was a connection refused at or after `moment` (time.monotonic())?"""
    return _last[0] >= moment
