"""What tracing costs on a huge SQL statement: a ~7 MB multi-row INSERT into SQLite, bare and traced.

    python benchmarks/huge_statement.py [--rounds N]

Each round runs the same program twice in fresh processes, bare and under `trace-run`
(exporter `none`: only the instrumentation is measured), and times `execute()` inside it.
Sanitizing scans only a bounded prefix of the statement (`OTEL_TRACE_RUN_MAX_VALUE_LENGTH`
x 8 characters), so the traced time should be the bare time plus a few milliseconds.
Prints the median of each and their ratio. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

PROGRAM = r"""
import sqlite3, time
db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE items (id INTEGER, name TEXT)")
sql = "INSERT INTO items (id, name) VALUES " + ",".join("(%d, 'secret-%d')" % (i, i) for i in range(300_000))
started = time.perf_counter()
db.execute(sql)
elapsed = time.perf_counter() - started
print(len(sql), elapsed)
"""


def _run(script: str, traced: bool) -> tuple:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = "none"
    bindir = os.path.dirname(sys.executable)
    cmd = ([os.path.join(bindir, "trace-run")] if traced else []) + [sys.executable, script]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PROGRAM)
    try:
        bare, traced = [], []
        for _ in range(args.rounds):  # interleaved: load drifts affect both alike
            size, t = _run(f.name, False)
            bare.append(t)
            traced.append(_run(f.name, True)[1])
    finally:
        os.unlink(f.name)
    b, t = statistics.median(bare), statistics.median(traced)
    print("statement: %.1f MB, %d rounds" % (size / 1e6, args.rounds))
    print("bare   execute: %.3f s (median)" % b)
    print("traced execute: %.3f s (median)" % t)
    print("traced / bare: %.3f" % (t / b))


if __name__ == "__main__":
    main()
