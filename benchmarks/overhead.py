"""Per-request overhead of trace-run against a bare app and `opentelemetry-instrument`.

    python benchmarks/overhead.py            # full: 3 rounds x 10 s per run, 100% and 10% sampling
    python benchmarks/overhead.py --short    # quick check, under a minute: 1 round, 100% only,
                                             # no in-process runs
    python benchmarks/overhead.py --rounds 5 --duration 20 --memory 100000

What it does (everything it needs is made here):
- virtualenvs under benchmarks/.venvs (see venvs.py): bare, trace-run from this checkout
  (non-editable), opentelemetry-instrument with the matching instrumentations from PyPI;
- benchmarks/apps/overhead_app.py served by gunicorn, one sync worker, pinned to CPU 1
  with taskset; the load driver, the OTLP receiver and the downstream server on CPU 0;
- routes: /plain (1 span) and /work (PostgreSQL SELECT, Redis GET+SET, one `requests`
  call: 5 spans);
- load: `wrk -t1 -c1` (or servers.py's Python driver if wrk is missing);
- one fresh gunicorn per (configuration, sampling, route) run, configurations interleaved
  over the rounds; after each run gunicorn is stopped (the worker flushes at exit) and the
  spans the receiver got are divided by the requests served, so an agent that drops spans
  cannot look fast;
- the same app called in-process (profile_route.py: no server, no driver), also with the
  always_off sampler, to show the unsampled path;
- then the per-span microbenchmark (microspan.py) in each virtualenv.
Both agents export OTLP/HTTP protobuf to the same local receiver; metrics and logs
exporters are off for upstream (trace-run has none), which only helps upstream.
"""

from __future__ import annotations

import argparse
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
APPS = os.path.join(HERE, "apps")
RESULTS = os.path.join(HERE, "results")
PG_DSN = os.environ.get("TRACE_RUN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TRACE_RUN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROUTES = {"plain": 1, "work": 5}  # route -> spans per sampled request
LAUNCHERS = {"bare": [], "tracerun": ["trace-run"], "otel": ["opentelemetry-instrument"]}
LABELS = {"bare": "bare", "tracerun": "trace-run", "otel": "opentelemetry-instrument"}
APP_CPU, LOAD_CPU = "1", "0"


def log(msg: str) -> None:
    sys.stderr.write("[overhead] %s\n" % msg)
    sys.stderr.flush()


def pinned(cpu: str) -> list:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu]
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Helper:
    """A servers.py process (sink or downstream) on the load CPU."""

    def __init__(self, mode: str):
        self.portfile = os.path.join(tempfile.mkdtemp(prefix="bench-"), mode + ".port")
        self.proc = subprocess.Popen(pinned(LOAD_CPU) + [sys.executable, os.path.join(HERE, "servers.py"),
                                                        mode, self.portfile])
        deadline = time.time() + 10
        while not os.path.exists(self.portfile):
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit("helper %s did not start" % mode)
            time.sleep(0.02)
        self.port = int(open(self.portfile).read())
        self.url = "http://127.0.0.1:%d" % self.port

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def app_env(venv: str, sink: Helper, downstream: Helper, sampling: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "PATH": os.path.join(venvs.path(venv), "bin") + os.pathsep + env.get("PATH", ""),
        "VIRTUAL_ENV": venvs.path(venv),
        "BENCH_PG_DSN": PG_DSN,
        "BENCH_REDIS_URL": REDIS_URL,
        "BENCH_DOWNSTREAM_URL": downstream.url + "/down",
        "OTEL_SERVICE_NAME": "bench-app",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    })
    # BENCH_EXTRA_ENV="K=V,K2=V2": extra variables for every agent configuration (experiments).
    for item in filter(None, os.environ.get("BENCH_EXTRA_ENV", "").split(",")):
        key, _, value = item.partition("=")
        env[key.strip()] = value.strip()
    if sampling < 1.0:
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
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


