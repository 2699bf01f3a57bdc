"""Instructions per request and per span, counted by valgrind (callgrind): a measure load cannot move.

    python benchmarks/instructions.py [--venv DIR ...] [--n 1000] [--all | --function NAME ...] [--seeds 0,1,2]
    python benchmarks/instructions.py --server [--venv DIR ...] [--n 1000] [--seeds 0,1,2]

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
--server counts the /plain request (with --all, /all too) in the real server instead: gunicorn with one sync worker, run
under valgrind, driven over HTTP by this script, the worker's whole count (gunicorn's own parsing and
socket calls, the garbage collector, the export thread) per request, from two servers serving 300 and
300 + N requests. It is the count behind the worker CPU that overhead.py reads.
--seeds runs every cell under each PYTHONHASHSEED given and prints the mean and the range (default: 0
alone). The seed matters: CPython looks a type's attributes up through a 4096-entry, direct-mapped cache
keyed by the type's version tag and the name's hash, and the hash is the seed's. Which (type, name) pairs
collide, and so how many lookups walk the MRO per request, is the seed's draw; two trees, or the same
tree with another seed, read a few thousand instructions apart for no change of their own. An A/B of a
small change wants several seeds (or --function).
Spans go to an OTLP/HTTP receiver this script starts (it answers 200 and discards), with a batch
big enough that nothing is exported before the end. Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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


def run_setup(venv: str, script: str, sampler: str, endpoint: str, service: str = "instructions",
              seed: int = 0) -> tuple:
    """(argv, env) of one counted run: the same variables for every run, bare too (`requests` reads
    the whole environment on every call); a batch big enough that nothing is exported before the end."""
    bin_dir = os.path.join(venv, "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    # PYTHONPATH in every run, as overhead.py sets it: the launcher puts its folder first on it, and a variable
    # only the traced runs had cost ~330 bytecodes per `requests` call (it reads the whole environment)
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), PYTHONHASHSEED=str(seed),
               PYTHONPATH=os.path.join(HERE, "apps"),
               OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
               OTEL_BSP_SCHEDULE_DELAY="600000", OTEL_BSP_MAX_QUEUE_SIZE="1000000",
               OTEL_BSP_MAX_EXPORT_BATCH_SIZE="1000000", OTEL_SERVICE_NAME=service,
               OTEL_TRACES_SAMPLER="always_on" if sampler == "bare" else sampler)
    argv = [os.path.join(bin_dir, "python"), "-c", script]
    if sampler != "bare":
        argv = [os.path.join(bin_dir, "trace-run")] + argv
    return argv, env


def measure(venv: str, script: str, sampler: str, n: int, endpoint: str, function: str = "", seed: int = 0) -> int:
    argv, env = run_setup(venv, script, sampler, endpoint, seed=seed)
    bin_dir = os.path.join(venv, "bin")
    return (_count(bin_dir, argv + [str(n)], env, function) - _count(bin_dir, argv + ["0"], env, function)) // n


# -- the real server (--server) ---------------------------------------------------------------------------

WARM = 300  # requests before the counted ones, in both servers of a cell


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: str, path: str, timeout: float = 120.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _serve_count(venv: str, sampler: str, requests: int, endpoint: str, seed: int, path: str = "/plain") -> int:
    """The gunicorn worker's instructions, from its start to its exit, having served WARM + `requests`."""
    argv, env = run_setup(venv, "", sampler, endpoint, seed=seed)
    bin_dir = os.path.join(venv, "bin")
    port = str(_free_port())
    gunicorn = [os.path.join(bin_dir, "python"), os.path.join(bin_dir, "gunicorn"), "-w", "1", "-k", "sync",
                "-b", "127.0.0.1:" + port, "--chdir", os.path.join(HERE, "apps"), "--log-level", "warning",
                "--timeout", "900", "overhead_app:app"]
    if sampler != "bare":
        gunicorn = [os.path.join(bin_dir, "trace-run")] + gunicorn
    out_dir = tempfile.mkdtemp(prefix="instructions-server-")
    try:
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes",
                                 "--callgrind-out-file=" + os.path.join(out_dir, "cg.%p")] + gunicorn, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=os.path.dirname(HERE))
        deadline = time.monotonic() + 600
        while True:
            try:
                if _get(port, path, timeout=600) == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("gunicorn under valgrind did not serve %s: %s" % (path, proc.stderr.read()[-2000:]))
            time.sleep(0.5)
        for _ in range(WARM - 1 + requests):
            if _get(port, path) != 200:
                raise SystemExit("the server answered %s with an error" % path)
        proc.terminate()
        _, err = proc.communicate(timeout=900)
        counts = {}
        for name in glob.glob(os.path.join(out_dir, "cg.*")):
            with open(name) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        counts[int(name.rsplit(".", 1)[1])] = int(line.split()[1])
                        break
        workers = [count for pid, count in counts.items() if pid != proc.pid]
        if len(workers) != 1:
            raise SystemExit("expected one gunicorn worker's count, found %d: %s" % (len(workers), err[-2000:]))
        return workers[0]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def measure_server(venv: str, sampler: str, n: int, endpoint: str, seed: int = 0, path: str = "/plain") -> int:
    counted = _serve_count(venv, sampler, n, endpoint, seed, path)
    return (counted - _serve_count(venv, sampler, 0, endpoint, seed, path)) // n


