"""Real, non-editable installs of trace-run's wheel (a venv, `--target`, `--prefix`), and how to tell
which launcher ran: with PYTHONPROFILEIMPORTTIME set, every interpreter that starts prints one header
line, so a `trace-run python ...` that started no launcher interpreter prints exactly one."""

from __future__ import annotations

import os
import site
import subprocess
import sys

IMPORTTIME_HEADER = "import time: self [us] | cumulative | imported package"


def interpreter_starts(stderr: str) -> int:
    """How many Python interpreters started, from a run with PYTHONPROFILEIMPORTTIME=1."""
    return stderr.count(IMPORTTIME_HEADER)


def without_importtime(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(True) if not line.startswith("import time:"))


def pip_install(wheel: str, *args: str, python: str = sys.executable, env: dict = None) -> None:
    """pip (this venv's) installs `wheel` for interpreter `python`, offline, without dependencies."""
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                    "--no-warn-script-location", *args, wheel], env=env, check=True, capture_output=True, timeout=300)


def venv_with_trace_run(wheel: str, folder: str) -> str:
    """A fresh venv (no pip) with trace-run's wheel installed; its dependencies (OpenTelemetry, ...)
    come from this test venv through a .pth line after its own site-packages (which is not processed
    for .pth files, so this venv's editable trace-run stays out). Returns the venv's folder."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([base, "-m", "venv", "--without-pip", folder], check=True, capture_output=True, timeout=120)
    python = os.path.join(folder, "bin", "python")
    pip_install(wheel, python=python)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(purelib, "zz_test_dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    return folder