def worker_rss_mib(master_pid: int, field: str = "Rss:") -> float:
    """The worker's RSS (or, with field="Private", its private memory) in MiB, from smaps_rollup."""
    try:
        with open("/proc/%d/task/%d/children" % (master_pid, master_pid)) as f:
            kids = [int(p) for p in f.read().split()]
        total = 0
        with open("/proc/%d/smaps_rollup" % kids[0]) as f:
            for line in f:
                if line.startswith(field):
                    total += int(line.split()[1])
        return total / 1024.0 if total else float("nan")
    except (OSError, IndexError, ValueError):
        pass
    return float("nan")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited with %s" % proc.returncode)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return 1
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("gunicorn not ready after %.0f s" % timeout)


def run_one(cfg: str, sampling: float, route: str, duration: int, warm: int, sink: Helper,
            downstream: Helper, memory: int = 0) -> dict:
    port = free_port()
    venv = cfg
    launcher = [venvs.bin_path(venv, x) for x in LAUNCHERS[cfg]]
    cmd = pinned(APP_CPU) + launcher + [
        venvs.bin_path(venv, "gunicorn"), "-w", "1", "-k", "sync", "-b", "127.0.0.1:%d" % port,
        "--chdir", APPS, "--log-level", "warning", "--timeout", "120", "overhead_app:app",
    ]
    env = app_env(venv, sink, downstream, sampling)
    before = sink.stats()
    errlog = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errlog, cwd=APPS)
    url = "http://127.0.0.1:%d/%s" % (port, route)
    served = 0
    try:
        served += wait_ready(url, proc)
        if warm:
            served += load(url, warm)["requests"]
        res = load(url, duration)
        served += res["requests"]
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
        proc.send_signal(signal.SIGTERM)
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
        "config": cfg, "sampling": sampling, "route": route, "served": served,
        "spans": after["spans"] - before["spans"],
        "export_bytes": after["bytes"] - before["bytes"],
        "names": {n: c - before["names"].get(n, 0) for n, c in after["names"].items()
                  if c - before["names"].get(n, 0)},
        "stderr": stderr[-2000:],
    })
    res["spans_per_request"] = res["spans"] / served if served else 0.0
    return res


# -- the whole benchmark ----------------------------------------------------------------------


def plan(samplings: list, routes: list) -> list:
    runs = []
    for route in routes:
        runs.append(("bare", 1.0, route))
        for s in samplings:
            runs += [("tracerun", s, route), ("otel", s, route)]
    return runs


def spans_tolerance(per_trace: int, sampling: float, served: int) -> float:
    """How far spans/request may be from expected: 4 binomial sigmas of the sampled share, plus 2%."""
    sigma = (sampling * (1.0 - sampling) / served) ** 0.5 if served else 1.0
    return per_trace * (4.0 * sigma + 0.02 * sampling)


def inproc(rounds: int, sink: Helper, downstream: Helper, short: bool) -> tuple:
    """Per-request cost with the WSGI app called in-process (profile_route.py): no server, no driver."""
    counts = {"plain": 600 if short else 3000, "work": 150 if short else 600}
    cases = [("bare", "bare", 1.0), ("trace-run", "tracerun", 1.0), ("trace-run, sampler always_off", "tracerun", 0.0),
             ("opentelemetry-instrument", "otel", 1.0), ("opentelemetry-instrument, sampler always_off", "otel", 0.0)]
    samples: dict = {}
    cpu: dict = {}  # process CPU time: leaves out the waits on PostgreSQL, Redis, the downstream server
    for _ in range(rounds):
        for route, n in counts.items():
            for label, venv, sampling in cases:
                env = app_env(venv, sink, downstream, 1.0)
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
    text = ("### In-process: the WSGI app called directly, no server or load driver (%d x %s requests, "
            "pinned to CPU %s)\n\n" % (rounds, "/".join(str(n) for n in counts.values()), APP_CPU)
            + table(["route", "configuration", "us/request (median)", "min..max", "added us vs bare",
                     "CPU us/request", "CPU min..max", "added CPU us"], rows))
    return text, data


