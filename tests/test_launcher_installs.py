"""The launcher in real installs of trace-run's wheel: `trace-run CMD` starts no interpreter of its own
(the shell script finds the injection folder and execs CMD) where the layout says where trace-run is
(a venv, a pipx-style symlink, `pip install --target`, `--prefix`; `--user` is in
test_sitecustomize_once.py); everything else goes to the Python launcher, with the same results."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from support import BIN, TRACE_RUN, clean_env, write_script
from support.installs import interpreter_starts, pip_install, venv_with_trace_run, without_importtime
from trace_run.core.version import VERSION

SHOW = ("import os, sys, trace_run.agent.boot as b; print(os.path.realpath(b.__file__)); "
        "print(os.environ['PYTHONPATH']); print(sys.argv[1:])")
MANUAL = """
    import sys
    from opentelemetry import trace
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("parent-op", kind=trace.SpanKind.SERVER):
        with tracer.start_as_current_span("child-op"):
            pass
    print(sys.stdin.read().strip(), sys.argv[1:])
    sys.exit(3)
"""


def _site_packages(prefix: str) -> str:
    return os.path.join(prefix, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")


def _inject(site: str) -> str:
    return os.path.join(site, "trace_run", "agent", "inject")


@pytest.fixture(scope="module")
def venv(tmp_path_factory, trace_run_wheel) -> str:
    return venv_with_trace_run(trace_run_wheel, str(tmp_path_factory.mktemp("installed") / "venv"))


def _env(venv: str, **extra) -> dict:
    env = clean_env(PYTHONPROFILEIMPORTTIME="1", **extra)
    env["PATH"] = os.pathsep.join([os.path.join(venv, "bin")] + [p for p in env["PATH"].split(os.pathsep) if p != BIN])
    return env


def _run(argv: list, env: dict, cwd: str = None, stdin: str = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60)


def test_venv_starts_only_the_programs_interpreter(tmp_path, venv, receiver):
    script = write_script(tmp_path, MANUAL)
    env = _env(venv, **receiver.env(), PYTHONPATH="/some/where::/else")
    proc = _run([os.path.join(venv, "bin", "trace-run"), "python", script, "a", "b c"], env, stdin="hello\n")
    assert proc.returncode == 3 and proc.stdout == "hello ['a', 'b c']\n", proc.stderr
    assert without_importtime(proc.stderr) == ""
    assert interpreter_starts(proc.stderr) == 1, proc.stderr  # the program's; no launcher interpreter
    spans = {s.name: s for s in receiver.wait_for(count=2)}
    parent, child = spans["parent-op"], spans["child-op"]
    assert parent.kind == "SERVER" and child.parent_id == parent.span_id and child.trace_id == parent.trace_id


def test_venv_pythonpath_injection_first_user_entries_kept_once(venv):
    inject = _inject(_site_packages(venv))
    env = _env(venv, PYTHONPATH=os.pathsep.join(["/some/where", "", inject, "/else"]))
    proc = _run([os.path.join(venv, "bin", "trace-run"), "python", "-c", SHOW, "x"], env)
    assert proc.returncode == 0 and interpreter_starts(proc.stderr) == 1, proc.stderr
    boot, pythonpath, args = proc.stdout.splitlines()
    assert boot == os.path.realpath(os.path.join(os.path.dirname(inject), "boot.py"))  # the wheel's, not this tree's
    assert pythonpath.split(os.pathsep) == [inject, "/some/where", "/else"]
    assert args == "['x']"
    # a trace-run inside the traced program (its PYTHONPATH holds the folder already) adds it once
    nested = _run([os.path.join(venv, "bin", "trace-run"), "sh", "-c", 'exec trace-run python -c "$0" y', SHOW], env)
    assert nested.returncode == 0 and interpreter_starts(nested.stderr) == 1, nested.stderr
    assert nested.stdout.splitlines()[1:] == [pythonpath, "['y']"]


def _python_launcher(venv: str) -> list:
    """What the script falls back to: trace-run-python under `python -S`."""
    return [os.path.join(venv, "bin", "python"), "-S", os.path.join(venv, "bin", "trace-run-python")]


CASES = {
    # argv, whether the shell script execs it itself
    "python": (["python", "-c", "import sys; print(sys.argv, sys.flags.no_site)", "a b"], True),
    "argv[0] kept": (["sh", "-c", 'echo "$0" "$@" "${PYTHONPATH%%:*}" | sed "s|.*/site-packages/||"', "a"], True),
    "shebang script": (["./tool", "arg"], True),
    "a .py with #! and the run bit": (["./run.py"], True),
    "an ELF binary (read to its first newline)": (["true"], True),
    "not found": (["no-such-command-xyz", "arg"], False),
    "a .py without the run bit": (["./app.py"], False),
    "no #! line (a shell would run it as a shell script)": (["./noshebang"], False),
    "#! names a missing interpreter": (["./badshebang"], False),
    "a folder": (["./folder"], False),
    "--version": (["--version"], False),
    "view --help": (["view", "--help"], False),
    "--info CMD": (["--info", "python", "-c", "print('ran')"], False),
    "no command": ([], False),
}


def _result(proc: subprocess.CompletedProcess) -> tuple:
    stderr = re.sub(r"process\.pid = \d+", "process.pid = N", without_importtime(proc.stderr))  # --info's
    return proc.returncode, proc.stdout, stderr


@pytest.mark.parametrize("case", list(CASES))
def test_same_results_as_the_python_launcher(tmp_path, venv, case):
    argv, fast = CASES[case]
    write_script(tmp_path, "print('app ran')\n")
    (tmp_path / "noshebang").write_text("echo shell ran\n")
    (tmp_path / "badshebang").write_text("#!/nonexistent/python\nprint('ran')\n")
    (tmp_path / "tool").write_text("#!/bin/sh\necho tool ran \"$@\"\n")
    (tmp_path / "run.py").write_text("#!/usr/bin/env python\nimport sys\nprint(sys.argv)\n")
    (tmp_path / "folder").mkdir()
    for name in ("noshebang", "badshebang", "tool", "run.py"):
        (tmp_path / name).chmod(0o755)
    env = _env(venv)
    proc = _run([os.path.join(venv, "bin", "trace-run")] + argv, env, cwd=str(tmp_path))
    expected = _run(_python_launcher(venv) + argv, env, cwd=str(tmp_path))
    assert _result(proc) == _result(expected)
    assert "shell ran" not in proc.stdout
    launcher_started = interpreter_starts(proc.stderr) == interpreter_starts(expected.stderr)
    assert launcher_started == (not fast), (interpreter_starts(proc.stderr), interpreter_starts(expected.stderr))


def test_pipx_style_symlink_resolves_to_the_venv(tmp_path, venv):
    # pipx links the venv's scripts into ~/.local/bin; ~/.local/lib may hold another trace-run
    # (`pip install --user`): the install is where the link leads.
    links = tmp_path / "local" / "bin"
    links.mkdir(parents=True)
    decoy = _inject(_site_packages(str(tmp_path / "local")))
    os.makedirs(decoy)
    open(os.path.join(decoy, "sitecustomize.py"), "w").close()
    for name in ("trace-run", "trace-run-python"):
        os.symlink(os.path.join(venv, "bin", name), str(links / name))
    proc = _run([str(links / "trace-run"), "python", "-c", SHOW], _env(venv))
    assert proc.returncode == 0 and interpreter_starts(proc.stderr) == 1, proc.stderr
    assert proc.stdout.splitlines()[1] == _inject(_site_packages(venv))


def test_pip_install_target(tmp_path, venv, trace_run_wheel):
    # --target: bin/ beside trace_run/; the program finds trace_run through the user's PYTHONPATH.
    # Installed by an interpreter that has no trace-run of its own: the Python launcher finds it too.
    target = str(tmp_path / "target")
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    pip_install(trace_run_wheel, "--target", target, python=base)
    version = _run([os.path.join(target, "bin", "trace-run"), "--version"], _env(venv))
    assert (version.returncode, version.stdout) == (0, "trace-run %s\n" % VERSION), version.stderr
    proc = _run([os.path.join(target, "bin", "trace-run"), "python", "-c", SHOW], _env(venv, PYTHONPATH=target))
    assert proc.returncode == 0 and interpreter_starts(proc.stderr) == 1, proc.stderr
    inject = _inject(target)
    assert proc.stdout.splitlines()[:2] == [os.path.join(os.path.dirname(inject), "boot.py"),
                                            os.pathsep.join([inject, target])]


def test_pip_install_prefix_and_two_trace_runs_under_it(tmp_path, venv, trace_run_wheel):
    prefix = str(tmp_path / "prefix")
    pip_install(trace_run_wheel, "--prefix", prefix, "--ignore-installed", python=os.path.join(venv, "bin", "python"))
    site = _site_packages(prefix)
    env = _env(venv, PYTHONPATH=site)
    command = [os.path.join(prefix, "bin", "trace-run"), "python", "-c", SHOW]
    proc = _run(command, env)
    assert proc.returncode == 0 and interpreter_starts(proc.stderr) == 1, proc.stderr
    assert proc.stdout.splitlines()[1] == os.pathsep.join([_inject(site), site])
    # Another Python's trace-run under the same prefix: the script cannot tell which is its own, so
    # the Python launcher (which knows its interpreter's version) answers, with the same result.
    shutil.copytree(os.path.join(site, "trace_run"), os.path.join(prefix, "lib", "python3.99", "site-packages",
                                                                  "trace_run"))
    again = _run(command, env)
    assert again.returncode == 0 and interpreter_starts(again.stderr) == 2, again.stderr
    assert again.stdout == proc.stdout


def test_editable_install_takes_the_python_launcher():
    # This test venv's editable install leaves no trace_run folder beside bin/: the Python launcher
    # (site's .pth finders) finds it, one interpreter start more.
    proc = _run([TRACE_RUN, "python", "-c", "print('ran')"], clean_env(PYTHONPROFILEIMPORTTIME="1"))
    assert proc.returncode == 0 and proc.stdout == "ran\n", proc.stderr
    assert interpreter_starts(proc.stderr) == 2
    assert "| trace_run.agent.cli\n" in proc.stderr


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system Python at /usr/bin/python3")
def test_system_install(tmp_path, venv, trace_run_wheel):
    # `sudo pip install trace-run` with the system's Python (Debian's: /usr/local/bin beside
    # /usr/local/lib/python3.X/dist-packages), staged under --root
    root = str(tmp_path / "root")
    pip_install(trace_run_wheel, "--root", root, "--ignore-installed", "--break-system-packages",
                python=SYSTEM_PYTHON)
    scripts, purelib = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sysconfig; p = sysconfig.get_paths(); print(p['scripts']); print(p['purelib'])"],
        capture_output=True, text=True, check=True).stdout.split()
    site = root + purelib
    proc = _run([root + scripts + "/trace-run", "python", "-c", SHOW], _env(venv, PYTHONPATH=site))
    assert proc.returncode == 0 and interpreter_starts(proc.stderr) == 1, proc.stderr
    assert proc.stdout.splitlines()[1] == os.pathsep.join([_inject(site), site])
