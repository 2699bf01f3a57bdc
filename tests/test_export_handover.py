"""The counting processor calls the C encoder itself once prepare would only call it (sdk._preencoder hands it
over): the same bytes queued, prepare's answer wherever the C call declines or fails, never with redaction."""

from __future__ import annotations

import shutil

import pytest
from opentelemetry.trace import SpanKind
from test_otlp_native import _spans
from trace_run.agent import exporthealth, otlp_encoder, sdk
from trace_run.agent.otlp_encoder import Encoded, Encoder

# skipped only where no C compiler could have built the encoder (a failed build fails test_otlp_native)
_NO_COMPILER = not (shutil.which("cc") or shutil.which("gcc"))
pytestmark = pytest.mark.skipif(otlp_encoder._NATIVE_PREENCODE is None and _NO_COMPILER,
                                reason="no C compiler: the extension is optional")


class _Built:
    accepts_encoded = True


class _Health:
    """What _preencoder and CountingProcessor read of the CountingExporter: its built exporter."""

    def __init__(self, built=None):
        self.built = built

    def build_here(self):
        return True  # the test sets `built` itself


class _Queue:
    def __init__(self):
        self.got = []

    def on_end(self, span):
        self.got.append(span)


_TAKES_ENCODED = _Built()


def _pipeline(built=_TAKES_ENCODED):
    health = _Health(built)
    queue = _Queue()
    processor = exporthealth.CountingProcessor(queue, health, prepare=sdk._preencoder(health),
                                               budget=exporthealth.QueueBudget(100, 1 << 20))
    return processor, queue, health


def _some_spans():
    return _spans([("GET /a", SpanKind.SERVER, {"http.request.method": "GET", "n": 3}, None, None, None),
                   ("SELECT", SpanKind.CLIENT, {"db.system.name": "postgresql"}, "local", None, None),
                   ("with event", SpanKind.INTERNAL, {"k": "v"}, None, None, "event")])


def test_the_encoder_is_handed_over_after_the_first_encoded_span_and_queues_the_same_bytes():
    spans = _some_spans()
    processor, queue, _ = _pipeline()
    assert processor._encode is None
    processor.on_end(spans[0])  # prepare encodes it, then hands the C encoder over
    assert processor._encode is otlp_encoder._NATIVE_PREENCODE
    for span in spans:
        processor.on_end(span)
    python = Encoder(pause=False, native=False)
    assert [type(s) for s in queue.got] == [Encoded] * (len(spans) + 1)
    assert [s.data for s in queue.got] == [python.preencode(s).data for s in [spans[0]] + spans]
    assert processor.ended == len(spans) + 1


def test_nothing_is_handed_over_before_the_exporter_takes_encoded_spans():
    spans = _some_spans()
    processor, queue, health = _pipeline(built=None)
    processor.on_end(spans[0])
    assert processor._encode is None and queue.got == [spans[0]]  # queued as it is, for the stock exporter
    health.built = object()  # a stock exporter
    processor.on_end(spans[1])
    assert processor._encode is None and queue.got[1] is spans[1]


def test_a_declined_or_failing_c_call_gives_prepares_answer(monkeypatch):
    spans = _some_spans()
    processor, queue, _ = _pipeline()
    processor.on_end(spans[0])
    calls = []

    def declines(span):
        calls.append(span)
        return None

    def fails(span):
        calls.append(span)
        raise RuntimeError("a bug of the extension's")

    python = Encoder(pause=False, native=False)
    for replacement in (declines, fails):
        processor._encode = replacement
        processor.on_end(spans[1])
        assert queue.got[-1].data == python.preencode(spans[1]).data
    assert calls == [spans[1], spans[1]]


def test_with_redaction_rules_prepare_keeps_every_span(monkeypatch):
    monkeypatch.setattr("trace_run.agent.redact.rules_from_config", lambda: [("secret", None)])
    redacted = []

    def redact_span(span, rules):
        redacted.append(span)
        return span

    monkeypatch.setattr("trace_run.agent.redact.redact_span", redact_span)
    spans = _some_spans()
    processor, queue, _ = _pipeline()
    for span in spans:
        processor.on_end(span)
    assert processor._encode is None and redacted == spans and len(queue.got) == len(spans)


def test_the_queue_bounds_still_apply_to_handed_over_spans():
    spans = _some_spans()
    health = _Health(_Built())
    queue = _Queue()
    budget = exporthealth.QueueBudget(2, 1 << 20)
    processor = exporthealth.CountingProcessor(queue, health, prepare=sdk._preencoder(health), budget=budget)
    for span in spans:
        processor.on_end(span)
    assert processor._encode is not None and len(queue.got) == 2 and budget.spans == 2
    assert budget.bytes == sum(len(s.data) for s in queue.got)
