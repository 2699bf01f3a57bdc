"""Per-request overhead of trace-run against a bare app, `opentelemetry-instrument` and `ddtrace-run`.

    python benchmarks/overhead.py            # Flask: 3 rounds x 10 s per run, 100% and 10% sampling
    python benchmarks/overhead.py --short    # quick check, under a minute: 1 round, 100% only,
                                             # no in-process runs
    python benchmarks/overhead.py --apps fastapi,django --samplings 1
    python benchmarks/overhead.py --rounds 5 --duration 20 --memory 100000 --memory-protocols http,grpc

What it does (everything it needs is made here):
- virtualenvs under benchmarks/.venvs (see venvs.py): bare, trace-run from this checkout
  (non-editable), opentelemetry-instrument with the matching instrumentations from PyPI,
  ddtrace-run from PyPI;
- the apps (benchmarks/apps/): Flask (overhead_app.py) and Django (django_app.py) under gunicorn,
  one sync worker; FastAPI or Starlette (asgi_app.py) under uvicorn, one process; the server
  pinned to CPU 1 with taskset; the load driver, the receiver and the downstream server on CPU 0;
- routes: /plain (1 span under trace-run) and /all (PostgreSQL SELECT, Redis GET+SET, one
  `requests` call: 5 spans under trace-run);
- load: `wrk -t1 -c1` (or servers.py's Python driver if wrk is missing);
- first, per (app, configuration, route), a calibration: 20 requests, then the server is
  stopped (it flushes at exit) and the spans received per request are the spans that
  configuration makes per request (ddtrace and the upstream instrumentors make other numbers
  of spans than trace-run);
- one fresh server per (app, configuration, sampling, route) run, configurations interleaved
  over the rounds; with --paired a bare run of the same app and route just before every agent
  run, each agent run's ratio taken against it (the host's load drifts over minutes, two runs
  seconds apart see the same), medians and min-max of these pairs reported beside the ratio of
  the medians; after each run the server is stopped and the spans the receiver got are
  divided by the requests served, and checked against the calibration times the sampling
  rate, so an agent that drops spans under load cannot look fast;
- the same Flask app called in-process (profile_route.py: no server, no driver), also with the
  always_off sampler, to show the unsampled path;
- worker memory after N/2 and N requests (--memory N), over OTLP/HTTP and OTLP/gRPC
  (--memory-protocols; ddtrace has its own protocol and runs once);
- then the per-span microbenchmark (microspan.py) in each virtualenv.
The OpenTelemetry agents export OTLP/HTTP protobuf (or gRPC) to the same local receiver; metrics
and logs exporters are off for upstream (trace-run has none), which only helps upstream.
ddtrace-run sends to the same receiver, which answers as the Datadog agent does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import venvs  # noqa: E402
from stats import fmt, median, table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PG_DSN = os.environ.get("TRACE_RUN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TRACE_RUN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROUTES = {"plain": 1, "all": 5}  # route -> spans per sampled request under trace-run (by design)
LAUNCHERS = {"bare": [], "tracerun": ["trace-run"], "otel": ["opentelemetry-instrument"],
             "ddtrace": ["ddtrace-run"]}
LABELS = {"bare": "bare", "tracerun": "trace-run", "otel": "opentelemetry-instrument", "ddtrace": "ddtrace-run"}
AGENTS = ("tracerun", "otel", "ddtrace")
# app -> (server, target, environment); every app has /plain and /all
APPS = {
    "flask": ("gunicorn", "overhead_app:app", {}),
    "django": ("gunicorn", "django_app:application", {"DJANGO_SETTINGS_MODULE": "django_settings"}),
    "fastapi": ("uvicorn", "asgi_app:app", {"BENCH_ASGI_APP": "fastapi"}),
    "starlette": ("uvicorn", "asgi_app:app", {"BENCH_ASGI_APP": "starlette"}),
}
APP_LABELS = {"flask": "Flask (gunicorn sync)", "django": "Django (gunicorn sync)",
              "fastapi": "FastAPI (uvicorn)", "starlette": "Starlette (uvicorn)"}
# upstream's instrumentors for the frameworks: each app gets its own, the others are disabled
FRAMEWORK_INSTRUMENTORS = ("flask", "django", "fastapi", "starlette")
CALIBRATION_REQUESTS = 20
# How a server is stopped so that every agent flushes: uvicorn re-raises the SIGTERM it caught
# after its shutdown with the handler it found (SIG_DFL), so the process dies without atexit and
# the OpenTelemetry agents lose their last batch (trace-run included, as of this writing);
# SIGINT (Ctrl-C) ends in KeyboardInterrupt and a normal exit.
STOP_SIGNAL = {"gunicorn": signal.SIGTERM, "uvicorn": signal.SIGINT}
APP_CPU, LOAD_CPU = "1", "0"
APPS_DIR = os.path.join(HERE, "apps")


def log(msg: str) -> None:
    sys.stderr.write("[overhead] %s\n" % msg)
    sys.stderr.flush()


def pinned(cpu: str) -> list:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu]
    return []


class PinnedServices:
    """--pin-services: every thread of the PostgreSQL and Redis servers already running moved to the
    load CPU for the run, and back to the CPUs they had afterwards. Unpinned, they run on the app's CPU
    half the time and the /all rounds spread by 20-30 %. PostgreSQL's new backends inherit the pinning
    from the postmaster (they end with the server that opened them)."""

    NAMES = ("postgres", "redis-server")

    def __init__(self, cpu: str) -> None:
        self.cpu = {int(cpu)}
        self.saved: dict = {}

    def __enter__(self) -> PinnedServices:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open("/proc/%s/comm" % pid) as f:
                    if f.read().strip() not in self.NAMES:
                        continue
                for tid in map(int, os.listdir("/proc/%s/task" % pid)):
                    before = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, self.cpu)
                    self.saved[tid] = before
            except OSError:  # gone meanwhile, or not ours to move
                continue
        log("pinned %d PostgreSQL/Redis threads to CPU %s" % (len(self.saved), LOAD_CPU))
        return self

    def __exit__(self, *exc) -> None:
        for tid, cpus in self.saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Helper:
    """A servers.py process (sink or downstream) on the load CPU."""

    def __init__(self, mode: str, python: str = ""):
        self.portfile = os.path.join(tempfile.mkdtemp(prefix="bench-"), mode + ".port")
        self.proc = subprocess.Popen(pinned(LOAD_CPU) + [python or sys.executable, os.path.join(HERE, "servers.py"),
                                                        mode, self.portfile])
        deadline = time.time() + 10
        while not os.path.exists(self.portfile):
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit("helper %s did not start" % mode)
            time.sleep(0.02)
        ports = open(self.portfile).read().split()  # "PORT", or "GRPC_PORT STATS_PORT"
        self.port = int(ports[0])
        self.url = "http://127.0.0.1:%d" % self.port
        self.stats_url = "http://127.0.0.1:%s/stats" % ports[-1]

    def stats(self) -> dict:
        with urllib.request.urlopen(self.stats_url, timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def app_env(venv: str, app: str, sinks: dict, downstream: Helper, sampling: float, protocol: str = "http") -> dict:
    """The server's environment: the venv, the app's settings, the agent's exporter and sampler."""
    sink = sinks[protocol]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DD_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(APPS[app][2])
    env.update({
        "PATH": os.path.join(venvs.path(venv), "bin") + os.pathsep + env.get("PATH", ""),
        "VIRTUAL_ENV": venvs.path(venv),
        "PYTHONPATH": APPS_DIR,  # the apps' modules (Django's settings) importable from the agents' start-up
        "BENCH_PG_DSN": PG_DSN,
        "BENCH_REDIS_URL": REDIS_URL,
        "BENCH_DOWNSTREAM_URL": downstream.url + "/down",
        "OTEL_SERVICE_NAME": "bench-app",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if protocol == "grpc" else "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    })
    if protocol == "grpc":
        env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    if venv == "otel":  # the app's own framework instrumentor, not the others installed beside it
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = ",".join(f for f in FRAMEWORK_INSTRUMENTORS if f != app)
    if venv == "ddtrace":
        env.update({
            "DD_TRACE_AGENT_URL": sinks["http"].url,  # the sink answers as the Datadog agent
            "DD_SERVICE": "bench-app",
            "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",  # no other traffic than spans
            "DD_REMOTE_CONFIGURATION_ENABLED": "false",
            "DD_TRACE_STARTUP_LOGS": "false",
        })
        if sampling < 1.0:
            env["DD_TRACE_SAMPLING_RULES"] = '[{"sample_rate": %s}]' % sampling
    # BENCH_EXTRA_ENV="K=V,K2=V2": extra variables for every agent configuration (experiments).
    for item in filter(None, os.environ.get("BENCH_EXTRA_ENV", "").split(",")):
        key, _, value = item.partition("=")
        env[key.strip()] = value.strip()
    # The same variables in every run, bare too, only their values differ: `requests` reads the whole
    # environment on every call (~330 bytecodes a call per variable), so the two the 10 % runs added were
    # ~660 bytecodes of each /all request charged to the agent. (Not for ddtrace-run at 100 %: it reads
    # OTEL_TRACES_SAMPLER as a sampling rule of its own, and its rules come with the 100 traces/s limit.)
    if sampling < 1.0 or venv != "ddtrace":
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio" if sampling < 1.0 else "parentbased_always_on"
        env["OTEL_TRACES_SAMPLER_ARG"] = str(sampling)
    return env


# -- load -------------------------------------------------------------------------------------

_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def _micros(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def load(url: str, seconds: int) -> dict:
    """Drive url with one connection for `seconds`: requests, errors, rps, p50_us, p99_us."""
    if shutil.which("wrk"):
        out = subprocess.run(pinned(LOAD_CPU) + ["wrk", "-t1", "-c1", "-d%ds" % seconds, "--latency", url],
                             capture_output=True, text=True, check=True).stdout
        res = {"driver": "wrk", "requests": int(re.search(r"(\d+) requests in", out).group(1)),
               "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "errors": 0}
        for q in ("50", "90", "99"):
            m = re.search(r"^\s+%s%%\s+(\S+)" % q, out, re.M)
            res["p%s_us" % q] = _micros(m.group(1)) if m else float("nan")
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        res["errors"] += int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if m:
            res["errors"] += int(m.group(1)) + int(m.group(3)) + int(m.group(4))
        return res
    out = subprocess.run(pinned(LOAD_CPU) + [sys.executable, os.path.join(HERE, "servers.py"), "drive", url,
                                             str(seconds)], capture_output=True, text=True, check=True).stdout
    res = json.loads(out)
    res["driver"] = "python"
    return res


# -- one run ----------------------------------------------------------------------------------


def worker_rss_mib(pid: int, field: str = "Rss:") -> float:
    """The worker's RSS (or, with field="Private", its private memory) in MiB, from smaps_rollup."""
    try:
        total = 0
        with open("/proc/%d/smaps_rollup" % worker_pid(pid)) as f:
            for line in f:
                if line.startswith(field):
                    total += int(line.split()[1])
        return total / 1024.0 if total else float("nan")
    except (OSError, ValueError):
        pass
    return float("nan")


def worker_pid(pid: int) -> int:
    """gunicorn's worker (the master's child), or the server process itself (uvicorn)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = [int(p) for p in f.read().split()]
        return kids[0] if kids else pid
    except (OSError, ValueError):
        return pid


def worker_cpu(pid: int) -> tuple:
    """(CPU seconds of the worker's first thread, CPU seconds of all its threads): the request thread
    (gunicorn sync, uvicorn's loop) apart from the export thread and the others."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(path: str) -> float:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    try:
        return cpu("/proc/%d/task/%d/stat" % (pid, pid)), cpu("/proc/%d/stat" % pid)
    except (OSError, IndexError, ValueError):
        return float("nan"), float("nan")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return 1
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server not ready after %.0f s" % timeout)


def server_cmd(app: str, venv: str, port: int) -> list:
    server, target, _env = APPS[app]
    launcher = [venvs.bin_path(venv, x) for x in LAUNCHERS[venv]]
    if server == "gunicorn":
        cmd = [venvs.bin_path(venv, "gunicorn"), "-w", "1", "-k", "sync", "-b", "127.0.0.1:%d" % port,
               "--chdir", APPS_DIR, "--log-level", "warning", "--timeout", "120", target]
    else:  # uvicorn: one process, uvloop and httptools (installed beside it) picked by "auto"
        cmd = [venvs.bin_path(venv, "uvicorn"), target, "--host", "127.0.0.1", "--port", str(port),
               "--app-dir", APPS_DIR, "--log-level", "warning", "--no-access-log"]
    return pinned(APP_CPU) + launcher + cmd


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status == 200
    except OSError:
        return False


def run_one(cfg: str, sampling: float, route: str, duration: int, warm: int, sinks: dict,
            downstream: Helper, memory: int = 0, app: str = "flask", protocol: str = "http",
            count: int = 0) -> dict:
    """One fresh server: `count` single requests (calibration), or `duration` seconds of load
    (then up to `memory` requests in all, RSS read at half and at the end)."""
    port = free_port()
    sink = sinks[protocol]
    env = app_env(cfg, app, sinks, downstream, sampling, protocol)
    before = sink.stats()
    errlog = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(server_cmd(app, cfg, port), env=env, stdout=subprocess.DEVNULL, stderr=errlog,
                            cwd=APPS_DIR)
    url = "http://127.0.0.1:%d/%s" % (port, route)
    served = 0
    try:
        served += wait_ready(url, proc)
        if count:
            oks = [_get(url) for _ in range(count - 1)]
            served += len(oks)
            res = {"requests": count, "errors": oks.count(False), "rps": float("nan"), "p50_us": float("nan"),
                   "p99_us": float("nan"), "driver": "urllib"}
        else:
            if warm:
                served += load(url, warm)["requests"]
            worker = worker_pid(proc.pid)
            cpu_before = worker_cpu(worker)
            res = load(url, duration)
            cpu_after = worker_cpu(worker)
            served += res["requests"]
            res["cpu_us"], res["cpu_all_us"] = (1e6 * (a - b) / res["requests"] if res["requests"] else float("nan")
                                                for a, b in zip(cpu_after, cpu_before))
        res["rss_mib"] = worker_rss_mib(proc.pid)
        res["private_mib"] = worker_rss_mib(proc.pid, "Private")
        if memory:
            marks = {}
            while served < memory:
                served += load(url, 5)["requests"]
                if served >= memory // 2 and "half" not in marks:
                    marks["half"] = (served, worker_rss_mib(proc.pid), worker_rss_mib(proc.pid, "Private"))
            marks["full"] = (served, worker_rss_mib(proc.pid), worker_rss_mib(proc.pid, "Private"))
            res["memory"] = marks
    finally:
        proc.send_signal(STOP_SIGNAL[APPS[app][0]])
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    time.sleep(0.3)
    after = sink.stats()
    errlog.seek(0)
    stderr = errlog.read().strip()
    res.update({
        "config": cfg, "sampling": sampling, "route": route, "served": served, "app": app, "protocol": protocol,
        "spans": after["kept"] - before["kept"],
        "spans_sent": after["spans"] - before["spans"],
        "export_bytes": after["bytes"] - before["bytes"],
        "names": {n: c - before["names"].get(n, 0) for n, c in after["names"].items()
                  if c - before["names"].get(n, 0)},
        "sink_errors": after.get("errors", 0) - before.get("errors", 0),
        "stderr": stderr[-2000:],
    })
    res["spans_per_request"] = res["spans"] / served if served else 0.0
    return res


# -- the whole benchmark ----------------------------------------------------------------------


def plan(samplings: list, routes: list, configs: list, apps: list, paired: bool = False) -> list:
    """The runs of one round, as units kept together when a round's order is rotated: one run each, or with
    `paired` an agent's run with a bare run of its app and route just before it."""
    units = []
    for app in apps:
        for route in routes:
            if "bare" in configs and not paired:
                units.append([("bare", 1.0, route, app)])
            for s in samplings:
                for c in AGENTS:
                    if c in configs:
                        units.append(([("bare", 1.0, route, app)] if paired and "bare" in configs else [])
                                     + [(c, s, route, app)])
    return units


def paired_stats(rs: list, by_pair: dict) -> dict:
    """An agent's runs against the bare run just before each (the host's load drifts over minutes: a pair
    a few seconds apart sees the same): the ratio of req/s and the p99 added, medians and spreads."""
    ratios, p99s = [], []
    for r in rs:
        b = by_pair.get(r.get("pair"))
        if b and b["rps"]:
            ratios.append(r["rps"] / b["rps"])
            p99s.append(r["p99_us"] - b["p99_us"])
    if not ratios:
        return {}
    return {"paired_ratio": round(median(ratios), 3), "paired_min": round(min(ratios), 3),
            "paired_max": round(max(ratios), 3), "paired_p99_added_us": round(median(p99s), 1),
            "pairs": len(ratios)}


def spans_tolerance(per_trace: float, sampling: float, served: int) -> float:
    """How far spans/request may be from expected: 4 binomial sigmas of the sampled share, plus 2%."""
    sigma = (sampling * (1.0 - sampling) / served) ** 0.5 if served else 1.0
    return per_trace * (4.0 * sigma + 0.02 * sampling)


def calibrate(apps: list, routes: list, configs: list, sinks: dict, downstream: Helper) -> dict:
    """(app, config, route) -> spans made per request, from CALIBRATION_REQUESTS requests and a
    flush at exit; and the span names per request."""
    out = {}
    for app in apps:
        for route in routes:
            for cfg in configs:
                if cfg == "bare":
                    continue
                r = run_one(cfg, 1.0, route, 0, 0, sinks, downstream, app=app, count=CALIBRATION_REQUESTS)
                if r["errors"] or r["stderr"]:
                    log("calibration %s %s /%s: errors=%d stderr: %s" % (app, cfg, route, r["errors"],
                                                                         r["stderr"][-600:]))
                out[(app, cfg, route)] = {"per_request": r["spans_per_request"], "served": r["served"],
                                          "names": {n: c / r["served"] for n, c in r["names"].items()}}
                log("calibration %s %s /%s: %.2f spans/request" % (app, cfg, route, r["spans_per_request"]))
    return out


def inproc(rounds: int, sinks: dict, downstream: Helper, short: bool) -> tuple:
    """Per-request cost with the WSGI app called in-process (profile_route.py): no server, no driver."""
    counts = {"plain": 600 if short else 3000, "all": 150 if short else 600}
    cases = [("bare", "bare", 1.0), ("trace-run", "tracerun", 1.0), ("trace-run, sampler always_off", "tracerun", 0.0),
             ("opentelemetry-instrument", "otel", 1.0), ("opentelemetry-instrument, sampler always_off", "otel", 0.0)]
    samples: dict = {}
    cpu: dict = {}  # process CPU time: leaves out the waits on PostgreSQL, Redis, the downstream server
    for _ in range(rounds):
        for route, n in counts.items():
            for label, venv, sampling in cases:
                env = app_env(venv, "flask", sinks, downstream, 1.0)
                if sampling == 0.0:
                    env["OTEL_TRACES_SAMPLER"] = "always_off"
                cmd = pinned(APP_CPU) + [venvs.bin_path(venv, x) for x in LAUNCHERS[venv]] + [
                    venvs.bin_path(venv), os.path.join(HERE, "profile_route.py"), route, str(n)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
                m = re.search(r"([\d.]+) us per request, ([\d.]+) us CPU", out.stdout)
                if not m:
                    raise SystemExit("profile_route %s %s failed:\n%s" % (label, route, out.stderr[-1500:]))
                samples.setdefault((route, label), []).append(float(m.group(1)))
                cpu.setdefault((route, label), []).append(float(m.group(2)))
    rows, data = [], {}
    for route in counts:
        base = median(samples[(route, "bare")])
        cpu_base = median(cpu[(route, "bare")])
        for label, _v, _s in cases:
            xs, cs = samples[(route, label)], cpu[(route, label)]
            med, cmed = median(xs), median(cs)
            rows.append(["/%s" % route, label, fmt(med), "%s..%s" % (fmt(min(xs)), fmt(max(xs))),
                         "-" if label == "bare" else "%+.0f" % (med - base), fmt(cmed),
                         "%s..%s" % (fmt(min(cs)), fmt(max(cs))),
                         "-" if label == "bare" else "%+.0f" % (cmed - cpu_base)])
            data["%s %s" % (route, label)] = {"us": round(med, 1), "min": round(min(xs), 1), "max": round(max(xs), 1),
                                              "cpu_us": round(cmed, 1)}
    text = ("### In-process: the Flask WSGI app called directly, no server or load driver (%d x %s requests, "
            "pinned to CPU %s)\n\n" % (rounds, "/".join(str(n) for n in counts.values()), APP_CPU)
            + table(["route", "configuration", "us/request (median)", "min..max", "added us vs bare",
                     "CPU us/request", "CPU min..max", "added CPU us"], rows))
    return text, data


def summarize(results: list, samplings: list, routes: list, apps: list, configs: list, calib: dict) -> tuple:
    by, by_pair = {}, {}
    for r in results:
        if r["config"] == "bare" and "pair" in r:
            by_pair[r["pair"]] = r
        by.setdefault((r["app"], r["config"], r["sampling"] if r["config"] != "bare" else None, r["route"]),
                      []).append(r)
    texts, summary, checks = [], {}, []
    for app in apps:
        rows = []
        for route in routes:
            bare = by.get((app, "bare", None, route), [])
            bare_rps = median([r["rps"] for r in bare])
            bare_p99 = median([r["p99_us"] for r in bare])
            for cfg, s in [("bare", None)] + [(c, s) for s in samplings for c in AGENTS]:
                rs = by.get((app, cfg, s, route), [])
                if not rs:
                    continue
                rps = [r["rps"] for r in rs]
                med = median(rps)
                ratio = med / bare_rps if bare_rps else float("nan")
                added = 1e6 / med - 1e6 / bare_rps if med and bare_rps else float("nan")
                p50, p99 = median([r["p50_us"] for r in rs]), median([r["p99_us"] for r in rs])
                spr = median([r["spans_per_request"] for r in rs])
                made = calib.get((app, cfg, route), {}).get("per_request", 0.0) if cfg != "bare" else 0.0
                expected = made * (1.0 if s is None else s)
                errors = sum(r["errors"] for r in rs)
                rss = median([r.get("rss_mib", float("nan")) for r in rs])
                cpu = median([r.get("cpu_us", float("nan")) for r in rs])
                cpu_all = median([r.get("cpu_all_us", float("nan")) for r in rs])
                private = median([r.get("private_mib", float("nan")) for r in rs])
                samp = "-" if s is None else "%d%%" % round(s * 100)
                sent = median([r["spans_sent"] / r["served"] for r in rs if r["served"]])
                pst = paired_stats(rs, by_pair) if cfg != "bare" else {}
                vs_bare = "%.2fx" % ratio
                if pst:
                    vs_bare += "; paired %.2fx (%.2f-%.2f)" % tuple(pst[k] for k in ("paired_ratio", "paired_min",
                                                                                      "paired_max"))
                spans_cell = "%.2f (%.2f)" % (spr, expected)
                if abs(sent - spr) > 0.005:
                    spans_cell += ", %.2f sent" % sent
                rows.append(["/%s" % route, samp, LABELS[cfg], fmt(med), "%s..%s" % (fmt(min(rps)), fmt(max(rps))),
                             vs_bare, "%+.0f" % added if cfg != "bare" else "-",
                             "%s / %s" % (fmt(cpu), fmt(cpu_all)), fmt(p50), fmt(p99),
                             spans_cell, "%s / %s" % (fmt(rss), fmt(private)), errors])
                summary["%s %s %s %s" % (app, route, samp, cfg)] = {
                    "rps": round(med, 1), "rps_min": round(min(rps), 1), "rps_max": round(max(rps), 1),
                    "ratio": round(ratio, 3), "added_us": round(added, 1), "cpu_us": round(cpu, 1),
                    "cpu_all_us": round(cpu_all, 1), "p50_us": round(p50, 1),
                    "p99_us": round(p99, 1), "bare_p99_us": round(bare_p99, 1), "spans_per_request": round(spr, 3),
                    "spans_sent_per_request": round(sent, 3), "expected_spans": round(expected, 3),
                    "rss_mib": round(rss, 1), "private_mib": round(private, 1), "errors": errors, "runs": len(rs),
                }
                summary["%s %s %s %s" % (app, route, samp, cfg)].update(pst)
                if cfg == "bare":
                    continue
                served = sum(r["served"] for r in rs)
                ok = made > 0 and abs(spr - expected) <= spans_tolerance(made, s, served)
                summary["%s %s %s %s" % (app, route, samp, cfg)]["spans_ok"] = ok
                if not made:
                    checks.append("%s /%s %s %s: makes no spans at all (calibration): CHECK"
                                  % (app, route, samp, LABELS[cfg]))
                elif not ok:
                    checks.append("%s /%s %s %s: %.3f spans/request received, %.3f made x sampling: CHECK"
                                  % (app, route, samp, LABELS[cfg], spr, expected))
        texts.append("### %s\n\n" % APP_LABELS[app] + table(
            ["route", "sampling", "configuration", "req/s (median)", "min..max", "vs bare", "added us/req",
             "worker CPU us/req (request thread / all)", "p50 us", "p99 us",
             "spans/req received (made x sampling)", "worker RSS / private MiB", "errors"], rows))
    return "\n\n".join(texts), summary, checks


def span_names_table(calib: dict) -> str:
    """What each agent made per request, app and route (the calibration runs)."""
    rows = []
    for (app, cfg, route), c in sorted(calib.items()):
        names = ", ".join("%s x%.2f" % (n, k) for n, k in sorted(c["names"].items()))
        rows.append([app, "/%s" % route, LABELS[cfg], "%.2f" % c["per_request"], names or "(none)"])
    return table(["app", "route", "configuration", "spans/request", "span names received (per request)"], rows)


def memory_table(memory: list) -> str:
    rows = []
    for r in memory:
        half, full = r["memory"]["half"], r["memory"]["full"]
        proto = {"http": "OTLP/HTTP", "grpc": "OTLP/gRPC"}[r["protocol"]]
        if r["config"] == "bare":
            proto = "-"
        elif r["config"] == "ddtrace":
            proto = "Datadog agent API"
        rows.append([LABELS[r["config"]], proto, "/" + r["route"], "%d: %.1f / %.1f" % half,
                     "%d: %.1f / %.1f" % full, "%+.1f" % (full[1] - half[1]), "%.2f" % r["spans_per_request"]])
    return table(["configuration", "protocol", "route", "requests: worker RSS / private MiB",
                  "requests: worker RSS / private MiB", "RSS growth MiB", "spans/request received"], rows)


def machine() -> dict:
    from startup import machine as m

    return m()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="1 round, 3 s per run, 100%% sampling only")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--duration", type=int, default=0, help="seconds of load per run")
    parser.add_argument("--warm", type=int, default=1, help="seconds of warm-up load per run")
    parser.add_argument("--apps", default="flask", help="any of " + ",".join(APPS))
    parser.add_argument("--routes", default="plain,all")
    parser.add_argument("--samplings", default="", help="e.g. 1,0.1 (default: 1,0.1; --short: 1)")
    parser.add_argument("--no-ten-percent", action="store_true", help="skip the 10%% sampling runs")
    parser.add_argument("--configs", default="bare,tracerun,otel,ddtrace")
    parser.add_argument("--memory", type=int, default=0,
                        help="also serve N requests per configuration and report worker RSS at N/2 and N")
    parser.add_argument("--memory-route", default="plain", help="route for --memory (default plain)")
    parser.add_argument("--memory-protocols", default="http,grpc", help="OTLP protocols for --memory")
    parser.add_argument("--no-micro", action="store_true", help="skip the per-span microbenchmark")
    parser.add_argument("--no-inproc", action="store_true", help="skip the in-process per-request runs")
    parser.add_argument("--pin-services", action="store_true",
                        help="move the running PostgreSQL and Redis to the load CPU for the run (root)")
    parser.add_argument("--paired", action="store_true",
                        help="a bare run just before every agent run; ratios per pair (median, min-max) as well")
    parser.add_argument("--json", default=os.path.join(RESULTS, "overhead-latest.json"))
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.short else 3)
    duration = args.duration or (3 if args.short else 10)
    if args.samplings:
        samplings = [float(x) for x in args.samplings.split(",")]
    else:
        samplings = [1.0] if (args.short or args.no_ten_percent) else [1.0, 0.1]
    routes = [r for r in args.routes.split(",") if r]
    apps = [a for a in args.apps.split(",") if a]
    configs = [c for c in args.configs.split(",") if c]
    protocols = [p for p in args.memory_protocols.split(",") if p]
    venvs.ensure_all(configs + (["sink"] if args.memory and "grpc" in protocols else []))
    m = machine()
    t0 = time.time()
    sinks = {"http": Helper("sink")}
    downstream = Helper("downstream")
    if args.memory and "grpc" in protocols:
        sinks["grpc"] = Helper("grpc-sink", venvs.bin_path("sink"))
    results = []
    pinning = PinnedServices(LOAD_CPU) if args.pin_services else contextlib.nullcontext()
    try:
        pinning.__enter__()
        calib = calibrate(apps, sorted(set(routes) | ({args.memory_route} if args.memory else set())), configs,
                          sinks, downstream)
        units = plan(samplings, routes, configs, apps, args.paired)
        for rnd in range(rounds):
            k = (rnd * 3) % len(units)
            # rotate: interleaved, no fixed first place (a pair stays a pair)
            runs = [(i, run) for i, unit in enumerate(units[k:] + units[:k]) for run in unit]
            for unit_index, (cfg, s, route, app) in runs:
                log("round %d/%d: %s %s sampling=%s /%s" % (rnd + 1, rounds, app, cfg, s, route))
                r = run_one(cfg, s, route, duration, args.warm, sinks, downstream, app=app)
                r["round"] = rnd
                if args.paired:
                    r["pair"] = (rnd, unit_index)
                if r["errors"] or r["stderr"]:
                    log("  errors=%d stderr: %s" % (r["errors"], r["stderr"][-600:]))
                log("  %.0f req/s p99 %.0f us, %.2f spans/request, worker CPU %.0f / %.0f us/request"
                    % (r["rps"], r["p99_us"], r["spans_per_request"], r.get("cpu_us", float("nan")),
                       r.get("cpu_all_us", float("nan"))))
                results.append(r)
        inproc_text, inproc_data = "", {}
        if not (args.no_inproc or args.short) and "flask" in apps:
            log("in-process runs")
            inproc_text, inproc_data = inproc(1 if args.short else rounds, sinks, downstream, args.short)
        memory = []
        if args.memory:
            for cfg in configs:
                for proto in (["http"] if cfg in ("bare", "ddtrace") else protocols):
                    log("memory: %s over %s, %d requests of /%s" % (cfg, proto, args.memory, args.memory_route))
                    r = run_one(cfg, 1.0, args.memory_route, 1, 0, sinks, downstream, memory=args.memory,
                                protocol=proto)
                    if r["errors"] or r["stderr"]:
                        log("  errors=%d stderr: %s" % (r["errors"], r["stderr"][-600:]))
                    memory.append(r)
    finally:
        pinning.__exit__(None, None, None)
        for helper in list(sinks.values()) + [downstream]:
            helper.stop()
    text, summary, checks = summarize(results, samplings, routes, apps, configs, calib)
    for r in memory:  # the long runs deliver every span too
        made = calib.get(("flask", r["config"], r["route"]), {}).get("per_request")
        if r["config"] != "bare" and made is not None and \
                abs(r["spans_per_request"] - made) > spans_tolerance(made, 1.0, r["served"]):
            checks.append("memory run %s over %s: %.3f spans/request received, %.3f made: CHECK"
                          % (LABELS[r["config"]], r["protocol"], r["spans_per_request"], made))
    m["load_after"] = " ".join("%.2f" % x for x in os.getloadavg())
    driver = results[0]["driver"] if results else "-"
    out = ["## Per-request overhead (%s; %d round(s) x %d s per run, driver %s -c1; %s cores, %s, Python %s; "
           "load %s -> %s%s)\n" % (m["date"], rounds, duration, driver, m["nproc"], m["cpu"], m["python"],
                                    m["load"], m["load_after"],
                                    "; PostgreSQL and Redis pinned to CPU %s" % LOAD_CPU if args.pin_services else ""),
           text, "", "Spans received per request against spans made (calibration) x sampling, every configuration: "
           + ("all within tolerance" if not checks else "%d off" % len(checks)), ""]
    out += ["- " + c for c in checks]
    out += ["", "Spans made per request (calibration: %d requests, flushed at exit):\n" % CALIBRATION_REQUESTS,
            span_names_table(calib), ""]
    if memory:
        out += ["### Worker memory, /%s, 100%% sampling\n" % args.memory_route, memory_table(memory), ""]
    if inproc_text:
        out += [inproc_text, ""]
    micro = {}
    if not args.no_micro:
        import microspan

        micro_text, micro = microspan.run_all(short=args.short, configs=configs)
        out += [micro_text, ""]
    out.append("(%.0f s in all)" % (time.time() - t0))
    print("\n".join(out))
    os.makedirs(RESULTS, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": m, "rounds": rounds, "duration_s": duration, "driver": driver, "apps": apps,
                   "paired": args.paired,
                   "results": summary, "checks": checks, "micro": micro, "inproc": inproc_data,
                   "calibration": {" ".join(k): v for k, v in calib.items()},
                   "versions": {n: venvs.versions(n) for n in configs},
                   "memory": [{"config": r["config"], "protocol": r["protocol"], "route": r["route"],
                               "spans_per_request": round(r["spans_per_request"], 3), **r["memory"]}
                              for r in memory]},
                  f, indent=1, sort_keys=True)
    with open(os.path.splitext(args.json)[0] + ".raw", "w") as f:  # git-ignored: every run
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
