"""OpenTelemetry's (and CPython's) private names are used in core/compat.py only, each with a fallback."""

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_import_graph import modules

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "core" / "compat.py"

# Private names trace-run has relied on: reached only through core.compat (or no longer at all).
PRIVATE = {
    "_TRACER_PROVIDER_SET_ONCE", "_TRACER_PROVIDER", "_update_resource", "_OTLPHTTPClient", "_OTLP_HTTP_HEADERS",
    "_stub", "_channel", "_initialize_channel_and_stub", "_SUPPRESS_INSTRUMENTATION_KEY",
    "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", "_initializing", "PyOS_setsig", "_pool", "_session", "_transport",
    "_submit", "_compute_backoff", "_is_retryable", "_extract_retry_after", "_MAX_RETRIES", "_shutdown_event",
}
# Published for use despite the underscore: the semantic conventions' incubating attributes.
PUBLISHED = ("opentelemetry.semconv._incubating",)
# Who may change os.environ: the launcher (the command's environment) and start-up (PYTHONPATH inheritance).
# The launcher and boot set the program's environment (PYTHONPATH, the launch mark); the viewer is a program
# of its own (gRPC's log level, its re-exec without the agent): none of them is the SDK's environment.
ENVIRON_WRITERS = {"trace_run.agent.cli", "trace_run.agent.boot", "trace_run.core.compat", "trace_run.viewer.cli"}


def _is_private_module(name: str) -> bool:
    return (name.startswith("opentelemetry.") and not name.startswith(PUBLISHED)
            and any(part.startswith("_") for part in name.split(".")))


def _environ(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"


def uses(path: Path) -> list:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("opentelemetry"):
            if _is_private_module(node.module):
                found.append((line, "from %s import" % node.module))
            found += [(line, "import %s" % a.name) for a in node.names if a.name.startswith("_")
                      and not a.name.startswith("__") and not node.module.startswith(PUBLISHED)]
        elif isinstance(node, ast.Import):
            found += [(line, "import %s" % a.name) for a in node.names if _is_private_module(a.name)]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            found.append((line, "." + node.attr))
        elif isinstance(node, ast.Constant) and node.value in PRIVATE:  # getattr(obj, "_update_resource")
            found.append((line, repr(node.value)))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            if _is_private_module(str(node.args[0].value).rstrip(".")):
                found.append((line, "import_module(%r)" % node.args[0].value))
    return found


def environ_writes(path: Path) -> list:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            found += [t.lineno for t in targets if isinstance(t, ast.Subscript) and _environ(t.value)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _environ(node.func.value):
            if node.func.attr in ("pop", "update", "setdefault", "clear", "popitem"):
                found.append(node.lineno)
    return found


def test_private_names_are_used_in_compat_only():
    wrong = ["%s:%d %s" % (path.relative_to(ROOT), line, what)
             for name, path in sorted(modules().items()) if path != COMPAT for line, what in uses(path)]
    assert not wrong, "private OpenTelemetry/CPython names outside core/compat.py:\n" + "\n".join(wrong)
    assert uses(COMPAT), "the scan finds nothing even where the private names are"


def test_the_sdk_environment_is_changed_in_compat_only():
    wrong = ["%s:%d" % (path.relative_to(ROOT), line) for name, path in sorted(modules().items())
             if name not in ENVIRON_WRITERS for line in environ_writes(path)]
    assert not wrong, "os.environ written outside core/compat.py: " + ", ".join(wrong)


# -- each fallback, as a release without the private name would meet it ---------------------------------


def test_a_provider_that_cannot_be_replaced_is_reported_not_raised(monkeypatch):
    from opentelemetry import trace
    from trace_run.core import compat

    assert compat.can_set_tracer_provider_again()
    monkeypatch.delattr(trace, "_TRACER_PROVIDER_SET_ONCE")
    assert compat.can_set_tracer_provider_again() is False


def test_update_resource_without_the_sdk_method_changes_nothing():
    from opentelemetry.sdk.trace import TracerProvider
    from trace_run.core import compat

    assert compat.update_resource(object(), {"process.pid": 1}) is False
    provider = TracerProvider()
    has_it = hasattr(provider, "_update_resource")  # SDK 1.35 and later
    assert compat.update_resource(provider, {"process.pid": 12345}) is has_it
    assert (provider.resource.attributes.get("process.pid") == 12345) is has_it


def test_grpc_exporter_internals_are_checked():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from trace_run.core import compat

    assert compat.grpc_exporter_missing(object(), object) == list(compat.GRPC_EXPORTER_NEEDS) + list(
        compat.GRPC_EXPORTER_OVERRIDES)
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True)
    try:
        assert compat.grpc_exporter_missing(exporter, OTLPSpanExporter) == []
    finally:
        exporter.shutdown()


def test_missing_http_pieces_raise_import_error_for_the_stock_fallback():
    from trace_run.core import compat

    with pytest.raises(ImportError):
        compat.http_transport("no_such_library")


def test_sdk_environ_puts_everything_back(monkeypatch):
    from trace_run.core import compat

    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "lots")
    monkeypatch.delenv("OTEL_PROPAGATORS", raising=False)
    with compat.sdk_environ({"OTEL_SPAN_EVENT_COUNT_LIMIT"}, {"OTEL_PROPAGATORS": "tracecontext"}):
        assert "OTEL_SPAN_EVENT_COUNT_LIMIT" not in os.environ
        assert os.environ["OTEL_PROPAGATORS"] == "tracecontext"
    assert os.environ["OTEL_SPAN_EVENT_COUNT_LIMIT"] == "lots"
    assert "OTEL_PROPAGATORS" not in os.environ


def test_default_signal_from_another_thread_really_ends_the_process():
    code = (
        "import os, signal, threading, time\n"
        "from trace_run.core import compat\n"
        "signal.signal(signal.SIGUSR1, lambda *a: print('python handler ran', flush=True))\n"
        "result = []\n"
        "t = threading.Thread(target=lambda: result.append(compat.default_signal_from_any_thread(signal.SIGUSR1)))\n"
        "t.start(); t.join()\n"
        "print('set', result[0], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "time.sleep(2)\n"
        "print('survived', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["set True"], proc.stdout + proc.stderr
    assert proc.returncode == -signal.SIGUSR1
