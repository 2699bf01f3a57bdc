"""Shared fixtures: the OTLP receiver, running programs under trace-run, DSNs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from otlp_receiver import Receiver

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
TRACE_RUN = os.path.join(BIN, "trace-run")

PG_DSN = os.environ.get("TRACE_RUN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TRACE_RUN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TRACE_RUN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def clean_env(**extra) -> dict:
    """The test process's environment without any OTEL_* leaking in, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "GRPC_ENABLE_FORK_SUPPORT"}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["OTEL_TRACE_RUN_RAISE_ERRORS"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_traced(args, env=None, timeout=60, check=False, cwd=None, trace_run=True, stdin=None):
    """Run `trace-run ARGS...` (or ARGS bare) and return the CompletedProcess."""
    cmd = ([TRACE_RUN] if trace_run else []) + list(args)
    proc = subprocess.run(
        cmd, env=env if env is not None else clean_env(), capture_output=True, text=True,
        timeout=timeout, cwd=cwd, input=stdin,
    )
    if check and proc.returncode != 0:
        raise AssertionError("exit %d\nstdout:\n%s\nstderr:\n%s" % (proc.returncode, proc.stdout, proc.stderr))
    return proc


def write_script(tmp_path, body: str, name: str = "app.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def python() -> str:
    return sys.executable


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
