"""The OTLP/HTTP client's retry loop, the SDK's step for step, holding nothing the garbage collector
tracks while it waits.

The SDK's `_OTLPHTTPClient.export` keeps a failed attempt's result through the backoff sleep that
follows it: the exception, its traceback and the frames of urllib3 that raised it (~150 objects with a
collector that refuses connections). For most of an export to a dead endpoint (1 + 2 + 4 s of a 10 s
deadline) they are alive; between exports they are not. A program that counts `len(gc.get_objects())`
around a unit of work (psycopg's leak tests) saw them come and go. Here each result is read into plain
values (ints, strs, a bool) and dropped before the sleep.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from trace_run.core import compat

from . import unreachable
from .quiet_wait import QuietEvent, wait_for_quiet


def timed_out(error: Any) -> bool:
    """Is this a read timeout (urllib3's, requests', the socket's), possibly wrapped in a retry error?"""
    return any(isinstance(e, TimeoutError) or "ReadTimeout" in type(e).__name__ for e in unreachable.within(error, 5))


class Retrying:
    """`send(data)` posts one request body as the SDK's client would (compression, immediate reconnect,
    backoff with jitter, Retry-After, the deadline, shutdown) and says (sent, unanswered)."""

    def __init__(self, client: Any):
        self._client = client
        self._parts: Optional[compat.HTTPRetry] = compat.HTTPRetry.of(client)
        self._stop = QuietEvent()  # set at shutdown, as the client's own event: a backoff ends then

    def stop(self) -> None:
        self._stop.set()

    def send(self, data: bytes) -> tuple:
        """(the collector took it, no answer came before the deadline: it may have arrived)."""
        parts = self._parts
        if parts is None:  # an SDK whose client is not the one read here: its own loop
            sent = self._client.export(data)
            return sent.success, not sent.success and sent.status_code is None and timed_out(sent.error)
        data = parts.compress(data)
        deadline = time.time() + parts.timeout
        logger, kind = parts.logger, parts.kind
        for retry in range(parts.max_retries):
            if retry:
                wait_for_quiet()  # (the first attempt's moment was chosen before its batch was taken)
            backoff = parts.backoff(retry)
            status_code = reason = None
            try:
                result = parts.submit(data, max(deadline - time.time(), 0.0))
            except Exception as exc:
                error, retryable = exc, False
            else:
                status_code, reason, error = result.status_code, result.reason, result.error
                if status_code is not None and 200 <= status_code < 400:
                    return True, False
                retryable = parts.is_retryable(status_code) if status_code else parts.is_connection_error(error)
                if retryable and status_code is not None:
                    after = parts.retry_after(result)
                    if after is not None:
                        backoff = after
                result = None
            if not retryable:
                logger.error("Failed to export %s batch code: %s, reason: %s", kind, status_code,
                             reason or error or "unknown")
                return False, status_code is None and timed_out(error)
            if retry + 1 == parts.max_retries or backoff > deadline - time.time() or parts.shutdown_event.is_set():
                logger.error("Failed to export %s batch due to timeout, max retries or shutdown.", kind)
                return False, status_code is None and timed_out(error)
            logger.warning("Transient error %s encountered while exporting %s batch, retrying in %.2fs.",
                           reason or error, kind, backoff)
            error = None  # (with its traceback and frames): nothing of this attempt lives through the wait
            if self._stop.wait(backoff) or parts.shutdown_event.is_set():  # (a wait making no tracked object)
                logger.warning("Shutdown in progress, aborting retry.")
                break
        return False, False
