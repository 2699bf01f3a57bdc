"""Which type attribute lookups miss CPython's type cache on every /plain request, bare and traced (gdb).

    python benchmarks/type_cache.py [--venv DIR] [--seeds 0,1,2] [--n 10]

CPython looks an attribute up through a type (an instance attribute, a method, a class attribute) via a
4096-entry, direct-mapped cache keyed by the type's version tag and the name's hash; where the interpreter
has not specialized the lookup, two (type, name) pairs that land on one entry evict each other, and each
miss walks the type's MRO (`find_name_in_mro`: a dict lookup per class). The name's hash is the seed's, so
which pairs collide is drawn anew with each PYTHONHASHSEED. This runs the overhead app's /plain in-process
(profile_route.call) 2000 times, then N times with a gdb breakpoint on `find_name_in_mro`, and prints the
misses per request and the pairs that missed, for each seed, bare and under trace-run (unsampled, exporter
off). Needs gdb and a CPython with symbols (pyenv's builds have them); Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

_PROGRAM = r"""
import os, sys
sys.path.insert(0, %(here)r)
import profile_route
app = profile_route.overhead_app.app
for _ in range(2000):
    profile_route.call(app, "/plain")
os.kill(os.getpid(), 5)  # SIGTRAP: gdb sets its breakpoint here ...
for _ in range(int(sys.argv[1])):
    profile_route.call(app, "/plain")
os.kill(os.getpid(), 5)  # ... and stops counting here
"""

_GDB = r"""
import collections
import gdb
gdb.execute("set pagination off")
gdb.execute("handle SIGTRAP stop nopass")
gdb.execute("run")
gdb.Breakpoint("find_name_in_mro")
misses = collections.Counter()
while True:
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
    if gdb.selected_frame().name() != "find_name_in_mro":
        break
    kind = gdb.parse_and_eval("type")["tp_name"].string()
    try:
        name = gdb.parse_and_eval("(char *)(((PyASCIIObject *)name) + 1)").string()
    except gdb.error:
        name = "?"
    misses[(kind, name)] += 1
for (kind, name), count in misses.most_common():
    print("MISS %d %s.%s" % (count, kind, name))
gdb.execute("kill")
"""


def misses(venv: str, traced: bool, seed: int, n: int) -> dict:
    """{(type, name): misses} over n requests."""
    bin_dir = os.path.join(venv, "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    env.update(PYTHONHASHSEED=str(seed), PYTHONPATH=os.path.join(HERE, "apps"), OTEL_TRACES_EXPORTER="none",
               OTEL_TRACES_SAMPLER="always_off")
    with tempfile.TemporaryDirectory() as tmp:
        program, script = os.path.join(tmp, "program.py"), os.path.join(tmp, "misses.py")
        with open(program, "w") as f:
            f.write(_PROGRAM % {"here": HERE})
        with open(script, "w") as f:
            f.write(_GDB)
        python = [os.path.join(bin_dir, "python"), program, str(n)]
        if traced:  # the launcher's environment (its folder first on PYTHONPATH), then python under gdb
            out = subprocess.run([os.path.join(bin_dir, "trace-run"), "env"], env=env, capture_output=True, text=True)
            env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        out = subprocess.run(["gdb", "-q", "-batch", "-x", script, "--args"] + python, env=env, capture_output=True,
                             text=True, timeout=900)
    found = {}
    for line in out.stdout.splitlines():
        m = re.match(r"MISS (\d+) (.*)\.([^.]*)$", line)
        if m:
            found[(m.group(2), m.group(3))] = int(m.group(1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=os.path.join(HERE, ".venvs", "tracerun"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n", type=int, default=10, help="requests counted")
    args = parser.parse_args()
    print("| seed | run | misses per request | pairs missing on every request |")
    print("| --- | --- | --- | --- |")
    for seed in (int(x) for x in args.seeds.split(",")):
        for traced in (False, True):
            got = misses(args.venv, traced, seed, args.n)
            every = sorted("%s.%s" % pair for pair, count in got.items() if count >= args.n)
            print("| %d | %s | %.1f | %s |" % (seed, "trace-run" if traced else "bare",
                                               sum(got.values()) / args.n, ", ".join(every) or "-"))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
