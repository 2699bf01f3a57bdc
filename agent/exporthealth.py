"""Export bookkeeping: warn once when exporting starts failing and once when it
recovers (not once per batch), and count what was dropped, for the exit line
and `--info`.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import log


class ExportHealth(SpanExporter):
    """Wraps the real exporter; counts spans handed over, exported and failed.

    `exporter` may be a factory (a callable that is not an exporter): the real
    exporter is then built on the first export, on the export thread. Building
    it imports requests/grpc (~150 ms), which must not happen on the program's
    thread, nor inside the import hook of a library the exporter itself imports.
    """

    def __init__(self, exporter, target: str, warm=None):
        self._warm = warm
        if isinstance(exporter, SpanExporter):
            self._exporter, self._factory = exporter, None
        else:
            self._exporter, self._factory = None, exporter
        self._build_lock = threading.RLock()
        self._building = False
        self.target = target
        self.failing = False
        self.exporting = False
        self._reset()
        os.register_at_fork(before=self._before_fork, after_in_child=self._after_fork)

    def _before_fork(self) -> None:
        """Import the exporter's modules in the parent, once: else every child
        imports them itself on its first span (~100 ms each), and a child stopped
        by SIGTERM in the middle of that import cannot flush its spans."""
        if self._warm is None or self._exporter is not None:
            return
        try:
            from .runtime import imports_in_progress

            if not imports_in_progress():
                self._warm()
                self._warm = None
        except Exception:
            self._warm = None

    def _after_fork(self) -> None:
        """A forked child must not share the parent's exporter: its pooled HTTP
        connections and gRPC channel are the parent's sockets. Build a new one."""
        self._reset()
        self._build_lock = threading.RLock()
        self.exporting = False
        if self._factory is not None:
            self._exporter = None

    @property
    def exporter(self):
        if self._exporter is None:
            with self._build_lock:
                # Building imports requests/grpc, whose import hooks call back here on
                # this thread: that re-entry gets None and leaves the build to us.
                if self._exporter is None and not self._building:
                    self._building = True
                    try:
                        self._exporter = self._factory()
                    except Exception as exc:
                        log.warning("exporter for %s not set up (%s: %s); its spans are dropped"
                                    % (self.target, type(exc).__name__, exc))
                        self._exporter = _Broken()
                    finally:
                        self._building = False
        return self._exporter

    def _reset(self) -> None:
        self.handed = 0
        self.exported = 0
        self.failed = 0
        self.failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        n = len(spans)
        self.handed += n
        self.exporting = True
        try:
            result = self.exporter.export(spans)
        except Exception as exc:
            result = SpanExportResult.FAILURE
            reason = "%s: %s" % (type(exc).__name__, exc)
        else:
            reason = ""
        finally:
            self.exporting = False
        if result is SpanExportResult.SUCCESS:
            self.exported += n
            if self.failing:
                self.failing = False
                log.info("exporting to %s works again" % self.target)
        else:
            self.failed += n
            if not self.failing:
                self.failing = True
                log.warning("exporting spans to %s failed%s; retrying with later batches, "
                            "spans are dropped meanwhile" % (self.target, (" (" + reason + ")") if reason else ""))
        return result

    def shutdown(self) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._exporter is None:
            return True
        return self._exporter.force_flush(timeout_millis)


class _Broken(SpanExporter):
    def export(self, spans) -> SpanExportResult:
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


class CountingProcessor(SpanProcessor):
    """Counts sampled spans that end, in front of the real processor.

    dropped = ended - handed to the exporter (after a flush): the queue was full
    or the process ended before they could be sent.
    """

    def __init__(self, processor: SpanProcessor, health: ExportHealth, prepare=None):
        self.processor = processor
        self.health = health
        # prepare(span) -> what the processor queues instead (None: nothing); for sampled spans
        self._prepare = prepare
        # The exporter is built when the first span ends, on the program's thread
        # but outside any import: importing flask or requests stays cheap, and a
        # program that never makes a span never loads an exporter.
        self._pending = health._exporter is None
        self._counter = itertools.count()
        self._on_end = processor.on_end
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._counter = itertools.count()
        self._pending = self.health._exporter is None

    @property
    def ended(self) -> int:
        # itertools.count is atomic under the GIL (no lock on the hot path);
        # its repr, "count(N)", is the only way to read it without advancing it.
        text = repr(self._counter)
        return int(text[text.index("(") + 1 : -1])

    def on_start(self, span, parent_context=None) -> None:
        self.processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        next(self._counter)
        if self._pending:
            self._build()
        if self._prepare is not None and span.context.trace_flags.sampled:
            span = self._prepare(span)
            if span is None:
                return
        self._on_end(span)

    def _build(self) -> None:
        from .runtime import imports_in_progress

        if not imports_in_progress():  # else: the export thread builds it
            self._pending = False
            self.health.exporter  # noqa: B018 - builds it

    def shutdown(self) -> None:
        self.processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.processor.force_flush(timeout_millis)

    def dropped(self) -> int:
        return max(0, self.ended - self.health.handed)
