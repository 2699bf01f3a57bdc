"""`trace-bootstrap -a install`: one pip call that adds instrumentors and changes nothing else.

Every installed distribution is pinned through a constraints file, so pip can
only add packages; a plan that would upgrade or downgrade something fails
instead. First pip resolves the plan without installing (`--dry-run
--report`): a package the index has no release of for this
opentelemetry-instrumentation is left out and named (pip stops at the first,
so this repeats until the rest resolves), and a package whose declared
`instruments` range leaves out the installed library is left out too. What
remains is installed in one call; afterwards `pip check` looks for conflicts.
Packages that do not exist are not a failure (exit 0, each one listed with
what to do); when pip itself fails the environment is put back as it was
(distributions pip added are removed) and the user is told what failed and
what to run instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, List, NamedTuple, Optional, TextIO

from .coverage import Report, in_range
from .detect import canonical, instruments

_NETWORK_SIGNS = (
    "Failed to establish a new connection", "NewConnectionError", "Connection refused", "Network is unreachable",
    "Temporary failure in name resolution", "Name or service not known", "ProxyError", "Max retries exceeded",
    "ConnectTimeoutError", "Read timed out", "SSLError", "No route to host",
)


_NOT_ON_INDEX = re.compile(r"Could not find a version that satisfies the requirement (\S+) \(from versions: ([^)]*)\)")
_PROBE_PIP = (22, 2)  # first pip with --dry-run and --report


class Absent(NamedTuple):
    """A requirement the index has no release of (`versions`: the releases it has)."""

    requirement: str
    versions: List[str]


class Unsupported(NamedTuple):
    """A requirement whose `instruments` range leaves out the installed library."""

    requirement: str
    library: str
    version: str
    spec: str


class Outcome:
    """What -a install did, for the table printed after it."""

    def __init__(self) -> None:
        self.installed: List[str] = []
        self.absent: List[Absent] = []
        self.unsupported: List[Unsupported] = []


class Failure(Exception):
    """A step failed: `what` is the message, `instead` what the user can run."""

    def __init__(self, what: str, instead: List[str], output: str = ""):
        super().__init__(what)
        self.what = what
        self.instead = instead
        self.output = output
        self.left = ""  # what pip left behind, when it could not be undone


def _pip_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env["PIP_NO_INPUT"] = "1"
    return env


def _pip(python: str, args: List[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip"] + args, capture_output=True, text=True, env=_pip_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


def constraints(report: Report) -> List[str]:
    """`name==version` for every installed distribution (=== when the version is not PEP 440)."""
    from packaging.version import InvalidVersion, Version

    out = []
    for d in report.detected["distributions"]:
        version = d["version"]
        if not version:
            continue
        try:
            Version(version)
            op = "=="
        except InvalidVersion:
            op = "==="
        out.append("%s%s%s" % (canonical(d["name"]), op, version))
    return out


def _offline(python: str, reqs: List[str]) -> List[str]:
    joined = " ".join(reqs)
    return ["when the index is reachable: trace-bootstrap --python %s -a install" % python,
            "offline: on a machine with network, `pip download -d wheels %s`; then here: "
            "`%s -m pip install --no-index --find-links wheels %s`" % (joined, python, joined)]


def _explain(proc: subprocess.CompletedProcess, reqs: List[str], python: str, otel: Optional[str]) -> Failure:
    output = (proc.stdout or "") + "\n" + (proc.stderr or "")
    plain = "%s -m pip install %s" % (python, " ".join(reqs))
    if any(sign in output for sign in _NETWORK_SIGNS):
        return Failure(
            "pip could not reach the package index (no network, a proxy, or a wrong index URL)",
            _offline(python, reqs), output)
    if "(from versions: none)" in output:
        return Failure(
            "pip found no release at all of %s: the package index is unreachable or switched off "
            "(no network, PIP_NO_INDEX / --no-index, or a wrong PIP_INDEX_URL)" % _not_found(output, reqs),
            _offline(python, reqs), output)
    if "ResolutionImpossible" in output or "conflicting dependencies" in output:
        return Failure(
            "these packages need other versions of libraries already installed, and trace-bootstrap never "
            "upgrades or downgrades an installed library",
            ["see what pip would change: %s --dry-run" % plain,
             "then, if that is acceptable: %s" % plain], output)
    if "No matching distribution found" in output or "Could not find a version" in output:
        hint = ("upstream instrumentation packages are released with the version of opentelemetry-instrumentation "
                "(%s here), and not every package has every patch release" % otel) if otel else ""
        return Failure(
            "the package index has no matching version of: %s%s" % (
                _not_found(output, reqs),
                " (%s)" % hint if hint else ""),
            ["install the packages that exist one by one, e.g. %s -m pip install %s" % (python, reqs[0]),
             "or move opentelemetry-instrumentation (and trace-run's other OpenTelemetry packages) to a release "
             "all of them share, then run trace-bootstrap -a install again"], output)
    return Failure("pip install failed (exit status %d)" % proc.returncode,
                   ["read pip's message above; the same install by hand: %s" % plain], output)


def _not_found(output: str, reqs: List[str]) -> str:
    """The requirements pip named as not found (all of them when it named none)."""
    named = [r for r in reqs if "requirement %s" % r in output or "found for %s" % r in output]
    return ", ".join(named or reqs)


def _check(python: str) -> List[str]:
    """Problems `pip check` reports (an empty list when there are none)."""
    proc = _pip(python, ["check"], timeout=300)
    if proc.returncode == 0:
        return []
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def run(report: Report, python: str, redetect: Callable[[], dict], progress: TextIO = sys.stderr,
        outcome: Optional[Outcome] = None) -> int:
    """Install report.requirements into `python`'s environment; 0 on success (also when some do not exist)."""
    reqs = report.requirements
    outcome = outcome if outcome is not None else Outcome()
    steps = 4

    def step(n: int, text: str) -> None:
        progress.write("[%d/%d] %s\n" % (n, steps, text))
        progress.flush()

    step(1, "%d distribution(s) found in %s; to install: %s" % (
        len(report.detected["distributions"]), python, " ".join(reqs) or "nothing"))
    if not reqs:
        progress.write("nothing to install: every traceable library is covered\n")
        return 0
    try:
        step(2, "checking pip in %s" % python)
        version = _pip(python, ["--version"], timeout=120) if report.detected["pip"] else None
        if version is None or version.returncode != 0:
            raise Failure(
                "%s has no pip" % python,
                ["add pip to it: %s -m ensurepip, then run trace-bootstrap -a install again" % python,
                 "or install with a pip from elsewhere: pip --python %s install %s" % (python, " ".join(reqs)),
                 "or: uv pip install --python %s %s" % (python, " ".join(reqs))])
        before_problems = _check(python)
        step(3, "installing %d package(s) in one pip call; %d installed distributions pinned" % (
            len(reqs), len(report.detected["distributions"])))
        with tempfile.TemporaryDirectory(prefix="trace-bootstrap-") as tmp:
            path = os.path.join(tmp, "constraints.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(constraints(report)) + "\n")
            todo = list(reqs)
            if _pip_version(version.stdout) >= _PROBE_PIP:
                todo = _probe(report, python, todo, path, tmp, outcome, progress)
            proc = _pip(python, ["install", "--constraint", path] + todo) if todo else None
        if proc is not None and proc.returncode != 0:
            left = _restore(report, python, redetect, progress)
            failure = _explain(proc, todo, python, report.otel_instrumentation)
            failure.left = left
            raise failure
        step(4, "checking the environment for conflicts (pip check)")
        new_problems = [p for p in _check(python) if p not in before_problems] if todo else []
    except Failure as failure:
        return _report_failure(failure, progress)
    except (OSError, subprocess.SubprocessError) as exc:
        return _report_failure(Failure("could not run pip (%s: %s)" % (type(exc).__name__, exc),
                                       ["%s -m pip install %s" % (python, " ".join(reqs))]), progress)
    outcome.installed = todo
    for problem in before_problems:
        progress.write("note: already there before: %s\n" % problem)
    if new_problems:
        progress.write("trace-bootstrap: installed, but pip check reports conflicts:\n")
        for problem in new_problems:
            progress.write("    %s\n" % problem)
        progress.write("to undo: %s -m pip uninstall -y %s\n" % (python, " ".join(r.split("==")[0] for r in todo)))
        return 1
    if todo:
        progress.write("done: installed %s; no conflicts\n" % " ".join(todo))
    else:
        progress.write("done: nothing could be installed\n")
    _report_left_out(outcome, report, progress)
    return 0


def _pip_version(text: str) -> tuple:
    """(major, minor) from `pip X.Y.Z from ...` ((0, 0) when it does not say)."""
    m = re.match(r"\s*pip (\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _probe(report: Report, python: str, todo: List[str], constraint: str, tmp: str, outcome: Outcome,
           progress: TextIO) -> List[str]:
    """The requirements that exist and support the installed libraries (pip resolves, installs nothing)."""
    todo = list(todo)
    path = os.path.join(tmp, "report.json")
    while todo:
        proc = _pip(python, ["install", "--dry-run", "--quiet", "--report", path, "--constraint", constraint] + todo)
        if proc.returncode == 0:
            break
        absent = _absent(proc.stdout + "\n" + proc.stderr, todo)
        if absent is None:  # pip failed for another reason; a dry run changed nothing
            raise _explain(proc, todo, python, report.otel_instrumentation)
        progress.write("    not on the package index: %s (it has %s); going on without it\n" % (
            absent.requirement, _releases(absent.versions)))
        outcome.absent.append(absent)
        todo.remove(absent.requirement)
    if not todo:
        return todo
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f).get("install", [])
    except (OSError, ValueError):
        return todo
    by_name = {canonical(r.split("==")[0]): r for r in todo}
    for item in plan:
        meta = item.get("metadata") or {}
        req = by_name.get(canonical(meta.get("name", "")))
        if req is None:
            continue
        for library, spec in instruments(meta.get("requires_dist") or ()).items():
            d = report.installed.get(library)
            if d and spec and in_range(d["version"], spec) is False:
                progress.write("    %s instruments %s%s, not the installed %s; going on without it\n" % (
                    req, library, spec, d["version"]))
                outcome.unsupported.append(Unsupported(req, library, d["version"], spec))
                todo.remove(req)
                break
    return todo


