"""An in-process request's time with the CPU caches warm and cold: why the worker pays more than the count says.

    python benchmarks/cold_cache.py [--venv DIR] [--route plain] [--n 1500] [--rounds 3] [--sweep-mib 64]

instructions.py counts ~25k instructions for an unsampled /plain request under trace-run (~5 us on this host),
yet the gunicorn worker's CPU grows by ~10-25 us a request. In a loop calling the app in-process, the agent's code
and objects stay in the caches from one request to the next; in the worker, the kernel's socket work and
gunicorn's own run between two requests and evict them, so each request fetches the agent's code and data from
memory again. This times single calls of the Flask app (profile_route.call), pinned to CPU 1, both ways: back to
back (warm), and each after copying a buffer larger than the caches (cold; the copy is not timed). Bare, and under
trace-run unsampled (always_off) and sampled (always_on; spans go to an OTLP/HTTP sink started here, with a
batch big enough that nothing is exported before the end, as in instructions.py); configurations interleaved,
the same environment for all; medians of the rounds' medians, min-max. Its answer is time, so noisy: read the
cold column's added cost against the warm one's, not as a target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from instructions import _Sink, run_setup  # noqa: E402

_CHILD = r"""
import json, sys, time
sys.path.insert(0, %(here)r)
import profile_route
app, path, n, sweep = profile_route.overhead_app.app, "/" + sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
call, clock = profile_route.call, time.perf_counter_ns
src, dst = bytearray(sweep), bytearray(sweep)
for _ in range(2000):
    call(app, path)
warm, cold = [], []
for i in range(n):
    t = clock(); call(app, path); warm.append(clock() - t)
for i in range(n):
    dst[:] = src
    t = clock(); call(app, path); cold.append(clock() - t)
warm.sort(); cold.sort()
print(json.dumps([warm[n // 2] / 1000, cold[n // 2] / 1000]))
"""

CONFIGS = (("bare", None), ("unsampled", "always_off"), ("sampled", "always_on"))


def run(venv: str, sampler, route: str, n: int, sweep: int, endpoint: str) -> tuple:
    argv, env = run_setup(venv, _CHILD % {"here": HERE}, sampler or "bare", endpoint)
    argv += [route, str(n), str(sweep)]
    out = subprocess.run(["taskset", "-c", "1"] + argv, env=env, capture_output=True, text=True, cwd=HERE)
    if out.returncode != 0:
        raise SystemExit("run failed (%s): %s" % (sampler or "bare", out.stderr[-2000:]))
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=os.path.join(HERE, ".venvs", "tracerun"))
    parser.add_argument("--route", default="plain")
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep-mib", type=int, default=64)
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = "http://127.0.0.1:%d" % sink.server_port
    got = {name: [] for name, _ in CONFIGS}
    for _ in range(args.rounds):
        for name, sampler in CONFIGS:
            got[name].append(run(args.venv, sampler, args.route, args.n, args.sweep_mib << 20, endpoint))
    sink.shutdown()
    print("| /%s, us per call (median of %d rounds; min-max) | warm | cold | cold - warm |" % (args.route, args.rounds))
    print("| --- | --- | --- | --- |")
    base = None
    for name, _ in CONFIGS:
        warm = [w for w, _ in got[name]]
        cold = [c for _, c in got[name]]
        row = (statistics.median(warm), statistics.median(cold))
        cells = ["%.1f (%.1f-%.1f)" % (statistics.median(v), min(v), max(v)) for v in (warm, cold)]
        if base is not None:
            cells = ["%s, +%.1f" % (cell, row[i] - base[i]) for i, cell in enumerate(cells)]
        else:
            base = row
        print("| %s | %s | %s | %.1f |" % (name, cells[0], cells[1], row[1] - row[0]))


if __name__ == "__main__":
    main()
