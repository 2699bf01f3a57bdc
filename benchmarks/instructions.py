"""Instructions per request and per span, counted by valgrind (callgrind): a measure load cannot move.

    python benchmarks/instructions.py [--venv DIR ...] [--n 1000] [--all | --function NAME ...]

Wall time on this 2-core machine moves by tens of percent with whatever else runs; an instruction
count does not (it moves by well under 1 % between identical runs: ids, times and the garbage
collector's timing differ a little). It is not time (cache misses, branch misses), but an A/B of two
trees of Python code reads the same way in both. Each cell runs a program twice under
`valgrind --tool=callgrind --trace-children=yes` (the launcher execs python: the count is the last
process's), once doing the work 0 times and once N times, after the same warm-up; the difference over
N is the cost of one, every thread included (the export thread's encoding and sending are in it, done
when the program ends and flushes).

Cells, for each venv given (default: benchmarks/.venvs/tracerun, made by venvs.py):
- /plain request, bare (no agent), unsampled (always_off) and sampled (always_on): the Flask app of
  overhead.py called in-process (profile_route.call);
- a span with 5 attributes made by `start_as_current_span` and ended (microspan.py's), sampled;
- with --all, the /all request the same three ways (PostgreSQL, Redis and a `requests` call to
  servers.py's downstream server, started here; those servers' own work is not counted).
Every run gets the same environment variables, OTEL_TRACES_SAMPLER and PYTHONPATH included (bare
ignores the first; the launcher puts its folder first on the second): `requests` reads the whole
environment on every call, so one more variable costs ~40k instructions per call.
Spans go to an OTLP/HTTP receiver this script starts (it answers 200 and discards), with a batch
big enough that nothing is exported before the end. Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))

_ROUTE = r"""
import os, sys
sys.path.insert(0, %(here)r)
n = int(sys.argv[1])
sys.argv = [sys.argv[0], "plain", "1"]
import profile_route
app = profile_route.overhead_app.app
for _ in range(300):
    profile_route.call(app, "/plain")
from opentelemetry import trace
getattr(trace.get_tracer_provider(), "force_flush", lambda: None)()
for _ in range(n):
    profile_route.call(app, "/plain")
"""

_SPAN = r"""
import sys
from opentelemetry import trace
from opentelemetry.trace import SpanKind
ATTRS = {"db.system.name": "postgresql", "db.namespace": "test", "db.operation.name": "SELECT",
         "db.query.text": "SELECT id, name FROM users WHERE id = ?", "server.port": 5432}
tracer = trace.get_tracer("bench")
def spans(k):
    for _ in range(k):
        with tracer.start_as_current_span("SELECT test.users", kind=SpanKind.CLIENT, attributes=ATTRS):
            pass
spans(300)
trace.get_tracer_provider().force_flush()
spans(int(sys.argv[1]))
"""


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _count(python_bin: str, argv: list, env: dict, function: str = "") -> int:
    """Instructions of the run's last process; with `function`, only those inside it (and what it calls)."""
    toggle = ["--toggle-collect=" + function] if function else []
    out = subprocess.run(["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null"]
                         + toggle + argv, env=env, capture_output=True, text=True, cwd=os.path.dirname(HERE))
    found = re.findall(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found:
        raise SystemExit("valgrind run failed (%s): %s" % (" ".join(argv), out.stderr[-2000:]))
    return int(found[-1])


def run_setup(venv: str, script: str, sampler: str, endpoint: str, service: str = "instructions") -> tuple:
    """(argv, env) of one counted run: the same variables for every run, bare too (`requests` reads
    the whole environment on every call); a batch big enough that nothing is exported before the end."""
    bin_dir = os.path.join(venv, "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    # PYTHONPATH in every run, as overhead.py sets it: the launcher puts its folder first on it, and a variable
    # only the traced runs had cost ~330 bytecodes per `requests` call (it reads the whole environment)
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), PYTHONHASHSEED="0",
               PYTHONPATH=os.path.join(HERE, "apps"),
               OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
               OTEL_BSP_SCHEDULE_DELAY="600000", OTEL_BSP_MAX_QUEUE_SIZE="1000000",
               OTEL_BSP_MAX_EXPORT_BATCH_SIZE="1000000", OTEL_SERVICE_NAME=service,
               OTEL_TRACES_SAMPLER="always_on" if sampler == "bare" else sampler)
    argv = [os.path.join(bin_dir, "python"), "-c", script]
    if sampler != "bare":
        argv = [os.path.join(bin_dir, "trace-run")] + argv
    return argv, env