def over_seeds(seeds: list, count, *args, **kwargs) -> tuple:
    """(mean, min, max) of count(*args, seed=seed, **kwargs) over the seeds."""
    got = [count(*args, seed=seed, **kwargs) for seed in seeds]
    return statistics.mean(got), min(got), max(got)


def cell(stat: tuple, base: tuple = None) -> str:
    mean, low, high = stat
    text = "%d" % mean if low == high else "%d (%d-%d)" % (mean, low, high)
    return text if base is None else "%s (+%d)" % (text, mean - base[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", action="append", help="a venv with trace-run and the app's libraries (repeatable)")
    parser.add_argument("--n", type=int, default=1000, help="requests (and 2x spans) per counted run")
    parser.add_argument("--all", action="store_true", help="also the /all request (needs PostgreSQL and Redis)")
    parser.add_argument("--function", action="append", default=[],
                        help="instead: the instructions inside this C function (callgrind's name, e.g. start_span) per "
                             "/plain request, unsampled and sampled (repeatable): an A/B of a change too small for the "
                             "whole request's count, which moves by ~1k between runs")
    parser.add_argument("--server", action="store_true",
                        help="instead: /plain counted in a gunicorn worker serving it over HTTP (the worker's whole "
                             "count, gunicorn's own work and the export thread included)")
    parser.add_argument("--seeds", default="0",
                        help="PYTHONHASHSEED values, each cell run under each: mean (min-max); e.g. 0,1,2")
    args = parser.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
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
                off, on = (over_seeds(seeds, measure, venv, route, s, args.n, endpoint, function)
                           for s in ("always_off", "always_on"))
                print("| %s | %s | %s | %s |" % (venv, function, cell(off), cell(on)))
                sys.stdout.flush()
        server.shutdown()
        return
    if args.server:
        downstream = start_downstream() if args.all else None
        print("| venv | route | bare, gunicorn worker | unsampled (over bare) | sampled (over bare) |")
        print("| --- | --- | --- | --- | --- |")
        try:
            for path, n in [("/plain", args.n)] + ([("/all", max(args.n // 5, 100))] if args.all else []):
                for venv in venvs:
                    bare, off, on = (over_seeds(seeds, measure_server, venv, s, n, endpoint, path=path)
                                     for s in ("bare", "always_off", "always_on"))
                    print("| %s | %s | %s | %s | %s |" % (venv, path, cell(bare), cell(off, bare), cell(on, bare)))
                    sys.stdout.flush()
        finally:
            if downstream is not None:
                downstream.kill()
        server.shutdown()
        return
    print("| venv | /plain bare | /plain unsampled (over bare) | /plain sampled (over bare) | span, 5 attributes |")
    print("| --- | --- | --- | --- | --- |")
    for venv in venvs:
        bare, off, on = (over_seeds(seeds, measure, venv, route, s, args.n, endpoint)
                         for s in ("bare", "always_off", "always_on"))
        span = over_seeds(seeds, measure, venv, _SPAN, "always_on", 2 * args.n, endpoint)
        print("| %s | %s | %s | %s | %s |" % (venv, cell(bare), cell(off, bare), cell(on, bare), cell(span)))
        sys.stdout.flush()
    if args.all:
        _all_cells(venvs, max(args.n // 5, 100), endpoint, seeds)
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


def _all_cells(venvs: list, n: int, endpoint: str, seeds: list) -> None:
    """The /all rows: the app process only (PostgreSQL, Redis and the downstream server are not counted)."""
    downstream = start_downstream()
    try:
        script = _ROUTE.replace('"plain"', '"all"').replace('"/plain"', '"/all"') % {"here": HERE}
        print()
        print("| venv | /all bare | /all unsampled (over bare) | /all sampled (over bare) |")
        print("| --- | --- | --- | --- |")
        for venv in venvs:
            bare, off, on = (over_seeds(seeds, measure, venv, script, s, n, endpoint)
                             for s in ("bare", "always_off", "always_on"))
            print("| %s | %s | %s | %s |" % (venv, cell(bare), cell(off, bare), cell(on, bare)))
            sys.stdout.flush()
    finally:
        downstream.kill()


if __name__ == "__main__":
    main()
