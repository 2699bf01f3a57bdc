"""The start-up path does not double back: no import cycle between trace-run's modules or packages.

The graph is read from the source with `ast` (every import, also those inside functions: a lazy
import that closes a cycle still re-enters a half-built module when it runs), and every module
is imported for real, in two orders, to show that none depends on another being imported first.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> the trace_run packages it may import. core depends on nothing; the traced program's
# side (instrumentors, agent) never imports the tools built on top of it.
ALLOWED = {
    "core": set(),
    "instrumentors": {"core"},
    "agent": {"core", "instrumentors"},
    "bootstrap": {"core", "instrumentors"},
    "viewer": {"core", "instrumentors", "agent"},
}
# The launcher runs before any program (`python -S`), never inside one: it may dispatch to the tools.
LAUNCHER = "trace_run.agent.cli"


def packages() -> dict:
    """trace_run package -> folder, as pyproject's package-dir installs them."""
    text = (ROOT / "pyproject.toml").read_text()
    line = re.search(r"^package-dir\s*=\s*\{(.*)\}", text, re.M).group(1)
    return {name.split(".")[1]: ROOT / folder for name, folder in re.findall(r'"(trace_run\.\w+)"\s*=\s*"(\w+)"', line)}


def modules() -> dict:
    """Dotted module name -> file, for every module of every package (not the injected sitecustomize)."""
    out = {}
    for pkg, folder in packages().items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if "inject" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["trace_run", pkg] + parts)] = path
    return out


def graph() -> dict:
    """Module -> the trace_run modules it imports, anywhere in its source."""
    mods = modules()
    edges = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = anchor + ("." + base if base else "")
                targets = [base] + [base + "." + alias.name for alias in node.names]
            else:
                continue
            deps.update(t for t in targets if t in mods and t != name)
        edges[name] = deps
    return edges


def cycles(edges: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package(module: str) -> str:
    return module.split(".")[1]


def test_core_is_a_package_of_its_own():
    assert "core" in packages(), "pyproject.toml installs no trace_run.core"
    assert {"trace_run.core.config", "trace_run.core.log", "trace_run.core.guard",
            "trace_run.core.hooks"} <= set(modules())


def test_no_import_cycle_between_modules():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_packages_import_only_downwards():
    wrong = sorted("%s imports %s" % (a, b) for a, deps in graph().items() for b in deps
                   if package(b) != package(a) and package(b) not in ALLOWED.get(package(a), set())
                   and a != LAUNCHER)
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_packages():
    edges = {}
    for a, deps in graph().items():
        if a != LAUNCHER:
            edges.setdefault(package(a), set()).update(package(b) for b in deps if package(b) != package(a))
    for pkg in packages():
        edges.setdefault(pkg, set())
    assert not cycles(edges)


def test_each_package_imports_for_real_without_those_it_may_not_use():
    """Each package's modules, imported in a fresh interpreter (forwards, then backwards: no module needs
    another imported first), load no trace_run package outside what ALLOWED gives it."""
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "print(' '.join(sorted({m.split('.')[1] for m in sys.modules if m.startswith('trace_run.')})))\n")
    for pkg in packages():
        names = sorted(n for n in modules() if package(n) == pkg and not n.endswith(".__main__") and n != LAUNCHER)
        for order in (names, names[::-1]):
            proc = subprocess.run([sys.executable, "-c", code] + order, capture_output=True, text=True, timeout=120,
                                  cwd=str(ROOT / "tests"))
            assert proc.returncode == 0, proc.stderr[-2000:]
            loaded = set(proc.stdout.split())
            assert pkg in loaded
            assert loaded - {pkg} <= ALLOWED.get(pkg, set()), (pkg, sorted(loaded))
