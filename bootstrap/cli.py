"""`trace-bootstrap`: which libraries of an environment are traced, and cover the rest.

Run it with the environment's interpreter, or point `--python` at another
one: detection then runs in that interpreter as a stdlib-only script, so it
needs nothing of ours installed there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import List, Optional

from . import coverage, detect

DESCRIPTION = """List the installed libraries that can be traced and how: built into trace-run,
covered by an installed instrumentor, or coverable by an upstream package. With
-a requirements, print the packages to install (one per line); with -a install,
install them with the environment's pip (nothing installed is ever upgraded or
downgraded)."""


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trace-bootstrap", description=DESCRIPTION)
    p.add_argument("-a", "--action", choices=("list", "requirements", "install"), default="list",
                   help="list (default): the table; requirements: requirement lines only; install: pip install them")
    p.add_argument("--all", action="store_true", help="list the libraries that cannot be traced too")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--python", metavar="PATH",
                   help="inspect this interpreter's environment (a python executable, or a virtualenv folder)")
    return p


def resolve_python(arg: str) -> Optional[str]:
    """The executable `--python` names: a path, a virtualenv folder, or a command on PATH."""
    candidates = [arg]
    if os.path.isdir(arg):
        candidates = [os.path.join(arg, "bin", "python"), os.path.join(arg, "bin", "python3"),
                      os.path.join(arg, "Scripts", "python.exe")]
    elif os.sep not in arg and (os.altsep is None or os.altsep not in arg):
        candidates = [shutil.which(arg) or ""]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


# Drop the current folder from sys.path there: a json.py in it must not shadow the stdlib.
_PREAMBLE = "import sys\nif sys.path and sys.path[0] in ('', '.'):\n    del sys.path[0]\n"


def detect_in(python: Optional[str]) -> dict:
    """detect.detect() run in `python` (in this process when None)."""
    if python is None:
        return detect.detect()
    with open(detect.__file__, encoding="utf-8") as f:
        source = _PREAMBLE + f.read()
    try:
        proc = subprocess.run([python, "-c", source], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError("cannot run %s (%s)" % (python, exc))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
        raise UsageError("cannot inspect %s: %s (a Python 3.8+ interpreter is needed)" % (python, last))
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise UsageError("cannot inspect %s: it printed no report (is it a Python interpreter?)" % python)


def format_table(report: coverage.Report, include_all: bool = False) -> str:
    d = report.detected
    lines = ["Python %s at %s; opentelemetry-instrumentation %s; trace-run %s" % (
        d["python_version"], d["executable"], report.otel_instrumentation or "not installed",
        report.trace_run or "not installed"), ""]
    rows = report.rows + (report.untraceable if include_all else [])
    rows.sort(key=lambda r: r.library.lower())
    table = [("Library", "Version", "Coverage")] + [(r.library, r.version, r.detail) for r in rows]
    w0 = max(len(t[0]) for t in table)
    w1 = max(len(t[1]) for t in table)
    lines += ["%-*s  %-*s  %s" % (w0, a, w1, b, c) for a, b, c in table]
    counts = {k: sum(1 for r in report.rows if r.coverage == k) for k in
              (coverage.BUILT_IN, coverage.THIRD_PARTY, coverage.SELF_TRACED, coverage.COVERABLE,
               coverage.UNAVAILABLE, coverage.UNSUPPORTED)}
    summary = "%d traced by trace-run, %d by installed instrumentors, " % (
        counts[coverage.BUILT_IN], counts[coverage.THIRD_PARTY])
    if counts[coverage.SELF_TRACED]:
        summary += "%d by themselves, " % counts[coverage.SELF_TRACED]
    summary += "%d coverable" % counts[coverage.COVERABLE]
    if counts[coverage.UNAVAILABLE]:
        summary += ", %d without a package for this opentelemetry-instrumentation" % counts[coverage.UNAVAILABLE]
    if counts[coverage.UNSUPPORTED]:
        summary += ", %d in versions no upstream instrumentor supports" % counts[coverage.UNSUPPORTED]
    if report.requirements:
        summary += ": run `trace-bootstrap -a install` (or `-a requirements`) to cover them"
    lines += ["", summary + "."]
    if not include_all and report.untraceable:
        lines.append("%d other distributions cannot be traced (--all lists them)." % len(report.untraceable))
    if report.trace_run is None:
        lines.append("trace-run is not installed in this environment: install it there for the built-in coverage.")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    python = None
    if args.python:
        python = resolve_python(args.python)
        if python is None:
            sys.stderr.write("trace-bootstrap: --python %s: no such interpreter (give the path of a python "
                             "executable or of a virtualenv folder)\n" % args.python)
            return 2
    try:
        report = coverage.build(detect_in(python))
    except UsageError as exc:
        sys.stderr.write("trace-bootstrap: %s\n" % exc)
        return 2
    if args.action == "requirements" and not args.json:
        for line in report.requirements:
            sys.stdout.write(line + "\n")
        return 0
    if args.action == "install":
        from . import install

        target = python or sys.executable  # re-detection after pip runs in a fresh process
        outcome = install.Outcome()
        status = install.run(report, target, lambda: detect_in(target), outcome=outcome)
        if status == 0 and report.requirements:
            try:
                report = coverage.build(detect_in(target))
            except UsageError as exc:
                sys.stderr.write("trace-bootstrap: %s\n" % exc)
                return 1
            report.left_out({a.requirement: a.versions[-1] for a in outcome.absent},
                            {u.requirement: "%s instruments %s%s" % (u.requirement, u.library, u.spec)
                             for u in outcome.unsupported})
        if args.json:
            sys.stdout.write(json.dumps(report.as_dict(args.all), indent=2) + "\n")
        elif status == 0:
            sys.stdout.write(format_table(report, args.all))
        return status
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(args.all), indent=2) + "\n")
    else:
        sys.stdout.write(format_table(report, args.all))
    return 0
