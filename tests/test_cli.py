"""The launcher: usage, errors, exec, PYTHONPATH handling."""

import os

from support import HERE, TRACE_RUN, clean_env, run_traced, write_script
from trace_run.agent.cli import inject_dir


def test_no_command_prints_usage_and_exits_2():
    proc = run_traced([])
    assert proc.returncode == 2
    assert "usage: trace-run" in proc.stderr
    assert proc.stdout == ""


def test_unknown_command_exits_127_with_one_line():
    proc = run_traced(["no-such-command-xyz", "arg"])
    assert proc.returncode == 127
    assert proc.stderr == "trace-run: command not found: no-such-command-xyz\n"


def test_help_and_version():
    assert "usage: trace-run" in run_traced(["--help"]).stdout
    proc = run_traced(["--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("trace-run 0.1.0")


def test_installed_command_is_the_plain_script_not_an_entry_point_wrapper():
    # pip's entry-point wrapper imports `re` for argv[0]; that import cost as much as the rest of
    # the launcher. The installed commands must be scripts/trace-run unchanged (a shell script) and
    # scripts/trace-run-python with only its shebang rewritten.
    scripts = os.path.join(os.path.dirname(HERE), "scripts")
    with open(TRACE_RUN) as f, open(os.path.join(scripts, "trace-run")) as g:
        assert f.read() == g.read()
    with open(TRACE_RUN + "-python") as f:
        shebang, installed = f.readline(), f.read()
    with open(os.path.join(scripts, "trace-run-python")) as f:
        assert f.readline() == "#!python\n"
        source = f.read()
    assert shebang.startswith("#!/") and "python" in shebang
    assert installed == source
    assert "import re" not in installed


def test_unknown_option_exits_2():
    proc = run_traced(["--bogus", "python"])
    assert proc.returncode == 2
    assert "unknown option: --bogus" in proc.stderr


def test_program_runs_unchanged_args_stdin_exit_code(tmp_path):
    script = write_script(tmp_path, """
        import sys
        data = sys.stdin.read()
        print("args", sys.argv[1:], "stdin", data.strip())
        sys.exit(3)
    """)
    proc = run_traced(["python", script, "a", "b c"], stdin="hello\n")
    assert proc.returncode == 3
    assert proc.stdout == "args ['a', 'b c'] stdin hello\n"
    assert proc.stderr == ""


def test_injection_dir_first_and_user_pythonpath_kept(tmp_path):
    env = clean_env(PYTHONPATH="/some/where" + os.pathsep + "/else")
    proc = run_traced(["python", "-c", "import os; print(os.environ['PYTHONPATH'])"], env=env, check=True)
    parts = proc.stdout.strip().split(os.pathsep)
    assert os.path.realpath(parts[0]) == os.path.realpath(inject_dir())
    assert sorted(os.listdir(parts[0])) in (["sitecustomize.py"], ["__pycache__", "sitecustomize.py"])
    assert parts[1:] == ["/some/where", "/else"]


def test_python_dash_m(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("import sys\nprint('mod', 'trace_run.agent.boot' in sys.modules)\n")
    proc = run_traced(["python", "-m", "pkg.mod"], cwd=str(tmp_path), check=True)
    assert proc.stdout == "mod True\n"


def test_agent_never_imports_instrumented_libraries_or_sdk_at_start(tmp_path):
    code = ("import sys; mods = [m for m in ('opentelemetry', 'opentelemetry.sdk', 'wrapt', 'flask', "
            "'requests', 'logging', 'importlib.metadata') if m in sys.modules]; print(mods)")
    # The first start in an environment reads the installed instrumentors' metadata once and caches the
    # list (agent/thirdparty_cache.py): in a fresh venv this test may be that first start. The cache's key
    # holds the mtime of each sys.path entry, `-c`'s current folder among them: both runs start in a folder
    # of their own, which no other test (building a wheel in the checkout, say) changes in between.
    run_traced(["python", "-c", "pass"], check=True, cwd=str(tmp_path))
    proc = run_traced(["python", "-c", code], check=True, cwd=str(tmp_path))
    assert proc.stdout.strip() == "[]"


def test_trace_run_script_is_on_path():
    # The tests' PATH finds the trace-run installed beside this interpreter, and it is executable.
    proc = run_traced(["sh", "-c", "command -v trace-run"], trace_run=False, check=True)
    assert proc.stdout.strip() == TRACE_RUN
    assert os.access(TRACE_RUN, os.X_OK)


def test_script_without_run_bit_suggests_python(tmp_path):
    write_script(tmp_path, "print('hi')\n")
    cases = {"app.py": (127, "not a command on PATH"), "./app.py": (126, "not an executable command")}
    for command, (code, what) in cases.items():
        proc = run_traced([command], cwd=str(tmp_path))
        assert proc.returncode == code, (command, proc)
        assert proc.stderr == ("trace-run: cannot run %s: it is a Python file, %s; "
                               "run it with: trace-run python %s\n" % (command, what, command))
        assert proc.stdout == ""
