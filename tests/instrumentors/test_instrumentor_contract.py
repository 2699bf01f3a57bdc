"""The contract every built-in instrumentor keeps, one parametrized test per promise.

For each library of the registry: applying it by hand patches something and `uninstrument()` puts
back the exact original objects (twice over); applying it twice wraps nothing twice; its version
range is declared and holds for the installed library; under the agent it traces the library
whether the program imported it after the agent started or before; and a bug planted in it
(OTEL_TRACE_RUN_TEST_FAULT) reaches neither the program nor the other instrumentors.
A new library passes by adding its registry entry and an exercise in tests/support/contract.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from support import clean_env, run_traced, write_script
from support.contract import EXERCISES, PATCH_PROBE
from trace_run.instrumentors import registry

LIBRARIES = list(registry.BUILTIN)
SCOPE = "trace_run.instrumentors."


def test_every_library_has_an_exercise():
    assert sorted(EXERCISES) == sorted(LIBRARIES)


@pytest.mark.parametrize("name", LIBRARIES)
def test_patch_unpatch_and_double_patch_restore_the_exact_originals(name):
    """By hand, in a bare interpreter: instrument() changes something, twice changes nothing more,
    uninstrument() restores every original object, again; then the library makes no spans."""
    exercise = textwrap.dedent(EXERCISES[name])
    proc = subprocess.run([sys.executable, "-c", PATCH_PROBE, name, exercise], env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["patched"], "instrument() patched nothing"
    assert seen["second"] == [], "a second instrument() wrapped again"
    assert seen["restored"] == [], "uninstrument() left these changed"
    assert seen["repatched"] == seen["patched"]
    assert seen["restored_again"] == []
    assert seen["spans_after_uninstrument"] == []


@pytest.mark.parametrize("name", LIBRARIES)
def test_version_range_is_declared_and_holds(name):
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet

    entry = registry.BUILTIN[name]
    if not entry.distributions:
        assert entry.supported == "stdlib"
        return
    spec = SpecifierSet(entry.supported)
    installed = []
    for dist in entry.distributions:
        try:
            installed.append(version(dist))
        except PackageNotFoundError:
            continue
    assert installed and all(v in spec for v in installed), (entry.supported, installed)
    inst = registry.load(entry)()
    assert list(inst.instrumentation_dependencies())[0].endswith(" " + entry.supported)


def _program(name: str, started_before: bool) -> str:
    body = textwrap.dedent(EXERCISES[name])
    if not started_before:
        return body
    # The library is imported first, then the agent is started by hand (as an embedding program would).
    first = next(line for line in body.splitlines() if line.startswith("import "))
    return first + "\nfrom trace_run.agent import boot\nboot.start()\n" + body


def _scopes(spans) -> set:
    return {s.scope for s in spans}


@pytest.mark.parametrize("started_before", [False, True], ids=["imported-after-start", "imported-before-start"])
@pytest.mark.parametrize("name", LIBRARIES)
def test_traced_whether_imported_before_or_after_the_agent_starts(name, started_before, tmp_path, receiver):
    bare_script = write_script(tmp_path, _program(name, False), "bare.py")
    bare = subprocess.run([sys.executable, bare_script], env=clean_env(), capture_output=True, text=True, timeout=60)
    script = write_script(tmp_path, _program(name, started_before))
    env = clean_env(**receiver.env())
    if started_before:
        proc = run_traced([sys.executable, script], env=env, trace_run=False)
    else:
        proc = run_traced(["python", script], env=env)
    assert (proc.returncode, proc.stdout) == (bare.returncode, bare.stdout), proc.stderr
    if name == "threading":
        spans = receiver.wait_for(lambda ss: {"outer", "inner"} <= {s.name for s in ss}, timeout=10)
        by_name = {s.name: s for s in spans}
        assert by_name["inner"].parent_id == by_name["outer"].span_id
        assert by_name["inner"].trace_id == by_name["outer"].trace_id
    else:
        spans = receiver.wait_for(lambda ss: SCOPE + name in _scopes(ss), timeout=10)
        assert SCOPE + name in _scopes(spans)


@pytest.mark.parametrize("name", LIBRARIES)
def test_a_bug_in_the_instrumentor_reaches_neither_the_program_nor_the_others(name, tmp_path, receiver):
    script = write_script(tmp_path, textwrap.dedent(EXERCISES[name]) + textwrap.dedent("""
        import sqlite3 as _other
        _other.connect(":memory:").execute("SELECT 1")
    """))
    bare = subprocess.run([sys.executable, script], env=clean_env(), capture_output=True, text=True, timeout=60)
    other = "threading" if name == "sqlite3" else "sqlite3"
    env = clean_env(**receiver.env(), OTEL_TRACE_RUN_TEST_FAULT=name, OTEL_TRACE_RUN_RAISE_ERRORS="false")
    proc = run_traced(["python", script], env=env, timeout=60)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("trace-run:")]
    theirs = [line for line in proc.stderr.splitlines() if not line.startswith("trace-run:")]
    assert (proc.returncode, proc.stdout, theirs) == (bare.returncode, bare.stdout, bare.stderr.splitlines())
    if name != "threading":  # it makes no spans: there is no tracer call to break
        assert len(ours) == 1 and "instrumentation error in" in ours[0], ours
        assert "simulated bug in the %s instrumentor" % name in ours[0], ours
    if other == "sqlite3":
        spans = receiver.wait_for(lambda ss: SCOPE + "sqlite3" in _scopes(ss), timeout=10)
        assert SCOPE + name not in _scopes(spans)
