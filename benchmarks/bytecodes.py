"""Bytecodes executed per request and per span, by function: an exact count, the same on every run.

    python benchmarks/bytecodes.py [--venv DIR ...] [--cells span,plain,all] [--top 25] [--calls] [--server]

instructions.py counts machine instructions with valgrind (minutes per cell, and the export thread's
timing moves a count by ~1-3 %). This counts the Python bytecodes the request thread runs, with
`sys.settrace` opcode events, for K requests after a warm-up: deterministic to the bytecode, seconds
per cell, and it names the functions where a difference lies. It is not time (a bytecode can be one
machine instruction or a dict copy); read it beside instructions.py.

Cells, for each venv (default: benchmarks/.venvs/tracerun, made by venvs.py), each run bare (no agent)
and under `trace-run` with the sampler always_off and always_on:
- span: microspan.py's span (`start_as_current_span`, 5 attributes, ended), per span;
- plain: the Flask app's /plain request, called in-process (profile_route.call);
- all: /all (PostgreSQL, Redis and a `requests` call to servers.py's downstream server, started here).
With --server, /plain and /all are counted in the real server instead: a gunicorn sync worker (the
overhead benchmark's) serving them over HTTP, its main thread counted from one request's start to a
later one's (apps/count_config.py), gunicorn's own parsing and writing included, after 1000 requests
(the worker's first export has built its exporter: its spans end encoded, as in a long-running server).
Every run gets the same environment variables (bare too: `requests` reads the whole environment on
every call). Spans go to an OTLP/HTTP receiver started here; the exporter is built before counting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from instructions import _Sink, run_setup, start_downstream  # noqa: E402

_COUNT = r"""
import json, sys
what, k = sys.argv[1], int(sys.argv[2])
if what == "span":
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    ATTRS = {"db.system.name": "postgresql", "db.namespace": "test", "db.operation.name": "SELECT",
             "db.query.text": "SELECT id, name FROM users WHERE id = ?", "server.port": 5432}
    tracer = trace.get_tracer("bench")
    def one():
        with tracer.start_as_current_span("SELECT test.users", kind=SpanKind.CLIENT, attributes=ATTRS):
            pass
else:
    sys.path.insert(0, %(here)r)
    sys.argv = [sys.argv[0], what, "1"]
    import profile_route
    app = profile_route.overhead_app.app
    def one():
        profile_route.call(app, "/" + what)
for _ in range(300):
    one()
from opentelemetry import trace as _trace
getattr(_trace.get_tracer_provider(), "force_flush", lambda: None)()  # the exporter built: its path counted
for _ in range(100):
    one()
sys.path.insert(0, %(apps)r)
from count_config import counter
on_event, counts = counter(%(event)r)  # "opcode": bytecodes; "call": Python calls
sys.settrace(on_event)
for _ in range(k):
    one()