def measure(venv: str, script: str, sampler: str, n: int, endpoint: str, function: str = "") -> int:
    argv, env = run_setup(venv, script, sampler, endpoint)
    bin_dir = os.path.join(venv, "bin")
    return (_count(bin_dir, argv + [str(n)], env, function) - _count(bin_dir, argv + ["0"], env, function)) // n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", action="append", help="a venv with trace-run and the app's libraries (repeatable)")
    parser.add_argument("--n", type=int, default=1000, help="requests (and 2x spans) per counted run")
    parser.add_argument("--all", action="store_true", help="also the /all request (needs PostgreSQL and Redis)")
    parser.add_argument("--function", action="append", default=[],
                        help="instead: the instructions inside this C function (callgrind's name, e.g. start_span) per "
                             "/plain request, unsampled and sampled (repeatable): an A/B of a change too small for the "
                             "whole request's count, which moves by ~1k between runs")
    args = parser.parse_args()
    venvs = args.venv or [os.path.join(HERE, ".venvs", "tracerun")]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = "http://127.0.0.1:%d" % server.server_port
    route = _ROUTE % {"here": HERE}
    if args.function:
        print("| venv | function | /plain unsampled | /plain sampled |")
        print("| --- | --- | --- | --- |")
        for venv in venvs:
            for function in args.function:
                off, on = (measure(venv, route, s, args.n, endpoint, function) for s in ("always_off", "always_on"))
                print("| %s | %s | %d | %d |" % (venv, function, off, on))
                sys.stdout.flush()
        server.shutdown()
        return
    print("| venv | /plain bare | /plain unsampled (over bare) | /plain sampled (over bare) | span, 5 attributes |")
    print("| --- | --- | --- | --- | --- |")
    for venv in venvs:
        bare = measure(venv, route, "bare", args.n, endpoint)
        off = measure(venv, route, "always_off", args.n, endpoint)
        on = measure(venv, route, "always_on", args.n, endpoint)
        span = measure(venv, _SPAN, "always_on", 2 * args.n, endpoint)
        print("| %s | %d | %d (+%d) | %d (+%d) | %d |" % (venv, bare, off, off - bare, on, on - bare, span))
        sys.stdout.flush()
    if args.all:
        _all_cells(venvs, max(args.n // 5, 100), endpoint)
    server.shutdown()


def start_downstream() -> subprocess.Popen:
    """servers.py's downstream server (the /all request calls it), its URL in BENCH_DOWNSTREAM_URL."""
    import tempfile
    import time

    portfile = os.path.join(tempfile.mkdtemp(prefix="instructions-"), "port")
    downstream = subprocess.Popen([sys.executable, os.path.join(HERE, "servers.py"), "downstream", portfile])
    deadline = time.monotonic() + 30
    while not (os.path.exists(portfile) and open(portfile).read().strip()):
        if time.monotonic() > deadline or downstream.poll() is not None:
            downstream.kill()
            raise SystemExit("the downstream server (servers.py downstream) did not start")
        time.sleep(0.1)
    os.environ["BENCH_DOWNSTREAM_URL"] = "http://127.0.0.1:%s/" % open(portfile).read().strip()
    return downstream


def _all_cells(venvs: list, n: int, endpoint: str) -> None:
    """The /all rows: the app process only (PostgreSQL, Redis and the downstream server are not counted)."""
    downstream = start_downstream()
    try:
        script = _ROUTE.replace('"plain"', '"all"').replace('"/plain"', '"/all"') % {"here": HERE}
        print()
        print("| venv | /all bare | /all unsampled (over bare) | /all sampled (over bare) |")
        print("| --- | --- | --- | --- |")
        for venv in venvs:
            bare = measure(venv, script, "bare", n, endpoint)
            off = measure(venv, script, "always_off", n, endpoint)
            on = measure(venv, script, "always_on", n, endpoint)
            print("| %s | %d | %d (+%d) | %d (+%d) |" % (venv, bare, off, off - bare, on, on - bare))
            sys.stdout.flush()
    finally:
        downstream.kill()


if __name__ == "__main__":
    main()
