"""core.hooks as the agent's one re-entrancy mechanism: builds run with hooks held; busy() while a
tracked module executes. In-process, on throwaway modules; the start-up tests run it for real."""

import sys
import threading

import pytest
from trace_run.core import hooks


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("tr_probe_")]:
        del sys.modules[name]


def test_hooks_triggered_inside_held_run_when_it_ends(module_dir):
    (module_dir / "tr_probe_held.py").write_text("VALUE = 1\n")
    fired = []
    hooks.when_imported("tr_probe_held", lambda m: fired.append(m.VALUE))
    with hooks.held():
        assert hooks.building()
        with hooks.held():  # nested: the outer one releases them
            import tr_probe_held  # noqa: F401
        assert fired == []
    assert fired == [1]
    assert not hooks.building()


def test_held_defers_this_thread_only(module_dir):
    (module_dir / "tr_probe_other.py").write_text("VALUE = 2\n")
    fired = []
    hooks.when_imported("tr_probe_other", lambda m: fired.append(threading.current_thread().name))
    with hooks.held():
        t = threading.Thread(target=lambda: __import__("tr_probe_other"), name="importer")
        t.start()
        t.join()
        assert fired == ["importer"]


def test_a_failing_build_still_runs_the_hooks_it_held(module_dir):
    (module_dir / "tr_probe_fail.py").write_text("VALUE = 3\n")
    fired = []
    hooks.when_imported("tr_probe_fail", lambda m: fired.append(m.VALUE))
    with pytest.raises(RuntimeError):
        with hooks.held():
            import tr_probe_fail  # noqa: F401

            raise RuntimeError("the build failed")
    assert fired == [3]


def test_busy_while_a_tracked_module_executes_in_any_thread(module_dir):
    (module_dir / "tr_probe_busy.py").write_text(
        "import threading\n"
        "from trace_run.core import hooks\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(hooks.busy()))\n"
        "t.start(); t.join()\n"
        "SEEN_FROM_ANOTHER_THREAD = seen[0]\n"
    )
    hooks.track(["tr_probe_busy"])
    assert not hooks.busy()
    import tr_probe_busy

    assert tr_probe_busy.SEEN_FROM_ANOTHER_THREAD is True
    assert not hooks.busy()


def test_a_tracked_module_is_complete_when_its_own_hooks_run(module_dir):
    (module_dir / "tr_probe_done.py").write_text("VALUE = 4\n")
    hooks.track(["tr_probe_done"])
    seen = []
    hooks.when_imported("tr_probe_done", lambda m: seen.append(hooks.busy()))
    import tr_probe_done  # noqa: F401

    assert seen == [False]


def test_a_child_forked_during_another_threads_import_is_not_busy_and_imports(module_dir):
    (module_dir / "tr_probe_slow.py").write_text(
        "import threading\nSTARTED = threading.Event()\nRELEASE = threading.Event()\n")
    (module_dir / "tr_probe_blocks.py").write_text(
        "import tr_probe_slow\ntr_probe_slow.STARTED.set()\ntr_probe_slow.RELEASE.wait(30)\n")
    (module_dir / "tr_probe_child.py").write_text("VALUE = 5\n")
    code = (
        "import os, sys, threading\n"
        "sys.path.insert(0, %r)\n"
        "from trace_run.core import hooks\n"
        "import tr_probe_slow\n"
        "hooks.track(['tr_probe_blocks'])\n"
        "seen = []\n"
        "hooks.when_imported('tr_probe_child', lambda m: seen.append(m.VALUE))\n"
        "t = threading.Thread(target=lambda: __import__('tr_probe_blocks'), daemon=True)\n"
        "t.start(); tr_probe_slow.STARTED.wait(30)\n"
        "assert hooks.busy()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ok = not hooks.busy()\n"
        "    import tr_probe_child\n"
        "    os._exit(0 if ok and seen == [5] else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "tr_probe_slow.RELEASE.set(); t.join()\n"
        "print('child', os.waitstatus_to_exitcode(status), 'parent busy', hooks.busy())\n"
    ) % str(module_dir)
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "child 0 parent busy False", proc.stdout + proc.stderr


def test_when_imported_each_arms_in_order_and_runs_those_already_imported(module_dir):
    (module_dir / "tr_probe_each_a.py").write_text("VALUE = 'a'\n")
    (module_dir / "tr_probe_each_b.py").write_text("VALUE = 'b'\n")
    import tr_probe_each_a  # noqa: F401  already imported: its callback runs at once

    fired = []
    hooks.when_imported_each([
        ("tr_probe_each_b", lambda m: fired.append("b1 " + m.VALUE)),
        ("tr_probe_each_a", lambda m: fired.append("a " + m.VALUE)),
        ("tr_probe_each_b", lambda m: fired.append("b2 " + m.VALUE)),
    ])
    assert fired == ["a a"]
    import tr_probe_each_b  # noqa: F401

    assert fired == ["a a", "b1 b", "b2 b"]
