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
    "trace_run.agent.thirdparty_cache",  # the list of installed instrumentors, read at start
    "trace_run.core",
    "trace_run.core.config",
    "trace_run.core.hooks",
]
MODULES = "import sys; print(' '.join(sorted(sys.modules)))"


def _upstream_instrumentors() -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group="opentelemetry_instrumentor"))


def test_start_imports_these_modules_and_nothing_else(tmp_path):
    # its own cache of the installed instrumentors: another test writing the shared one meanwhile (other
    # paths, other instrumentors) would make this start read a list that is not this environment's
    env = clean_env(OTEL_TRACES_EXPORTER="none", OTEL_SERVICE_NAME="start-imports",
                    XDG_CACHE_HOME=str(tmp_path / "cache"))
    # thirdparty (and the registry it classifies them by) only where there is an upstream instrumentor to
    # arm (the tests' venv has Django's)
    thirdparty = ["trace_run.agent.thirdparty", "trace_run.instrumentors", "trace_run.instrumentors.registry"]
    expected = sorted(START + thirdparty if _upstream_instrumentors() else START)
    bare = set(subprocess.run([sys.executable, "-c", MODULES], env=env, capture_output=True, text=True,
                              check=True, cwd=str(tmp_path)).stdout.split())
    run_traced(["python", "-c", "pass"], env=env, check=True, cwd=str(tmp_path))  # the instrumentor cache is written
    proc = run_traced(["python", "-c", MODULES], env=env, check=True, cwd=str(tmp_path))
    assert proc.stderr == ""
    assert sorted(set(proc.stdout.split()) - bare) == expected


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


def test_thirdparty_imported_at_start_only_where_the_cached_list_has_instrumentors(tmp_path):
    env = clean_env(OTEL_TRACES_EXPORTER="none", XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = "import sys; print('trace_run.agent.thirdparty' in sys.modules, 'trace_run.instrumentors' in sys.modules)"
    first = run_traced(["python", "-c", code], env=env, check=True, cwd=str(tmp_path))  # read and cached
    assert first.stdout == "%s %s\n" % ((bool(_upstream_instrumentors()),) * 2)
    (cached,) = (tmp_path / "cache" / "trace-run").iterdir()
    key = cached.read_text().split("\n")[0]
    cached.write_text(key + "\n")  # the same environment, with no instrumentor installed
    proc = run_traced(["python", "-c", code], env=env, check=True, cwd=str(tmp_path))
    assert proc.stdout == "False False\n" and proc.stderr == "", proc.stderr
    cached.write_text(key + "\ntr_probe\ttr_probe_instrumentation:Instrumentor\ttr-probe")
    proc = run_traced(["python", "-c", code], env=env, check=True, cwd=str(tmp_path))
    assert proc.stdout == "True True\n" and proc.stderr == "", proc.stderr


def test_disabled_libraries_by_name_or_alias_get_no_hook(tmp_path):
    code = "from trace_run.core import hooks; print(' '.join(sorted(hooks._hooks)))"
    env = clean_env(OTEL_TRACES_EXPORTER="none", OTEL_TRACE_RUN_THIRD_PARTY="false")
    everything = set(run_traced(["python", "-c", code], env=env, check=True, cwd=str(tmp_path)).stdout.split())
    assert {"flask", "http.client", "psycopg2", "django", "django.core.handlers.wsgi", "psycopg_pool"} <= everything
    env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "http_client, Psycopg2-binary,django"
    armed = set(run_traced(["python", "-c", code], env=env, check=True, cwd=str(tmp_path)).stdout.split())
    assert everything - armed == {"http.client", "psycopg2", "django", "django.core.handlers.base",
                                  "django.core.handlers.wsgi", "django.core.handlers.asgi",
                                  "django.core.management.base"}
    env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "*"
    armed = set(run_traced(["python", "-c", code], env=env, check=True, cwd=str(tmp_path)).stdout.split())
    assert armed == {"opentelemetry.trace", "gunicorn.arbiter", "multiprocessing.util"}
