"""An interpreter without trace-run installed: the command trace-run was given says once that
the agent did not start there; interpreters its program starts stay quiet (unless debug)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import clean_env, run_traced, write_script

NOT_STARTED = "trace-run: agent not started (cannot import trace_run in "

SPAWN = """
    import subprocess, sys
    subprocess.run([sys.argv[1], "-c", "print('child ran')"], check=True)
    print("parent ran")
"""


@pytest.fixture(scope="module")
def other_python(tmp_path_factory) -> str:
    """A fresh venv, without pip: an interpreter where trace_run cannot be imported."""
    folder = tmp_path_factory.mktemp("other") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = str(folder / "bin" / "python")
    assert subprocess.run([python, "-c", "import trace_run"], capture_output=True).returncode == 1
    return python


def test_other_interpreter_started_by_the_program_is_quiet_unless_debug(tmp_path, other_python):
    script = write_script(tmp_path, SPAWN)
    proc = run_traced(["python", script, other_python])
    assert proc.returncode == 0 and proc.stdout == "child ran\nparent ran\n", proc.stderr
    assert proc.stderr == ""
    debug = run_traced(["python", script, other_python], env=clean_env(OTEL_LOG_LEVEL="debug"))
    assert debug.returncode == 0 and debug.stdout == "child ran\nparent ran\n", debug.stderr
    said = [line for line in debug.stderr.splitlines() if line.startswith(NOT_STARTED)]
    assert len(said) == 1 and other_python in said[0], debug.stderr


def test_other_interpreter_as_the_command_says_it_once(tmp_path, other_python):
    # The program (untraced) starts the same interpreter again: only the command speaks.
    script = write_script(tmp_path, SPAWN)
    proc = run_traced([other_python, script, other_python])
    assert proc.returncode == 0 and proc.stdout == "child ran\nparent ran\n", proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith(NOT_STARTED)]
    assert len(said) == 1 and other_python in said[0] and "the program runs untraced" in said[0], proc.stderr
    assert proc.stderr == said[0] + "\n"
