"""What the agent's start adds to every process start: these trace_run modules and no other module.

Every module imported at start is paid by every program run under trace-run (a path search, a .pyc
read and its execution: ~0.1 ms each here); the rest loads when the program imports a library.
"""

import subprocess
import sys

from support import clean_env, run_traced

START = [
    "sitecustomize",
    "trace_run",
    "trace_run.agent",
    "trace_run.agent.boot",
    "trace_run.agent.thirdparty",  # its cache of installed instrumentors is read at start
    "trace_run.core",
    "trace_run.core.config",
    "trace_run.core.hooks",
    "trace_run.instrumentors",
    "trace_run.instrumentors.registry",
]
MODULES = "import sys; print(' '.join(sorted(sys.modules)))"


def test_start_imports_these_modules_and_nothing_else(tmp_path):
    env = clean_env(OTEL_TRACES_EXPORTER="none", OTEL_SERVICE_NAME="start-imports")
    bare = set(subprocess.run([sys.executable, "-c", MODULES], env=env, capture_output=True, text=True,
                              check=True, cwd=str(tmp_path)).stdout.split())
    run_traced(["python", "-c", "pass"], env=env, check=True, cwd=str(tmp_path))  # the instrumentor cache is written
    proc = run_traced(["python", "-c", MODULES], env=env, check=True, cwd=str(tmp_path))
    assert proc.stderr == ""
    assert sorted(set(proc.stdout.split()) - bare) == START


def test_a_message_at_start_comes_at_the_configured_level(tmp_path):
    # log's threshold is set at start only when it is not the default: both ways, a bad value is said or not
    env = clean_env(OTEL_BSP_SCHEDULE_DELAY="soon", OTEL_LOG_LEVEL="error")
    proc = run_traced(["python", "-c", "pass"], env=env, check=True, cwd=str(tmp_path))
    assert proc.stderr == ""
    for level in ("warning", "info", "debug"):
        env["OTEL_LOG_LEVEL"] = level
        proc = run_traced(["python", "-c", "pass"], env=env, check=True, cwd=str(tmp_path))
        assert proc.stderr.startswith("trace-run: warning: OTEL_BSP_SCHEDULE_DELAY='soon' is invalid "
                                      "(not a whole number); using 5000\n"), (level, proc.stderr)