sys.settrace(None)
print(json.dumps({name: n / k for name, n in counts.items()}))
"""


def count(venv: str, cell: str, sampler: str, k: int, endpoint: str, event: str = "opcode") -> dict:
    """{function: bytecodes (or, event="call", Python calls) per request (or span)} for one run."""
    script = _COUNT % {"here": HERE, "apps": os.path.join(HERE, "apps"), "event": event}
    argv, env = run_setup(venv, script, sampler, endpoint, "bytecodes")
    argv += [cell, str(k)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=os.path.dirname(HERE))
    if out.returncode != 0:
        raise SystemExit("run failed (%s %s %s): %s" % (venv, cell, sampler, out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def count_in_server(venv: str, cell: str, sampler: str, k: int, endpoint: str, event: str = "opcode",
                    warm: int = 1000) -> dict:
    """count(), in a gunicorn worker serving the route over HTTP (one keep-alive connection)."""
    import http.client
    import socket
    import tempfile

    from overhead import wait_ready

    _argv, env = run_setup(venv, "", sampler, endpoint, "bytecodes")
    out = os.path.join(tempfile.mkdtemp(prefix="bytecodes-"), "counts.json")
    # the SDK's batch defaults, not run_setup's one batch at exit: a forked worker builds its exporter at its
    # first export (lazy_exporter), and spans end pre-encoded only from then on (the 512th span, here)
    for name in [n for n in env if n.startswith("OTEL_BSP_")]:
        del env[name]
    env.update(COUNT_START=str(warm), COUNT_STOP=str(warm + k), COUNT_EVENT=event, COUNT_OUT=out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = os.path.join(venv, "bin")
    argv = [os.path.join(bin_dir, "gunicorn"), "-c", os.path.join(HERE, "apps", "count_config.py"), "-w", "1",
            "-k", "sync", "-b", "127.0.0.1:%d" % port, "--chdir", os.path.join(HERE, "apps"),
            "--log-level", "warning", "--timeout", "300", "overhead_app:app"]
    if sampler != "bare":
        argv = [os.path.join(bin_dir, "trace-run")] + argv
    server = subprocess.Popen(argv, env=env)
    try:
        wait_ready("http://127.0.0.1:%d/%s" % (port, cell), server)  # a request before the counted ones
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(warm + k + 50):
            conn.request("GET", "/" + cell)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit("/%s answered %d (%s %s)" % (cell, answer.status, venv, sampler))
            if os.path.exists(out):
                break
        conn.close()
        if not os.path.exists(out):
            raise SystemExit("the worker wrote no counts (%s %s %s)" % (venv, cell, sampler))
        with open(out) as f:
            return json.load(f)
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", action="append", help="a venv with trace-run and the app's libraries (repeatable)")
    parser.add_argument("--cells", default="span,plain,all")
    parser.add_argument("--k", type=int, default=100, help="requests (spans) counted per run")
    parser.add_argument("--top", type=int, default=0, help="also list the N functions adding the most, per cell")
    parser.add_argument("--calls", action="store_true", help="count Python calls instead of bytecodes")
    parser.add_argument("--server", action="store_true",
                        help="count /plain and /all in a gunicorn worker serving them over HTTP, not in-process")
    args = parser.parse_args()
    venvs = args.venv or [os.path.join(HERE, ".venvs", "tracerun")]
    cells = args.cells.split(",")
    event = "call" if args.calls else "opcode"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = "http://127.0.0.1:%d" % server.server_port
    downstream = start_downstream() if "all" in cells else None
    try:
        print("| venv | cell | bare | unsampled (over bare) | sampled (over bare) |")
        print("| --- | --- | --- | --- | --- |")
        tops = []
        for venv in venvs:
            for cell in cells:
                if cell == "span":
                    on = count(venv, cell, "always_on", args.k * 2, endpoint, event)
                    print("| %s | span, 5 attributes | | | %.0f |" % (venv, sum(on.values())))
                    tops.append((venv, cell, "sampled", {}, on))
                    continue
                counter = count_in_server if args.server else count
                bare, off, on = (counter(venv, cell, s, args.k, endpoint, event)
                                 for s in ("bare", "always_off", "always_on"))
                b, u, s = sum(bare.values()), sum(off.values()), sum(on.values())
                print("| %s | /%s%s | %.0f | %.0f (+%.0f) | %.0f (+%.0f) |"
                      % (venv, cell, " (gunicorn worker)" if args.server else "", b, u, u - b, s, s - b))
                tops += [(venv, cell, "unsampled", bare, off), (venv, cell, "sampled", bare, on)]
                sys.stdout.flush()
        for venv, cell, label, bare, on in tops if args.top else ():
            diff = {name: on.get(name, 0) - bare.get(name, 0) for name in set(bare) | set(on)}
            print("\n%s, %s, %s: the functions adding the most %s\n"
                  % (venv, cell, label, "calls" if args.calls else "bytecodes"))
            for name, n in sorted(diff.items(), key=lambda kv: -kv[1])[:args.top]:
                print("  %7.1f  %s" % (n, name))
    finally:
        server.shutdown()
        if downstream is not None:
            downstream.kill()


if __name__ == "__main__":
    main()
