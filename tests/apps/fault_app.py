"""A program for the fault tests: its output, exit code and exceptions must be the same
with and without trace-run, whatever the OTLP endpoint does.

    python fault_app.py [--spans N] [--requests N] [--pause] [--burst N] [--raise] [--exit CODE]

--spans: N spans through the OpenTelemetry API; --requests: N urllib calls to a local
http.server (traced CLIENT spans); --pause: print "paused" and wait for a line on
stdin; --burst: N more spans at once, then print the RSS growth in KiB (stderr);
--raise: end with an uncaught ValueError; --exit: end with sys.exit(CODE).
"""

import argparse
import http.server
import os
import sys
import threading
import urllib.request

from opentelemetry import trace


class Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello %s" % self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--spans", type=int, default=5)
    p.add_argument("--requests", type=int, default=2)
    p.add_argument("--pause", action="store_true")
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--raise", dest="raise_", action="store_true")
    p.add_argument("--exit", type=int, default=None)
    args = p.parse_args()
    tracer = trace.get_tracer("fault-app")

    for i in range(args.spans):
        with tracer.start_as_current_span("work-%d" % i) as span:
            span.set_attribute("app.index", i)
    print("spans made: %d" % args.spans, flush=True)

    if args.requests:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for i in range(args.requests):
            url = "http://127.0.0.1:%d/item/%d" % (server.server_address[1], i)
            with urllib.request.urlopen(url, timeout=10) as r:
                print(r.status, r.read().decode(), flush=True)
        server.shutdown()

    if args.pause:
        print("paused", flush=True)
        sys.stdin.readline()

    if args.burst:
        # current RSS, not ru_maxrss: after fork + exec that starts at the parent's peak (pytest's)
        before = _rss_kib()
        payload = "x" * 1000  # what a queued span holds, whatever form the queue keeps it in
        for _ in range(args.burst):
            with tracer.start_as_current_span("burst", attributes={"payload": payload}):
                pass
        grown = _rss_kib() - before
        print("burst done: %d" % args.burst, flush=True)
        print("rss growth KiB: %d" % grown, file=sys.stderr, flush=True)

    if args.raise_:
        raise ValueError("the program's own error")
    if args.exit is not None:
        sys.exit(args.exit)
    print("done")


if __name__ == "__main__":
    main()