def summarize(results: list, samplings: list, routes: list) -> tuple:
    by = {}
    for r in results:
        by.setdefault((r["config"], r["sampling"] if r["config"] != "bare" else None, r["route"]), []).append(r)
    rows, summary, checks = [], {}, []
    for route in routes:
        bare = by.get(("bare", None, route), [])
        bare_rps = median([r["rps"] for r in bare])
        bare_p99 = median([r["p99_us"] for r in bare])
        for cfg, s in [("bare", None)] + [(c, s) for s in samplings for c in ("tracerun", "otel")]:
            rs = by.get((cfg, s, route), [])
            if not rs:
                continue
            rps = [r["rps"] for r in rs]
            med = median(rps)
            ratio = med / bare_rps if bare_rps else float("nan")
            added = 1e6 / med - 1e6 / bare_rps if med and bare_rps else float("nan")
            p50, p99 = median([r["p50_us"] for r in rs]), median([r["p99_us"] for r in rs])
            spr = median([r["spans_per_request"] for r in rs])
            expected = ROUTES[route] * (1.0 if s is None else s) if cfg != "bare" else 0.0
            errors = sum(r["errors"] for r in rs)
            rss = median([r.get("rss_mib", float("nan")) for r in rs])
            private = median([r.get("private_mib", float("nan")) for r in rs])
            samp = "-" if s is None else "%d%%" % round(s * 100)
            rows.append(["/%s" % route, samp, LABELS[cfg], fmt(med), "%s..%s" % (fmt(min(rps)), fmt(max(rps))),
                         "%.2fx" % ratio, "%+.0f" % added if cfg != "bare" else "-", fmt(p50), fmt(p99),
                         "%.2f (%.1f)" % (spr, expected), "%s / %s" % (fmt(rss), fmt(private)), errors])
            summary["%s %s %s" % (route, samp, cfg)] = {
                "rps": round(med, 1), "rps_min": round(min(rps), 1), "rps_max": round(max(rps), 1),
                "ratio": round(ratio, 3), "added_us": round(added, 1), "p50_us": round(p50, 1),
                "p99_us": round(p99, 1), "spans_per_request": round(spr, 3), "expected_spans": expected,
                "rss_mib": round(rss, 1), "private_mib": round(private, 1), "errors": errors, "runs": len(rs),
            }
            if cfg == "tracerun":
                want = {"plain": 0.80, "work": 0.90 if s == 1.0 else 0.97}[route]
                ok = ratio >= want
                line = "/%s at %s: %.2fx bare (target >= %.2fx) %s" % (route, samp, ratio, want,
                                                                        "MET" if ok else "NOT MET")
                if route == "work":
                    p99_ok = p99 <= bare_p99 + 1000
                    line += "; p99 %s us vs bare %s us + 1000 %s" % (fmt(p99), fmt(bare_p99),
                                                                     "MET" if p99_ok else "NOT MET")
                served = sum(r["served"] for r in rs)
                if abs(spr - expected) > spans_tolerance(ROUTES[route], s, served):
                    line += "; spans/request %.2f, expected %.2f: CHECK" % (spr, expected)
                checks.append(line)
    text = table(["route", "sampling", "configuration", "req/s (median)", "min..max", "vs bare",
                  "added us/req", "p50 us", "p99 us", "spans/req (expected)", "worker RSS / private MiB",
                  "errors"], rows)
    return text, summary, checks


def span_names_table(results: list) -> str:
    """What each agent sent per request on each route (100% sampling, first run)."""
    rows, seen = [], set()
    for r in results:
        key = (r["config"], r["route"])
        if r["config"] == "bare" or r["sampling"] != 1.0 or key in seen or not r["served"]:
            continue
        seen.add(key)
        names = ", ".join("%s x%.2f" % (n, c / r["served"]) for n, c in sorted(r["names"].items()))
        rows.append(["/%s" % r["route"], LABELS[r["config"]], names or "(none)"])
    return table(["route", "configuration", "span names received (per request)"], rows)


