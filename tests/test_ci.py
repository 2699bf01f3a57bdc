"""`.ci/run` runs from scratch: Hypothesis examples saved in a checkout are not replayed there."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAILING = '''
from hypothesis import given, settings, strategies as st

settings.load_profile("default")  # Hypothesis loads its "ci" profile, which saves nothing, where CI is set

@given(st.integers())
def test_saves_a_failure(n):
    assert n < 10
'''


def test_ci_points_hypothesis_at_a_fresh_directory():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        script = f.read()
    setting = re.search(r'^export HYPOTHESIS_STORAGE_DIRECTORY="\$WORK/[^"]+"$', script, re.M)
    assert setting, "HYPOTHESIS_STORAGE_DIRECTORY is not set under $WORK (the run's own temporary folder)"
    assert re.search(r'^WORK=\$\(mktemp -d ', script, re.M) and "trap 'rm -rf \"$WORK\"' EXIT" in script
    first_pytest = min(m.start() for m in re.finditer(r"-m pytest", script))
    assert setting.start() < first_pytest


def test_hypothesis_keeps_its_examples_where_the_variable_says(tmp_path):
    # what the setting above relies on: nothing is read from or written to the checkout's .hypothesis/
    (tmp_path / "test_saves.py").write_text(FAILING)
    store = tmp_path / "store"
    env = dict(os.environ, HYPOTHESIS_STORAGE_DIRECTORY=str(store), CI="true")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_saves.py"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "assert 10 < 10" in proc.stdout, proc.stdout
    assert not (tmp_path / ".hypothesis").exists()
    assert any(files for _, _, files in os.walk(store / "examples")), "the failure was not saved there"


def test_ci_has_a_leg_at_pyprojects_floor():
    """Every OpenTelemetry package (and wrapt) pyproject depends on has a `>=` floor, and CI installs exactly
    those floors for a run of the start-up and in-process tests: the floor is what is tested."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ci_floor", os.path.join(ROOT, ".ci", "floor.py"))
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    pins = dict(p.split("==") for p in floor.floors(pyproject))
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", pyproject, re.M | re.S).group(1)
    named = {re.match(r"[A-Za-z0-9_.\-]+", d).group(0) for d in re.findall(r'"([^"]+)"', deps) if ";" not in d}
    assert named == set(pins), "dependencies without a >= floor: %s" % sorted(named - set(pins))
    assert {"opentelemetry-api", "opentelemetry-sdk", "opentelemetry-instrumentation", "wrapt"} <= set(pins)
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        script = f.read()
    leg = script[script.index('"$PY" .ci/floor.py)'):]
    assert re.match(r'"\$PY" \.ci/floor\.py\) 2>&1', leg), "the floor venv does not install the floor pins"
    pytest_line = leg[leg.index("-m pytest"):leg.index("\n\n")]
    listed = re.findall(r"tests/\S+\.py", pytest_line)
    for test_file in ("tests/test_agent_e2e.py", "tests/instrumentors/http/test_http_inprocess.py",
                      "tests/test_compat.py"):
        assert test_file in listed
    missing = [f for f in listed if not os.path.isfile(os.path.join(ROOT, f))]
    assert not missing, "the floor leg names test files that do not exist: %s" % missing
