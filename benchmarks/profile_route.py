"""Call one route of the overhead app in-process, N times, and time (or profile) it.

    trace-run python benchmarks/profile_route.py plain 5000 [--profile]

No server and no network between the driver and the app: the WSGI callable is
called directly, so the difference between a bare run and a traced run is the
agent's per-request cost on the request thread (plus the export thread's share
of the GIL). It prints wall time and the process's CPU time per request.
With --profile, the top functions by cumulative time under cProfile.
"""

import io
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps"))

import overhead_app  # noqa: E402


def environ(path: str) -> dict:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "bench", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }


def call(app, path: str) -> None:
    def start_response(status, headers, exc_info=None):
        assert status.startswith("200"), status

    body = app(environ(path), start_response)
    for _ in body:
        pass
    if hasattr(body, "close"):
        body.close()


def main() -> None:
    route, n = sys.argv[1], int(sys.argv[2])
    app = overhead_app.app
    for _ in range(200):
        call(app, "/" + route)
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            call(app, "/" + route)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
        return
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        call(app, "/" + route)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU time of this process (all its threads, the export thread included) leaves out the
    # time spent waiting on PostgreSQL, Redis and the downstream server: far less noisy.
    print("%s: %.1f us per request, %.1f us CPU" % (route, dt / n * 1e6, cpu / n * 1e6))


if __name__ == "__main__":
    main()
