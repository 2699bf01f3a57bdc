"""The program's own sitecustomize and usercustomize run once, in the program: never in the
launcher's interpreter as well (which is the same process, before the exec)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
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


def _module(folder, log):
    (folder / "sitecustomize.py").write_text(CUSTOMIZE.format(log=str(log)))
    return str(folder)


def _package(folder, log):
    (folder / "sitecustomize").mkdir()
    (folder / "sitecustomize" / "__init__.py").write_text(CUSTOMIZE.format(log=str(log)))
    return str(folder)


def _zip(folder, log):
    archive = folder / "custom.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("sitecustomize.py", CUSTOMIZE.format(log=str(log)))
    return str(archive)


def _after_a_namespace_portion(folder, log):
    # a folder named sitecustomize without __init__.py first on the path: the import system takes the
    # module further on (a namespace package runs nothing)
    (folder / "portion" / "sitecustomize").mkdir(parents=True)
    (folder / "module").mkdir()
    return os.pathsep.join([str(folder / "portion"), _module(folder / "module", log)])


def _after_a_folder_without_one(folder, log):
    # folders before the one that has it: one without a sitecustomize, one missing
    (folder / "empty").mkdir()
    (folder / "module").mkdir()
    return os.pathsep.join([str(folder / "empty"), str(folder / "missing"), _module(folder / "module", log)])


@pytest.mark.parametrize("layout", [_module, _package, _zip, _after_a_namespace_portion, _after_a_folder_without_one])
def test_sitecustomize_found_where_the_import_system_finds_it(tmp_path, layout):
    folder = tmp_path / "custom"
    folder.mkdir()
    log = tmp_path / "ran.log"
    pythonpath = layout(folder, log)
    script = write_script(tmp_path, APP)
    bare = subprocess.run([sys.executable, script], env=clean_env(PYTHONPATH=pythonpath), capture_output=True,
                          text=True, check=True)
    assert len(_ran(log)) == 1, bare.stderr  # the layout is one Python runs by itself
    proc = run_traced(["python", script], env=clean_env(PYTHONPATH=pythonpath), check=True)
    pid, traced = proc.stdout.split()
    assert traced == "True" and proc.stderr == "", proc.stderr
    assert _ran(log)[1:] == ["%s %s" % (pid, script)]


def test_no_sitecustomize_of_the_program_none_run(tmp_path):
    # the injection folder's own sitecustomize is never run a second time as the program's
    script = write_script(tmp_path, "import sys; print(sys.modules['sitecustomize'].__name__, "
                                    "len(sys._trace_run_dirs))\n")
    proc = run_traced(["python", script], env=clean_env(PYTHONPATH=str(tmp_path)), check=True)
    assert proc.stdout == "sitecustomize 1\n" and proc.stderr == "", proc.stderr


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


def _other_pythons() -> list:
    """Other interpreters on this machine (pyenv's), without trace-run: the injection folder's chain alone."""
    root = "/root/.pyenv/versions"
    found = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        python = os.path.join(root, name, "bin", "python")
        if name.startswith(("3.9", "3.10", "3.12", "3.13")) and os.path.exists(python):
            found.append(python)
    return found


@pytest.mark.parametrize("python", _other_pythons() or [pytest.param(None, marks=pytest.mark.skip("none here"))])
def test_sitecustomize_in_a_zip_runs_under_other_python_versions(tmp_path, python):
    # Python 3.9's zipimporter has no exec_module: the chain uses its load_module
    from trace_run.agent.cli import inject_dir

    log = tmp_path / "ran.log"
    archive = _zip(tmp_path, log)
    code = "import os, sys; print(os.getpid(), sys.modules['sitecustomize'].__file__)"
    proc = subprocess.run([python, "-c", code], env=clean_env(PYTHONPATH=os.pathsep.join([inject_dir(), archive])),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    pid, origin = proc.stdout.split()
    assert origin == os.path.join(archive, "sitecustomize.py")
    assert _ran(log) == ["%s -c" % pid]
