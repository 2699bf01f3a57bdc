"""Wheels written directly (the format is a zip): tiny projects for real pip installs, no build backend."""

from __future__ import annotations

import os
import zipfile


def write_wheel(folder: str, name: str, version: str, modules: dict, metadata: str = "",
                entry_points: str = "") -> str:
    """A py3-none-any wheel of `name` holding `modules` ({path inside the wheel: source}); its path."""
    dist = name.replace("-", "_")
    info = "%s-%s.dist-info" % (dist, version)
    files = dict(modules)
    files[info + "/METADATA"] = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n%s" % (name, version, metadata)
    files[info + "/WHEEL"] = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points:
        files[info + "/entry_points.txt"] = entry_points
    files[info + "/RECORD"] = "".join("%s,,\n" % f for f in list(files) + [info + "/RECORD"])
    path = os.path.join(folder, "%s-%s-py3-none-any.whl" % (dist, version))
    with zipfile.ZipFile(path, "w") as z:
        for inside, text in files.items():
            z.writestr(inside, text)
    return path


def build_trace_run_wheel(root: str, workdir: str) -> str:
    """trace-run's own wheel, built offline from a copy of the tree at `root` (the build leaves
    nothing in it) into `workdir`; its path. Slow (~6 s): tests share one, conftest's `trace_run_wheel`."""
    import shutil
    import subprocess
    import sys

    source = os.path.join(workdir, "source", "trace-run")
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "*.so", "__pycache__", ".*_cache", ".venvs", ".hypothesis"))
    out = os.path.join(workdir, "wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", out, source], check=True, capture_output=True, timeout=300)
    (built,) = [os.path.join(out, f) for f in os.listdir(out) if f.startswith("trace_run-") and f.endswith(".whl")]
    return built