def _absent(output: str, todo: List[str]) -> Optional[Absent]:
    """The requirement pip found no such release of, when it is one of ours and the index has others."""
    for m in _NOT_ON_INDEX.finditer(output):
        versions = [v.strip() for v in m.group(2).split(",") if v.strip() and v.strip() != "none"]
        if m.group(1) in todo and versions:
            return Absent(m.group(1), versions)
    return None


def _releases(versions: List[str]) -> str:
    shown = versions[-3:]
    return ("..., " if len(versions) > 3 else "") + ", ".join(shown)


def _library_of(report: Report, requirement: str) -> str:
    return next((r.library for r in report.rows if requirement in r.requirements), "its library")


def _report_left_out(outcome: Outcome, report: Report, progress: TextIO) -> None:
    """Every requirement left out, each with what to do about it."""
    otel = report.otel_instrumentation
    if outcome.absent:
        progress.write("not installed: the package index has no release of these for opentelemetry-instrumentation "
                       "%s\n" % otel)
        for a in outcome.absent:
            progress.write(
                "    %s (%s stays untraced): the index has up to %s. Run trace-bootstrap -a install again once "
                "trace-run's OpenTelemetry packages are at a release that has it; or, to have it now, move "
                "opentelemetry-instrumentation and its siblings to %s first\n" % (
                    a.requirement, _library_of(report, a.requirement), a.versions[-1], a.versions[-1]))
    if outcome.unsupported:
        progress.write("not installed: they do not support the installed library\n")
        for u in outcome.unsupported:
            progress.write("    %s: no upstream instrumentor supports %s %s (it instruments %s%s); that library "
                           "stays untraced\n" % (u.requirement, u.library, u.version, u.library, u.spec))


