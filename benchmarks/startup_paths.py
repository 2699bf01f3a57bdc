"""Start-up of two trace-run installs side by side (e.g. main's and a branch's virtualenv).

    python benchmarks/startup_paths.py VENV_A VENV_B [--runs N]

For each: the wall time of `trace-run python -c pass` and of `trace-run python -c "import flask,
requests, psycopg, redis"` (the SDK built, four instrumentors applied), interleaved over N rounds,
medians; then `python -X importtime` of each under the agent's sitecustomize: trace-run's own modules'
import time (self, summed), sitecustomize's cumulative time, and the cumulative time of the command's
own imports (the hooks they fire included), medians of 11 runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = {"pass": "pass", "flask+requests+psycopg+redis": "import flask, requests, psycopg, redis"}


def env_for(venv: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    env["OTEL_TRACES_EXPORTER"] = "none"
    return env


def wall(venv: str, code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([os.path.join(venv, "bin", "trace-run"), "python", "-c", code], env=env_for(venv), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    return (time.perf_counter() - t0) * 1000.0


def importtime(venv: str, code: str) -> tuple:
    """(trace_run modules' own import ms summed, sitecustomize's cumulative ms, the cumulative ms of the
    modules the command imports itself: with the hooks they fire, the SDK built and the patching)."""
    inject = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                             "import trace_run.agent.cli as m; print(m.inject_dir())"],
                            capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout.strip()
    env = dict(env_for(venv), PYTHONPATH=inject)
    res = subprocess.run([os.path.join(venv, "bin", "python"), "-X", "importtime", "-c", code], env=env,
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    wanted = {m.strip() for m in code.replace("import ", "").split(",")} if code.startswith("import ") else set()
    ours = site = program = 0
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|", 2)
        if name.strip().startswith("trace_run"):
            ours += int(self_us)
        if name.strip() == "sitecustomize":
            site = int(cum_us)
        if not name.startswith("  ") and name.strip() in wanted:  # top level: the command's own imports
            program += int(cum_us)
    return ours / 1000.0, site / 1000.0, program / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("venvs", nargs=2)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    samples = {(v, w): [] for v in args.venvs for w in WORKLOADS}
    for v in args.venvs:
        for code in WORKLOADS.values():
            wall(v, code)  # warm the .pyc files and the page cache
    for i in range(args.runs):
        for v in (args.venvs if i % 2 == 0 else args.venvs[::-1]):
            for w, code in WORKLOADS.items():
                samples[(v, w)].append(wall(v, code))
    print("| venv | workload | median wall ms (trace-run python ...) | trace_run's own import ms | "
          "sitecustomize, cumulative ms | the command's imports, cumulative ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for v in args.venvs:
        for w, code in WORKLOADS.items():
            times = [importtime(v, code) for _ in range(11)]
            print("| %s | %s | %.1f | %.1f | %.1f | %.1f |" % (
                v, w, statistics.median(samples[(v, w)]), statistics.median(t[0] for t in times),
                statistics.median(t[1] for t in times), statistics.median(t[2] for t in times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
