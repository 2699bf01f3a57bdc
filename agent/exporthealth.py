"""Export bookkeeping: warn once when exporting starts failing and once when it
recovers (not once per batch), and count where every span went, for the exit
line: exported (the collector acknowledged it), failed (refused, or the
collector unreachable), sent without an answer (timed out, or still in flight
when the exit timeout ran out: it may have arrived), or dropped (never sent:
the queue was full, or it was still queued, or the exporter already shut,
at exit). Also the queue's byte budget and splitting batches by request size.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from trace_run.core import compat, log

from . import owned_sockets
from .lazy_exporter import LazyExporter
from .otlp_encoder import Encoded, _native_or_none, hand_over
from .own_logs import here as _here

_SAMPLED = 0x01  # TraceFlags.SAMPLED
_FRAME = 6  # bytes framing one encoded span in a request (tag, length)


class QueueBudget:
    """Spans queued (as the BatchSpanProcessor counts them: until taken for export) and encoded bytes
    held (until their export returns: a batch stuck on a hung collector is memory too). A span over
    either bound is refused, and counted dropped. Spans not encoded as they ended count as 0 bytes.
    Its fields are slots: the C on_end reads them at each span's end."""

    __slots__ = ("max_spans", "max_bytes", "_lock", "spans", "bytes")

    def __init__(self, max_spans: int, max_bytes: int):
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # the child's queue starts empty too

    def reset(self) -> None:
        self._lock = threading.Lock()
        self.spans = 0
        self.bytes = 0

    def admit(self, span) -> bool:
        size = len(span.data) if type(span) is Encoded else 0
        with self._lock:
            if self.spans >= self.max_spans or self.bytes + size > self.max_bytes:
                return False
            self.spans += 1
            self.bytes += size
            return True

    def taken(self, count: int) -> None:
        """`count` spans left the queue for an export."""
        with self._lock:
            self.spans = max(0, self.spans - count)

    def freed(self, size: int) -> None:
        """Their export returned: their `size` bytes are no longer held."""
        with self._lock:
            self.bytes = max(0, self.bytes - size)


def encoded_size(spans: Sequence) -> int:
    return sum([len(s[0]) for s in spans if type(s) is Encoded])  # (s[0]: s.data, without its property call)


