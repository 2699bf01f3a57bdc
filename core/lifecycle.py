"""The narrow part of the agent's runtime that instrumentors may call, without importing the agent.

The agent registers its exit flush here when it builds the SDK; a program that applies an
instrumentor itself (no agent) has nothing of ours to flush, and the call does nothing.
"""

from typing import Callable, Optional

_exit_flush: Optional[Callable[[], None]] = None


def on_exit_flush(flush: Callable[[], None]) -> None:
    global _exit_flush
    _exit_flush = flush


def flush_at_exit() -> None:
    """Send the spans held, bounded by OTEL_TRACE_RUN_EXIT_TIMEOUT (a process about to leave through os._exit)."""
    flush = _exit_flush
    if flush is not None:
        flush()
