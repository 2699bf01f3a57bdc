"""The real exporter, built when first needed, and again in a forked child.

Building it imports urllib3 or grpc and reads files (~20-70 ms). That happens on the program's
thread that ends the first span outside any import (`build_here`, from exporthealth.CountingProcessor),
not on a thread of trace-run's: an import adds to `sys.modules`, and a program walking it (CPython's
regrtest between two tests, a plugin scanner) while another thread imported failed with "dictionary
changed size during iteration", which a single-threaded program never sees bare. The build also
imports what the first export would (sdk._import_what_the_first_export_imports), so the export
thread imports nothing. One exception: a thread running an asyncio event loop must not block on
imports and file reads (the first request would wait; under blockbuster, Starlette's own test suite,
the build raised BlockingError and every span was dropped), so there the build runs on a short-lived
thread of its own (`_build_beside`). Where every span ends inside an import, the export thread or
the exit flush builds it, as the last resort. A forked child must not share the parent's exporter
(its pooled HTTP connections and gRPC channel are the parent's sockets): it builds its own.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Optional, Sequence

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from trace_run.core import compat, config, hooks, log

from . import closing_waits

_FORK_WAIT_S = 2.0  # how long a fork waits for a build under way in another thread


class LazyExporter(SpanExporter):
    def __init__(self, factory: Callable[[], SpanExporter], target: str, warm: Optional[Callable[[], None]] = None,
                 scrub=str):
        self._factory = factory
        self._warm = warm  # imports what the factory will import (before a fork, once, in the parent)
        self._scrub = scrub  # masks the endpoint's credentials in error texts (urlmask.scrubber)
        self.target = target
        self.built: Optional[SpanExporter] = None
        self._exit_hook = False  # _finish_build_at_exit is registered
        os.register_at_fork(before=self.prepare_for_fork, after_in_child=self._after_fork)

    def get(self) -> SpanExporter:
        """The real exporter, built now if it is not yet (a broken one that fails every export if it cannot be)."""
        if self.built is None:
            # its imports' hooks (requests, urllib3, grpc) run once it is built (core.hooks.held)
            # reading() outermost: the held hooks run (importing instrumentors) as held() ends
            with closing_waits.reading(), self._lock(), hooks.held():
                if self.built is None:
                    self.built = self._build()
        return self.built

    def _build(self) -> SpanExporter:
        """Two tries: a program that closes every descriptor (a daemonizer's closerange) while the
        builder imports takes the file being read from under it (EBADF); the second try reads again."""
        for attempt in (1, 2):
            try:
                return self._factory()
            except Exception as exc:
                if attempt == 2:
                    log.warning("exporter for %s not set up (%s: %s); its spans are dropped"
                                % (self.target, type(exc).__name__, self._scrub(exc)))
        return _Broken()

    def build_here(self) -> bool:
        """Build it now, on this thread (the program's, ending a span), or beside it where this thread runs
        an event loop. Not while this thread is inside an import: the build's own imports could meet the
        half-imported module. Whether it is built or under way (else a later span end tries again)."""
        if self.built is not None:
            return True
        if hooks.busy() or compat.importing_here():
            return False
        if compat.on_event_loop():
            self._build_beside()
        else:
            self._build_quietly()
        return True

    def _build_beside(self) -> None:
        """Start building it on a thread of its own, once (a thread made now, when the first span
        ends: by then gevent or eventlet, if the program uses them, have patched `threading`).
        Until it is built, spans queue unencoded; whoever needs it first (the export thread, the
        exit flush) waits for this build, within their own time bounds."""
        if self.built is not None or "_builder" in self.__dict__:
            return
        thread = threading.Thread(target=self._build_quietly, name="trace-run-exporter-build", daemon=True)
        if self.__dict__.setdefault("_builder", thread) is not thread:
            return  # another thread ending a first span got here first
        try:
            thread.start()
        except RuntimeError:  # no new threads at interpreter shutdown: the export builds it
            return
        if not self._exit_hook:  # once: a forked child inherits it (and joins its own builder)
            self._exit_hook = compat.before_threads_stop(self._finish_build_at_exit)

    def _finish_build_at_exit(self) -> None:
        """The main thread ended while the exporter is being built: wait for it (within the exit
        timeout) before the interpreter shuts down what building it needs (concurrent.futures,
        which the SDK's Resource.create uses at import: "cannot schedule new futures")."""
        builder = self.__dict__.get("_builder")
        if builder is not None and builder.is_alive() and builder is not threading.current_thread():
            builder.join(config.get("OTEL_TRACE_RUN_EXIT_TIMEOUT") / 1000.0)

    def _build_quietly(self) -> None:
        try:
            self.get()
        except Exception:  # get() reports what it cannot build; nothing may escape into the program or a thread of ours
            pass

    def _lock(self):
        """Made on first use, not ahead: a lock made before gevent or eventlet patches
        `threading` stays a real one (eventlet: "RLock(s) were not greened"). setdefault
        is atomic: threads racing here share one lock."""
        return self.__dict__.get("_build_lock") or self.__dict__.setdefault("_build_lock", threading.RLock())

    def prepare_for_fork(self) -> None:
        """What a fork runs first; also called by a parent about to fork (gunicorn's master, see boot).
        Import the exporter's modules in the parent, once: else every child
        imports them itself on its first span (~100 ms each), and a child stopped
        by SIGTERM in the middle of that import cannot flush its spans."""
        builder = self.__dict__.get("_builder")
        if builder is not None and builder.ident is not None and builder is not threading.current_thread():
            # A build under way: the child must not inherit its half-done imports (their
            # module locks belong to a thread that does not exist there).
            builder.join(_FORK_WAIT_S)
        lock = self.__dict__.get("_build_lock")
        if lock is not None and lock.acquire(timeout=_FORK_WAIT_S):  # one on another of the program's threads
            lock.release()
        if self._warm is None or self.built is not None:
            return
        from . import green

        if green.loaded():  # the workers monkey-patch: they must be the first to import ssl users
            return
        try:
            if not hooks.busy():
                with hooks.held():
                    self._warm()
                self._warm = None
        except Exception:
            self._warm = None

    def _after_fork(self) -> None:
        self.__dict__.pop("_build_lock", None)
        # a forked child builds on demand (its export or exit flush), as before the builder thread:
        # multiprocessing children exit through os._exit right after their work, and a builder
        # thread racing that exit lost their spans now and again
        self.__dict__["_builder"] = None
        self.built = None

    def export(self, spans: Sequence) -> SpanExportResult:
        return self.get().export(spans)

    def shutdown(self) -> None:
        if self.built is not None:
            self.built.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True if self.built is None else self.built.force_flush(timeout_millis)


class _Broken(SpanExporter):
    def export(self, spans) -> SpanExportResult:
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass
