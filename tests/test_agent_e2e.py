"""The agent end to end: real programs under trace-run, spans read from the OTLP receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from support import TRACE_RUN, clean_env, run_traced, write_script

MANUAL = """
    import sys
    from opentelemetry import trace
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("parent-op", kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("app.answer", 42)
        with tracer.start_as_current_span("child-op"):
            pass
    print("ok")
"""


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_manual_spans_exported_over_both_protocols(tmp_path, receiver, protocol):
    script = write_script(tmp_path, MANUAL)
    env = clean_env(**receiver.env(protocol), OTEL_SERVICE_NAME="svc-a",
                    OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,team=core")
    proc = run_traced(["python", script], env=env, check=True)
    assert proc.stdout == "ok\n"
    spans = receiver.wait_for(count=2)
    by_name = {s.name: s for s in spans}
    parent, child = by_name["parent-op"], by_name["child-op"]
    assert parent.kind == "SERVER" and child.kind == "INTERNAL"
    assert child.trace_id == parent.trace_id and child.parent_id == parent.span_id
    assert parent.parent_id is None
    assert parent.attributes["app.answer"] == 42
    assert parent.service == "svc-a"
    assert parent.resource["deployment.environment"] == "test"
    assert parent.resource["telemetry.sdk.language"] == "python"
    assert parent.resource["process.pid"] > 0
    if protocol == "grpc":
        assert receiver.grpc_calls >= 1 and receiver.http_calls == 0
    else:
        assert receiver.http_calls >= 1 and receiver.grpc_calls == 0


def test_headers_and_gzip_reach_the_collector(tmp_path, receiver):
    script = write_script(tmp_path, MANUAL)
    env = clean_env(**receiver.env(), OTEL_EXPORTER_OTLP_HEADERS="x-api-key=s3cr3t-key,x-tenant=acme",
                    OTEL_EXPORTER_OTLP_COMPRESSION="gzip")
    proc = run_traced(["python", script], env=env, check=True)
    assert "s3cr3t" not in proc.stderr
    receiver.wait_for(count=2)
    headers = {k.lower(): v for k, v in receiver.headers_seen[0].items()}
    assert headers["x-api-key"] == "s3cr3t-key" and headers["x-tenant"] == "acme"
    assert headers.get("content-encoding") == "gzip"


CHILDREN = """
    import multiprocessing as mp, os, subprocess, sys
    from opentelemetry import trace
    tracer = trace.get_tracer("test")

    def work(tag):
        with tracer.start_as_current_span("work-" + tag):
            pass

    if __name__ == "__main__":
        with tracer.start_as_current_span("main-op"):
            pass
        subprocess.run([sys.executable, "-c",
            "from opentelemetry import trace\\n"
            "with trace.get_tracer('c').start_as_current_span('work-subprocess'): pass"], check=True)
        for method in ("fork", "spawn"):
            p = mp.get_context(method).Process(target=work, args=(method,))
            p.start(); p.join()
            assert p.exitcode == 0, p.exitcode
        print("done")
"""


def test_children_inherit_the_agent_and_each_span_arrives_once(tmp_path, receiver):
    script = write_script(tmp_path, CHILDREN)
    proc = run_traced(["python", script], env=clean_env(**receiver.env()), check=True)
    assert proc.stdout == "done\n"
    wanted = {"main-op", "work-subprocess", "work-fork", "work-spawn"}
    spans = receiver.wait_for(lambda ss: wanted <= {s.name for s in ss})
    names = sorted(s.name for s in spans)
    time.sleep(0.5)
    assert sorted(s.name for s in receiver.spans) == sorted(wanted) == names
    pids = {s.name: s.resource["process.pid"] for s in spans}
    from opentelemetry.sdk.trace import TracerProvider

    if hasattr(TracerProvider, "_update_resource"):
        assert len(set(pids.values())) == 4  # four processes, each reporting its own pid
    else:  # older SDKs (Python 3.9 gets 1.41) cannot update a live resource after fork
        assert len({pids["main-op"], pids["work-subprocess"], pids["work-spawn"]}) == 3


def test_inherit_off_keeps_children_untraced(tmp_path, receiver):
    script = write_script(tmp_path, CHILDREN)
    env = clean_env(**receiver.env(), OTEL_TRACE_RUN_INHERIT="false")
    run_traced(["python", script], env=env, check=True)
    spans = receiver.wait_for(lambda ss: {"main-op", "work-fork"} <= {s.name for s in ss})
    time.sleep(1.0)
    names = {s.name for s in receiver.spans}
    # fork children are the same process image (the agent is already running there);
    # new interpreters (subprocess, spawn) no longer get it.
    assert names == {"main-op", "work-fork"}, spans


def test_user_sitecustomize_runs_after_agent_and_agent_starts_once(tmp_path):
    user = tmp_path / "usersite"
    user.mkdir()
    (user / "sitecustomize.py").write_text(
        "import os, sys\nprint('user-sitecustomize', os.getpid(), 'trace_run.agent.boot' in sys.modules)\n"
    )
    from trace_run.agent.cli import inject_dir

    inject = inject_dir()
    # The injection folder twice on the path: by hand, and through a symlinked copy.
    twin = tmp_path / "twin"
    twin.symlink_to(inject)
    env = clean_env(PYTHONPATH=os.pathsep.join([inject, str(twin), str(user)]))
    code = "import os, sys; print('program', os.getpid(), len(sys._trace_run_dirs))"
    proc = run_traced([sys.executable, "-c", code], env=env, check=True, trace_run=False)
    lines = proc.stdout.splitlines()
    pid = lines[-1].split()[1]
    assert lines == ["user-sitecustomize %s True" % pid, "program %s 1" % pid]
    assert proc.stderr == ""


def test_user_sitecustomize_error_is_reported_like_without_agent(tmp_path):
    user = tmp_path / "usersite"
    user.mkdir()
    (user / "sitecustomize.py").write_text("raise RuntimeError('user bug')\n")
    env = clean_env(PYTHONPATH=str(user))
    bare = run_traced([sys.executable, "-c", "print('ran')"], env=env, trace_run=False)
    traced = run_traced(["python", "-c", "print('ran')"], env=env)
    assert traced.stdout == bare.stdout == "ran\n"
    assert traced.returncode == bare.returncode == 0
    assert "user bug" in bare.stderr and "user bug" in traced.stderr


def test_interpreter_without_trace_run_runs_untraced_with_one_line(tmp_path):
    other = None
    for version in ("3.12", "3.13", "3.10", "3.9"):
        for root in ("/root/.pyenv/versions",):
            if os.path.isdir(root):
                for name in sorted(os.listdir(root)):
                    if name.startswith(version):
                        other = os.path.join(root, name, "bin", "python")
        if other:
            break
    if other is None or not os.path.exists(other):
        other = "/usr/bin/python3"
    probe = subprocess.run([other, "-c", "import trace_run"], capture_output=True)
    assert probe.returncode != 0, "needs an interpreter without trace_run installed"
    proc = run_traced([other, "-c", "print('still runs')"])
    assert proc.returncode == 0
    assert proc.stdout == "still runs\n"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trace-run: agent not started")
    assert "untraced" in lines[0]


def test_sdk_disabled_patches_and_exports_nothing(tmp_path, receiver):
    script = write_script(tmp_path, MANUAL + """
    import http.client
    print(type(trace.get_tracer_provider()).__name__, hasattr(http.client.HTTPConnection.request, "__wrapped__"))
    """)
    env = clean_env(**receiver.env(), OTEL_SDK_DISABLED="true")
    proc = run_traced(["python", script], env=env, check=True)
    assert proc.stdout.splitlines() == ["ok", "ProxyTracerProvider False"]
    time.sleep(1.0)
    assert receiver.spans == [] and receiver.http_calls == 0


BAD_VALUES = {
    "OTEL_TRACES_SAMPLER": ("nosuch", "parentbased_always_on"),
    "OTEL_TRACES_SAMPLER_ARG": ("abc", "1.0"),
    "OTEL_BSP_MAX_QUEUE_SIZE": ("-1", "2048"),
    "OTEL_PROPAGATORS": ("tracecontext,nosuchprop", "the others"),
    "OTEL_TRACES_EXPORTER": ("otlp,nosuchexp", "no exporter for it"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("not a url", "the default"),
    "OTEL_BSP_SCHEDULE_DELAY": ("soon", "5000"),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("carrier-pigeon", "http/protobuf"),
    "OTEL_SDK_DISABLED": ("maybe", "false"),
    "OTEL_LOG_LEVEL": ("loud", "info"),
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_value_gives_one_warning_and_program_runs(tmp_path, receiver, name):
    value, fallback = BAD_VALUES[name]
    script = write_script(tmp_path, MANUAL)
    env = clean_env(**receiver.env())
    env[name] = value
    if name == "OTEL_EXPORTER_OTLP_ENDPOINT":
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.http_endpoint + "/v1/traces"
    if name == "OTEL_TRACES_SAMPLER_ARG":
        env["OTEL_TRACES_SAMPLER"] = "traceidratio"
    proc = run_traced(["python", script], env=env)
    assert proc.returncode == 0 and proc.stdout == "ok\n"
    warnings = [line for line in proc.stderr.splitlines() if name in line]
    assert len(warnings) == 1, proc.stderr
    assert repr(value.split(",")[-1]) in warnings[0] and fallback in warnings[0]
    assert warnings[0].startswith("trace-run: warning: ")
    if name not in ("OTEL_TRACES_SAMPLER_ARG",):
        assert receiver.wait_for(count=2), "spans still exported with the fallback"


def test_unparsable_headers_warn_without_leaking_values(tmp_path, receiver):
    script = write_script(tmp_path, MANUAL)
    env = clean_env(**receiver.env(), OTEL_EXPORTER_OTLP_HEADERS="good=v1,justgarbage-SECRETVALUE")
    proc = run_traced(["python", script], env=env)
    assert proc.returncode == 0
    assert "OTEL_EXPORTER_OTLP_HEADERS" in proc.stderr and "SECRETVALUE" not in proc.stderr.replace(
        "justgarbage-SECRETVALUE", "")
    assert receiver.wait_for(count=2)


def test_exporter_down_program_unaffected_and_drops_reported(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    script = write_script(tmp_path, MANUAL)
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:%d" % port, OTEL_BSP_SCHEDULE_DELAY="50",
                    OTEL_EXPORTER_OTLP_TIMEOUT="500", OTEL_TRACE_RUN_EXIT_TIMEOUT="2000")
    started = time.monotonic()
    proc = run_traced(["python", script], env=env)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0 and proc.stdout == "ok\n"
    failing = [line for line in proc.stderr.splitlines() if "failed" in line and "exporting" in line]
    assert len(failing) == 1, proc.stderr
    assert "2 of 2 spans were not exported" in proc.stderr
    assert elapsed < 15


def test_grpc_port_with_http_protocol_is_pointed_out(tmp_path):
    proc = run_traced(["--info"], env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317"))
    assert "looks like a gRPC port" in proc.stdout + proc.stderr


def test_sigterm_flushes_then_dies_of_sigterm(tmp_path, receiver):
    script = write_script(tmp_path, """
        import time
        from opentelemetry import trace
        with trace.get_tracer("t").start_as_current_span("before-term"):
            pass
        print("ready", flush=True)
        time.sleep(60)
    """)
    env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="60000"))
    proc = subprocess.Popen([TRACE_RUN, "python", script], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    spans = receiver.wait_for(count=1, timeout=5)
    assert [s.name for s in spans] == ["before-term"]


def test_exit_flush_exports_spans_of_short_programs(tmp_path, receiver):
    script = write_script(tmp_path, MANUAL)
    env = clean_env(**receiver.env(OTEL_BSP_SCHEDULE_DELAY="60000"))
    run_traced(["python", script], env=env, check=True)
    assert len(receiver.wait_for(count=2, timeout=2)) == 2


def test_info_shows_resolved_configuration_with_masked_headers():
    env = clean_env(OTEL_SERVICE_NAME="billing", OTEL_EXPORTER_OTLP_HEADERS="api-key=TOPSECRET",
                    OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.25",
                    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="redis", OTEL_PROPAGATORS="tracecontext,bogus")
    proc = run_traced(["--info"], env=env)
    assert proc.returncode == 0
    out = proc.stdout
    assert "TOPSECRET" not in out + proc.stderr
    assert "service name:  billing" in out
    assert "api-key=***" in out
    assert "parentbased_traceidratio (0.25)" in out
    assert "redis      disabled" in out and "flask      armed" in out
    assert "OTEL_PROPAGATORS='bogus' is invalid" in out


def test_info_with_command_prints_from_inside_then_runs(tmp_path):
    proc = run_traced(["--info", "python", "-c", "print('program output')"], env=clean_env())
    assert proc.returncode == 0
    assert proc.stdout == "program output\n"
    assert "service name:  unknown_service:-c" in proc.stderr
    assert "built-in instrumentors:" in proc.stderr


def test_log_correlation_puts_trace_ids_on_records(tmp_path, receiver):
    script = write_script(tmp_path, """
        import logging
        from opentelemetry import trace
        log = logging.getLogger("app")
        with trace.get_tracer("t").start_as_current_span("logged-op"):
            log.warning("inside the span")
        log.warning("outside")
    """)
    env = clean_env(**receiver.env(), OTEL_PYTHON_LOG_CORRELATION="true", OTEL_SERVICE_NAME="logsvc")
    proc = run_traced(["python", script], env=env, check=True)
    span = receiver.wait_for(count=1)[0]
    lines = [line for line in proc.stderr.splitlines() if "side" in line]
    assert len(lines) == 2, proc.stderr
    assert "trace_id=%s span_id=%s" % (span.trace_id, span.span_id) in lines[0]
    assert "resource.service.name=logsvc trace_sampled=True" in lines[0]
    assert "trace_id=0 span_id=0" in lines[1]


def test_log_correlation_when_a_traced_library_comes_before_logging(tmp_path, receiver):
    # sqlite3 does not import logging: setting up the SDK for it does (through opentelemetry.context),
    # and the log-correlation hook must not run on that half-imported module.
    script = write_script(tmp_path, """
        import sqlite3
        import logging
        sqlite3.connect(":memory:").execute("SELECT 1")
        logging.getLogger("app").warning("after a query")
    """)
    env = clean_env(**receiver.env(), OTEL_PYTHON_LOG_CORRELATION="true", OTEL_SERVICE_NAME="logsvc")
    proc = run_traced(["python", script], env=env, check=True)
    assert "log correlation not enabled" not in proc.stderr, proc.stderr
    assert receiver.wait_for(count=1)[0].name == "SELECT"
    lines = [line for line in proc.stderr.splitlines() if "after a query" in line]
    assert len(lines) == 1 and "resource.service.name=logsvc" in lines[0], proc.stderr


def test_log_correlation_respects_programs_own_basicconfig(tmp_path):
    script = write_script(tmp_path, """
        import logging, sys
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(otelTraceID)s %(message)s")
        logging.getLogger("x").debug("dbg")
    """)
    env = clean_env(OTEL_PYTHON_LOG_CORRELATION="true", OTEL_TRACES_EXPORTER="none")
    proc = run_traced(["python", script], env=env, check=True)
    assert proc.stdout == "DEBUG 0 dbg\n"


def test_console_exporter_prints_a_tree(tmp_path):
    script = write_script(tmp_path, MANUAL)
    proc = run_traced(["python", script], env=clean_env(OTEL_TRACES_EXPORTER="console"), check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("trace ") and "service=unknown_service:app.py" in lines[0]
    assert "| parent-op" in lines[1] and "SERVER" in lines[1] and "ms" in lines[1]
    assert "|   child-op" in lines[2] and "INTERNAL" in lines[2]
    assert lines[3] == "ok"


def test_third_party_instrumentor_applied_lazily_ours_win(tmp_path, receiver):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fakelib.py").write_text("def hello():\n    return 'hi'\n")
    (site / "fake_instr.py").write_text(
        "from opentelemetry.instrumentation.instrumentor import BaseInstrumentor\n"
        "from opentelemetry import trace\n"
        "class FakeInstrumentor(BaseInstrumentor):\n"
        "    def instrumentation_dependencies(self):\n        return ()\n"
        "    def _instrument(self, **kw):\n"
        "        import fakelib\n        orig = fakelib.hello\n"
        "        def hello():\n"
        "            with trace.get_tracer('fake').start_as_current_span('fakelib.hello'):\n"
        "                return orig()\n"
        "        fakelib.hello = hello\n"
        "    def _uninstrument(self, **kw):\n        pass\n"
        "class NotUsed(FakeInstrumentor):\n"
        "    def _instrument(self, **kw):\n        raise SystemExit('must not be applied')\n"
    )
    dist = site / "fake_instr-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-instr\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[opentelemetry_instrumentor]\nfakelib = fake_instr:FakeInstrumentor\nrequests = fake_instr:NotUsed\n"
    )
    script = write_script(tmp_path, """
        import sys
        assert "fake_instr" not in sys.modules  # nothing loaded before the library is imported
        import fakelib
        print(fakelib.hello())
    """)
    env = clean_env(**receiver.env(), PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = run_traced(["python", script], env=env, check=True)
    assert proc.stdout == "hi\n"
    assert [s.name for s in receiver.wait_for(count=1)] == ["fakelib.hello"]
    # Second run: served from the cache, same result.
    assert os.listdir(tmp_path / "cache" / "trace-run")
    run_traced(["python", script], env=env, check=True)
    info = run_traced(["--info"], env=env).stdout
    assert "fakelib" in info and "armed (on import of fakelib)" in info
    assert "skipped: trace-run covers it" in info
