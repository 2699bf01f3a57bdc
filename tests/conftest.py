"""Shared fixtures: the OTLP receiver, an in-memory SDK provider. Helpers are in the `support` package."""

from __future__ import annotations

import os

import pytest
from support import HERE
from support.otlp_receiver import Receiver
from support.wheels import build_trace_run_wheel


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def trace_run_wheel(tmp_path_factory) -> str:
    """trace-run's wheel built from this tree, once per session: for real, non-editable installs."""
    return build_trace_run_wheel(os.path.dirname(HERE), str(tmp_path_factory.mktemp("trace-run-wheel")))


@pytest.fixture
def memory():
    """(provider, exporter): an SDK provider exporting to memory, for in-process tests.

    Pass `tracer_provider=provider` to an instrumentor's instrument(); spans end
    up in exporter.get_finished_spans().
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def instrumented(memory, monkeypatch):
    """apply(InstrumentorClass) -> (provider, exporter): the instrumentor applied by hand with the `memory`
    provider, its errors raised (not swallowed), undone after the test."""
    from trace_run.core import config, guard

    monkeypatch.setattr(guard, "RAISE", True)
    applied = []

    def apply(cls):
        instrumentor = cls()
        instrumentor.instrument(tracer_provider=memory[0], skip_dep_check=True)
        applied.append(instrumentor)
        return memory

    yield apply
    for instrumentor in reversed(applied):
        instrumentor.uninstrument()
    config.reset()