def _restore(report: Report, python: str, redetect: Callable[[], dict], progress: TextIO) -> str:
    """Remove any distribution pip added before it failed; "" when the environment is as it was."""
    try:
        after = redetect()
    except Exception as exc:
        return "could not re-read the environment after pip failed (%s)" % exc
    before = {canonical(d["name"]) for d in report.detected["distributions"]}
    added = [canonical(d["name"]) for d in after["distributions"] if canonical(d["name"]) not in before]
    if not added:
        return ""
    progress.write("removing what pip added before failing: %s\n" % " ".join(added))
    if _pip(python, ["uninstall", "-y"] + added, timeout=600).returncode != 0:
        return "pip left %s installed; remove with: %s -m pip uninstall -y %s" % (
            " ".join(added), python, " ".join(added))
    return ""


def _report_failure(failure: Failure, progress: TextIO) -> int:
    progress.write("trace-bootstrap: install failed: %s\n" % failure.what)
    if failure.output.strip():
        progress.write("pip said:\n%s\n" % _tail(failure.output))
    if failure.left:
        progress.write("trace-bootstrap: %s\n" % failure.left)
        progress.write("Instead, run:\n")
    else:
        progress.write("the environment was not changed. Instead, run:\n")
    for line in failure.instead:
        progress.write("    %s\n" % line)
    return 1