def _room(max_bytes: int) -> int:
    return max_bytes - min(64 * 1024, max_bytes // 4)  # for the resource and scope framing


def whole(spans: Sequence, max_bytes, size: int = None) -> bool:
    """`spans` fit one request (`size`: their encoded_size, where the caller has it; else they are walked)."""
    if not max_bytes or len(spans) < 2:
        return True
    if size is None:
        size = encoded_size(spans)
    return size + _FRAME * len(spans) <= _room(max_bytes)


def split(spans: Sequence, max_bytes, size: int = None) -> list:
    """`spans` in runs whose encoded requests stay under max_bytes (a span bigger than that goes alone).
    `size`: their encoded_size, where the caller has it (a batch that fits whole is not walked again)."""
    if not max_bytes or len(spans) < 2:
        return [spans]
    room = _room(max_bytes)
    if size is not None and size + _FRAME * len(spans) <= room:
        return [spans]
    chunks, current, size = [], [], 0
    for span in spans:
        n = len(span.data) + _FRAME if type(span) is Encoded else 0
        if current and size + n > room:
            chunks.append(current)
            current, size = [], 0
        current.append(span)
        size += n
    chunks.append(current)
    return chunks


class CountingExporter(SpanExporter):
    """In front of the exporter: counts spans handed over, exported, failed, unanswered and unsent;
    warns once when exporting starts failing and once when it recovers; splits batches to stay
    under `max_request_bytes`; gives the queue's byte budget back as batches leave.

    `exporter` may be a LazyExporter: then the real one is built on first use (see `exporter`).
    """

    def __init__(self, exporter: SpanExporter, target: str, budget: QueueBudget = None, max_request_bytes=None,
                 scrub=str, hands_over: bool = False):
        """`hands_over`: export() runs on a batch processor's thread, and hands the GIL over first: the
        SDK's batch handling before it (~0.25 ms for 512 spans) and the bookkeeping here are then two
        stretches of the GIL for a waiting request thread, not one (see otlp_encoder.hand_over)."""
        self._hand_over = hand_over if hands_over else None
        self._inner = exporter
        self._lazy = exporter if isinstance(exporter, LazyExporter) else None
        self._scrub = scrub  # masks the endpoint's credentials in error texts (urlmask.scrubber)
        self.budget = budget  # released as spans leave the queue
        self.max_request_bytes = max_request_bytes  # batches are split to stay under it
        self._counts_lock = threading.Lock()
        self.target = target
        self.failing = False
        self.exporting = False
        self.export_started = 0.0  # time.monotonic() of the last export's start (agent/unreachable.py)
        self._reset()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._reset()
        self._counts_lock = threading.Lock()
        self.exporting = False

    @property
    def built(self):
        """The real exporter if it exists yet, else None (nothing is built)."""
        return self._lazy.built if self._lazy is not None else self._inner

    def prepare_for_fork(self) -> None:
        if self._lazy is not None:
            self._lazy.prepare_for_fork()

    def build_here(self) -> bool:
        """Build the real exporter on this thread unless it is inside an import (LazyExporter.build_here).
        Whether it is built."""
        return self._lazy.build_here() if self._lazy is not None else True

    @property
    def exporter(self) -> SpanExporter:
        """The real exporter, built now if need be."""
        return self._lazy.get() if self._lazy is not None else self._inner

    def _reset(self) -> None:
        self.handed = 0  # taken from the queue; each then lands in one of the four below (or is in flight)
        self.exported = 0
        self.failed = 0
        self.unanswered = 0  # sent, no answer before the export timed out: may have arrived
        self.unsent = 0  # the exporter was already shut (at exit): never sent
        self.failing = False
        self.closed = False

    def _count(self, name: str, n: int) -> None:
        with self._counts_lock:
            setattr(self, name, getattr(self, name) + n)

    def counts(self) -> dict:
        """One consistent reading; `in_flight`: handed to the exporter, no result yet."""
        with self._counts_lock:
            out = {k: getattr(self, k) for k in ("handed", "exported", "failed", "unanswered", "unsent")}
        out["in_flight"] = out["handed"] - out["exported"] - out["failed"] - out["unanswered"] - out["unsent"]
        return out

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._hand_over is not None:
            self._hand_over()
        budget = self.budget
        if budget is None:
            return self._export_batch(spans, None)
        budget.taken(len(spans))
        size = encoded_size(spans)  # once: for the split and for the budget (each a walk of the batch)
        try:
            return self._export_batch(spans, size)
        finally:
            budget.freed(size)

    def _export_batch(self, spans: Sequence, size) -> SpanExportResult:
        self._count("handed", len(spans))
        if size is not None and whole(spans, self.max_request_bytes, size):
            # one request: no list of chunks made (nothing tracked of this batch's is held while it is retried)
            if self.closed:
                self._count("unsent", len(spans))
                return SpanExportResult.FAILURE
            return self._export(spans)
        result = SpanExportResult.SUCCESS
        chunks = split(spans, self.max_request_bytes, size)
        for i, chunk in enumerate(chunks):
            if self.closed:  # shut at exit: what is left is never sent
                self._count("unsent", sum(len(c) for c in chunks[i:]))
                return SpanExportResult.FAILURE
            result = self._export(chunk)
            if result is not SpanExportResult.SUCCESS:
                # the collector is failing now: the rest of this batch is not tried (as a batch that fails whole)
                self._count("failed", sum(len(c) for c in chunks[i + 1:]))
                break
        return result

    def _export(self, spans: Sequence) -> SpanExportResult:
        n = len(spans)
        self.export_started = time.monotonic()
        self.exporting = True
        _here.on = True
        exporter = self.exporter
        try:
            owned_sockets.release_reused(exporter)
            result = exporter.export(spans)
        except Exception as exc:
            result = SpanExportResult.FAILURE
            reason = "%s: %s" % (type(exc).__name__, self._scrub(exc))
        else:
            reason = ""
        finally:
            self.exporting = _here.on = False
        if result is SpanExportResult.SUCCESS:
            self._count("exported", n)
            if self.failing:
                self.failing = False
                log.info("exporting to %s works again" % self.target)
        else:
            # trace-run's exporters say whether the request went out and no answer came (a timeout)
            self._count("unanswered" if getattr(exporter, "unanswered", False) else "failed", n)
            if not self.failing:
                self.failing = True
                log.warning("exporting spans to %s failed%s; retrying with later batches, "
                            "spans are dropped meanwhile" % (self.target, (" (" + reason + ")") if reason else ""))
        return result

    def shutdown(self) -> None:
        self.closed = True
        built = self.built
        if built is not None:
            owned_sockets.release_reused(built)  # closing the pools must not close the program's files
            built.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        built = self.built
        return True if built is None else built.force_flush(timeout_millis)


def _ignore(_span) -> None:
    pass


class CountingProcessor(SpanProcessor):
    """Counts sampled spans that end, in front of the real processor.

    dropped = ended - handed to the exporter (after a flush): the queue was full
    (in spans or in bytes, see QueueBudget) or the process ended before they
    could be sent.

    Its fields are slots: the C on_end (below) reads them at each span's end.
    """

    __slots__ = ("processor", "health", "_prepare", "_encode", "_admit", "_pending", "_counter", "_on_end",
                 "_sampled_only")

    def __init__(self, processor: SpanProcessor, health: CountingExporter, prepare=None, budget: QueueBudget = None):
        self.processor = processor
        self.health = health
        # prepare(span) -> what the processor queues instead (None: nothing); for sampled spans
        self._prepare = prepare
        # encode(span) -> its bytes, or None for prepare to answer: the C encoder alone, called here once prepare
        # hands it over (it does once the exporter takes encoded spans and no rule redacts; see sdk._preencoder)
        self._encode = None
        hand_over = getattr(prepare, "hand_over", None)
        if hand_over is not None:
            hand_over(self._take_encoder)
        self._admit = budget.admit if budget is not None else None  # the queue's bounds (spans, bytes)
        # The exporter is built when the first span ends outside any import, on the thread that ends
        # it (never on one of trace-run's: see lazy_exporter): importing flask or requests stays
        # cheap, and a program that never makes a span never loads an exporter.
        self._pending = health.built is None
        self._counter = itertools.count()
        self._on_end = processor.on_end
        self._sampled_only = False  # _on_end takes sampled spans only (it is the batch queue's emit)
        when_built = getattr(processor, "when_built", None)
        if when_built is not None:
            when_built(self._queue_directly)
        os.register_at_fork(after_in_child=self._reset)

    def _take_encoder(self, encode) -> None:
        self._encode = encode

    def _queue_directly(self, built: SpanProcessor) -> None:
        """Once the processor is the SDK's batch processor, sampled spans go straight to its queue: the
        StartsOnFirstSpan in front of it and its own sampled check are two calls a span need not pay."""
        emit = compat.batch_emit(built)
        if emit is not None and self._on_end is not _ignore:
            self._on_end, self._sampled_only = emit, True

    def _reset(self) -> None:
        self._counter = itertools.count()
        self._pending = self.health.built is None

    @property
    def ended(self) -> int:
        # itertools.count is atomic under the GIL (no lock on the hot path);
        # its repr, "count(N)", is the only way to read it without advancing it.
        text = repr(self._counter)
        return int(text[text.index("(") + 1 : -1])

    @property
    def inert_on_start(self) -> bool:
        """on_start does nothing: it forwards to a processor that does nothing then (see fastspan._routed)."""
        return getattr(self.processor, "inert_on_start", False) is True

    def on_start(self, span, parent_context=None) -> None:
        self.processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        next(self._counter)
        if self._pending:
            self._build()
        try:  # span.context.trace_flags, without the two properties (SpanContext is a tuple, its flags 4th)
            flags = span._context[3]
        except (AttributeError, TypeError, IndexError):
            flags = span.context.trace_flags
        if flags & _SAMPLED:
            encode = self._encode
            if encode is not None:
                encoded = _native_or_none(encode, span)  # prepare's answer, without its calls; else prepare's way
                span = encoded if encoded is not None else self._prepare(span)
                if span is None:
                    return
            elif self._prepare is not None:
                span = self._prepare(span)
                if span is None:
                    return
            if self._admit is not None and not self._admit(span):
                return  # over the queue's bounds: dropped (counted as ended and never handed)
            self._on_end(span)
        elif not self._sampled_only:
            self._on_end(span)

    def _build(self) -> None:
        if self.health.build_here():  # else (inside an import): a later span end builds it
            self._pending = False

    def shutdown(self) -> None:
        # spans that end later (ours after the program's provider took over) are counted as
        # dropped, not handed to a stopped processor that would log about each
        self._on_end = _ignore
        self.processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.processor.force_flush(timeout_millis)

    def dropped(self) -> int:
        return max(0, self.ended - self.health.handed)


# CountingProcessor.on_end in C (agent/_otlp_native.c's counting_on_end: the same steps, QueueBudget.admit's
# among them, on the same fields; the Python method for a span it was not written for, before anything
# changed). Span.end's C method (agent/_span_native.c) calls it; the same switch.
_python_on_end = CountingProcessor.on_end


def use_native_on_end(on: bool) -> bool:
    """`CountingProcessor.on_end` in C (`on`, where the extension was built) or in Python. Whether in C."""
    CountingProcessor.on_end = _python_on_end
    try:
        from trace_run.agent import _otlp_native
    except ImportError:  # not built (no compiler)
        return False
    if not on:
        return False
    try:
        from .fastspan import Span

        _otlp_native.configure_on_end(_python_on_end, QueueBudget, QueueBudget.admit, Span, CountingProcessor)
        _otlp_native.configure_emit(compat.known_batch_emit(), threading.Event, collections.deque)
        CountingProcessor.on_end = _otlp_native.as_method(_otlp_native.counting_on_end)
    except Exception as exc:
        log.debug("native on_end not used (%s: %s)" % (type(exc).__name__, exc))
        return False
    return True


def _native_switch() -> bool:
    from .fastspan import native_switch  # (fastspan reads the switch for both extensions)

    return native_switch()


NATIVE_ON_END = use_native_on_end(_native_switch())
