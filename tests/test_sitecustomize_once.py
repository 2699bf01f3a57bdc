"""The program's own sitecustomize and usercustomize run once, in the program: never in the
launcher's interpreter as well (which is the same process, before the exec)."""

from __future__ import annotations

import os
import subprocess
import sys

from support import BIN, clean_env, run_traced, write_script
from support.installs import interpreter_starts, pip_install, without_importtime

CUSTOMIZE = """
import os, sys
with open({log!r}, "a") as f:
    f.write("%s %s\\n" % (os.getpid(), sys.argv[0] if sys.argv else ""))
"""
APP = """
    import os, sys
    print(os.getpid(), "trace_run.agent.boot" in sys.modules)
"""


def _ran(log) -> list:
    return log.read_text().splitlines() if log.exists() else []


def test_sitecustomize_on_pythonpath_runs_once_in_the_program(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    log = tmp_path / "ran.log"
    (folder / "sitecustomize.py").write_text(CUSTOMIZE.format(log=str(log)))
    script = write_script(tmp_path, APP)
    proc = run_traced(["python", script], env=clean_env(PYTHONPATH=str(folder)), check=True)
    pid, traced = proc.stdout.split()
    assert traced == "True" and proc.stderr == "", proc.stderr
    assert _ran(log) == ["%s %s" % (pid, script)]


def test_usercustomize_of_a_pip_install_user_runs_once_in_the_program(tmp_path, trace_run_wheel):
    # `pip install --user trace-run` into the interpreter this venv was made from: the user site
    # (and its usercustomize) is live there, and the launcher must find trace-run through it.
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    user_base = tmp_path / "userbase"
    env = clean_env(PYTHONUSERBASE=str(user_base))
    env["PATH"] = os.pathsep.join([str(user_base / "bin"), os.path.dirname(base)] +
                                  [p for p in env["PATH"].split(os.pathsep) if p != BIN])
    pip_install(trace_run_wheel, "--user", python=base, env=env)
    user_site = subprocess.run([base, "-m", "site", "--user-site"], env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
    log = tmp_path / "ran.log"
    with open(os.path.join(user_site, "usercustomize.py"), "w") as f:
        f.write(CUSTOMIZE.format(log=str(log)))
    script = write_script(tmp_path, APP)
    proc = subprocess.run([str(user_base / "bin" / "trace-run"), base, script], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    pid, traced = proc.stdout.split()
    assert traced == "True"
    assert _ran(log) == ["%s %s" % (pid, script)]
    # trace-run sits in the user site beside ~/.local/bin: the shell launcher found it and started no
    # Python of its own (one interpreter started: the program's)
    proc = subprocess.run([str(user_base / "bin" / "trace-run"), base, script], capture_output=True, text=True,
                          env=dict(env, PYTHONPROFILEIMPORTTIME="1"), timeout=60)
    assert proc.returncode == 0 and without_importtime(proc.stderr) == "", proc.stderr
    assert interpreter_starts(proc.stderr) == 1, proc.stderr
    assert len(_ran(log)) == 2
