"""pytest plugin: the OpenTelemetry SDK's own tests, run with trace-run's span class in place of the SDK's.

Loaded by run.py (`-p adapter`), never by trace-run's own suite. The SDK's TracerProvider builds
its tracers by the module name `Tracer`, and the tests make spans by hand with `trace._Span`: both
names now give trace-run's classes (agent/fastspan.py), so every span in those tests is ours.
"""

from opentelemetry.sdk import trace as sdk_trace
from trace_run.agent import fastspan


def pytest_configure(config):
    sdk_trace._Span = fastspan.Span
    sdk_trace.Tracer = fastspan.Tracer


def pytest_report_header(config):
    return "trace-run adapter: spans are %s.%s" % (fastspan.Span.__module__, fastspan.Span.__qualname__)