def machine() -> dict:
    from startup import machine as m

    return m()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="1 round, 3 s per run, 100%% sampling only")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--duration", type=int, default=0, help="seconds of load per run")
    parser.add_argument("--warm", type=int, default=1, help="seconds of warm-up load per run")
    parser.add_argument("--routes", default="plain,work")
    parser.add_argument("--no-ten-percent", action="store_true", help="skip the 10%% sampling runs")
    parser.add_argument("--configs", default="bare,tracerun,otel")
    parser.add_argument("--memory", type=int, default=0,
                        help="also serve N requests per configuration and report worker RSS at N/2 and N")
    parser.add_argument("--memory-route", default="plain", help="route for --memory (default plain)")
    parser.add_argument("--no-micro", action="store_true", help="skip the per-span microbenchmark")
    parser.add_argument("--no-inproc", action="store_true", help="skip the in-process per-request runs")
    parser.add_argument("--json", default=os.path.join(RESULTS, "overhead-latest.json"))
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.short else 3)
    duration = args.duration or (3 if args.short else 10)
    samplings = [1.0] if (args.short or args.no_ten_percent) else [1.0, 0.1]
    routes = [r for r in args.routes.split(",") if r]
    configs = [c for c in args.configs.split(",") if c]
    venvs.ensure_all(configs)
    m = machine()
    t0 = time.time()
    sink, downstream = Helper("sink"), Helper("downstream")
    results = []
    try:
        runs = [r for r in plan(samplings, routes) if r[0] in configs]
        for rnd in range(rounds):
            k = (rnd * 3) % len(runs)
            for cfg, s, route in runs[k:] + runs[:k]:  # rotate: interleaved, no fixed first place
                log("round %d/%d: %s sampling=%s /%s" % (rnd + 1, rounds, cfg, s, route))
                r = run_one(cfg, s, route, duration, args.warm, sink, downstream)
                r["round"] = rnd
                if r["errors"] or r["stderr"]:
                    log("  errors=%d stderr: %s" % (r["errors"], r["stderr"][-600:]))
                log("  %.0f req/s p99 %.0f us, %.2f spans/request" % (r["rps"], r["p99_us"],
                                                                     r["spans_per_request"]))
                results.append(r)
        inproc_text, inproc_data = "", {}
        if not (args.no_inproc or args.short):
            log("in-process runs")
            inproc_text, inproc_data = inproc(1 if args.short else rounds, sink, downstream, args.short)
        memory = []
        if args.memory:
            for cfg in configs:
                log("memory: %s, %d requests of /%s" % (cfg, args.memory, args.memory_route))
                memory.append(run_one(cfg, 1.0, args.memory_route, 1, 0, sink, downstream, memory=args.memory))
    finally:
        sink.stop()
        downstream.stop()
    text, summary, checks = summarize(results, samplings, routes)
    m["load_after"] = " ".join("%.2f" % x for x in os.getloadavg())
    driver = results[0]["driver"] if results else "-"
    out = ["## Per-request overhead (%s; %d round(s) x %d s per run, driver %s -c1; %s cores, %s, Python %s; "
           "load %s -> %s)\n" % (m["date"], rounds, duration, driver, m["nproc"], m["cpu"], m["python"],
                                  m["load"], m["load_after"]),
           text, "", "Targets (issue 8), trace-run:\n"]
    out += ["- " + c for c in checks]
    out += ["", span_names_table(results), ""]
    if args.memory:
        rows = []
        for r in memory:
            half, full = r["memory"]["half"], r["memory"]["full"]
            rows.append([LABELS[r["config"]], "/" + args.memory_route, "%d: %.1f / %.1f" % half,
                         "%d: %.1f / %.1f" % full, "%+.1f" % (full[1] - half[1])])
        out += [table(["configuration", "route", "requests: worker RSS / private MiB",
                       "requests: worker RSS / private MiB", "RSS growth MiB"], rows), ""]
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
        json.dump({"machine": m, "rounds": rounds, "duration_s": duration, "results": summary, "checks": checks,
                   "micro": micro, "inproc": inproc_data, "versions": {n: venvs.versions(n) for n in configs},
                   "memory": [{"config": r["config"], **r["memory"]} for r in memory]},
                  f, indent=1, sort_keys=True)
    with open(os.path.splitext(args.json)[0] + ".raw", "w") as f:  # git-ignored: every run
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
