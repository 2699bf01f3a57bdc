"""Living beside gevent and eventlet, which swap `threading`, `socket` and `ssl` for
green versions when the program (or its gunicorn worker) monkey-patches.

Whatever the agent creates before that patching stays un-green: a module that kept
a direct reference to `ssl` (urllib3) makes every HTTPS call recurse, and a real
thread started before `threading` was patched dies at exit with "Exception ignored
in thread". So the agent imports no such module ahead of the program in a process
where gevent or eventlet is loaded, and starts its export thread only when the
first span ends: by then the program runs its own code, patched.
"""

from __future__ import annotations

import os
import sys
import threading

from trace_run.core import log

_GREEN = ("gevent", "eventlet")


def loaded() -> bool:
    """Whether this process may monkey-patch: gevent or eventlet is imported (a gunicorn
    master imports its worker class, hence the library, before it forks the workers)."""
    return any(name in sys.modules for name in _GREEN)


def threads_patched() -> bool:
    """Whether gevent or eventlet made `threading`'s threads green in this process (imported is not enough: a test
    suite that collects a gevent test imports gevent and patches nothing). Unsure: True."""
    for module, check, name in (("gevent.monkey", "is_module_patched", "threading"),
                                ("eventlet.patcher", "is_monkey_patched", "thread")):
        found = sys.modules.get(module)
        if found is None:  # (patching goes through this module)
            continue
        try:
            if getattr(found, check)(name):
                return True
        except Exception:
            return True
    return False


class StartsOnFirstSpan:
    """A span processor built by `factory` when the first span ends, not when the SDK is
    set up (an import hook may set it up in a gunicorn master, or in the middle of
    eventlet.monkey_patch(), which imports psycopg2). Until then it holds nothing, so a
    process that ends no span never starts the BatchSpanProcessor's thread."""

    def __init__(self, factory, inert_on_start: bool = False) -> None:
        self._factory = factory
        self.inert_on_start = inert_on_start  # what factory makes does nothing on start (fastspan skips the call)
        self._processor = None
        self._built: list = []  # called with the processor once it is built (see when_built)
        self._locks: dict = {}
        os.register_at_fork(after_in_child=self._locks.clear)  # a child never waits on its parent's builder

    def _start(self):
        # The lock, too, is made on first use (a green one once the program patched);
        # dict.setdefault is atomic, so racing threads share it.
        lock = self._locks.get("start") or self._locks.setdefault("start", threading.Lock())
        with lock:
            if self._processor is None:
                try:
                    self._processor = self._factory()
                    for callback in self._built:
                        callback(self._processor)
                except Exception as exc:  # RuntimeError: no new thread at interpreter shutdown (3.12)
                    log.warning_once("export-thread", "spans dropped: the export thread did not start (%s: %s)"
                                     % (type(exc).__name__, exc))
        return self._processor

    def when_built(self, callback) -> None:
        """callback(processor) once it is built: a caller may then hand it spans itself."""
        self._built.append(callback)

    def on_start(self, span, parent_context=None) -> None:
        if self._processor is not None:
            self._processor.on_start(span, parent_context=parent_context)

    def on_end(self, span) -> None:
        processor = self._processor or self._start()
        if processor is not None:  # else the span is dropped, and counted so at exit
            processor.on_end(span)

    def shutdown(self) -> None:
        if self._processor is not None:
            self._processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._processor is None:
            return True
        return self._processor.force_flush(timeout_millis)
