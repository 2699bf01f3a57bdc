"""Every benchmark the README's tables come from, in one command, then the tables.

    python benchmarks/run_all.py            # ~33 min on 2 cores (see ESTIMATE_MIN below)
    python benchmarks/run_all.py --short    # ~7 min: 1 round x 3 s, 20k requests for memory, 6 start-up rounds
    python benchmarks/run_all.py --summary  # only print the tables from benchmarks/results/*-latest.json

Steps, each a script of its own (run them alone to look closer):
1. startup.py: `python -c pass`, the Flask app import and `import flask, requests, psycopg, redis`,
   bare / trace-run / opentelemetry-instrument / ddtrace-run        -> results/startup-latest.json
2. overhead.py --apps flask: /plain and /all at 100 % and 10 % sampling, worker RSS after 50k and
   100k requests over OTLP/HTTP and OTLP/gRPC, the per-span microbenchmark (the in-process runs
   are left to `overhead.py` alone, for time)
                                                                     -> results/overhead-latest.json
3. overhead.py --apps fastapi,django: /plain and /all at 100 %       -> results/frameworks-latest.json
Then the summary tables (issue 19's and issue 16's), printed and written to
results/summary-latest.md. Every step checks spans received per request against spans made.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)

from stats import table  # noqa: E402

PEERS = (("tracerun", "trace-run"), ("otel", "opentelemetry-instrument"), ("ddtrace", "ddtrace-run"))
FRAMEWORK_APPS = "fastapi,django"
# (full, short): arguments of each step; minutes each took on the 2-core machine (see README)
STEPS = {
    "startup": (["startup.py", "--runs", "15"], ["startup.py", "--runs", "6", "--no-importtime"]),
    "overhead": (["overhead.py", "--apps", "flask", "--rounds", "4", "--duration", "6", "--samplings", "1,0.1",
                  "--memory", "100000", "--no-inproc", "--pin-services", "--paired"],
                 ["overhead.py", "--apps", "flask", "--rounds", "1", "--duration", "3", "--samplings", "1,0.1",
                  "--memory", "20000", "--no-inproc", "--paired"]),
    "frameworks": (["overhead.py", "--apps", FRAMEWORK_APPS, "--rounds", "3", "--duration", "5", "--samplings", "1",
                    "--no-micro", "--no-inproc", "--pin-services"],
                   ["overhead.py", "--apps", FRAMEWORK_APPS, "--rounds", "1", "--duration", "3", "--samplings", "1",
                    "--no-micro", "--no-inproc"]),
}
# (full, short) minutes on the 2-core machine, quiet, estimated from the parts: a timed run costs its
# duration + ~3.5 s (start, 1 s warm-up, stop and flush); memory runs ~6 min for 100k requests x 6 configs
# (ddtrace-run, the slowest, ~1.8 min of it); start-up ~11 s per round of 10 configurations x 3 workloads.
ESTIMATE_MIN = {"startup": (3.5, 1.7), "overhead": (22.0, 4.5), "frameworks": (7.5, 2.2)}


def load(name: str) -> dict:
    try:
        with open(os.path.join(RESULTS, "%s-latest.json" % name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _ratio_cell(r: dict, bare_rps: float) -> str:
    """The paired ratio (each run against the bare run just before it) where the run made pairs, with the pairs'
    min-max; else the ratio of the medians, with the rounds' min-max against bare's median."""
    if not r:
        return ""
    if "paired_ratio" in r:
        cell = "%.2fx (%.2f-%.2f; medians %.2fx)" % (r["paired_ratio"], r["paired_min"], r["paired_max"], r["ratio"])
    else:
        cell = "%.2fx (%.2f-%.2f)" % (r["ratio"], r["rps_min"] / bare_rps, r["rps_max"] / bare_rps)
    if not r.get("spans_ok", True):
        cell += " spans!"
    return cell


def per_request_rows(res: dict, app: str, routes=("plain", "all"), samplings=("100%", "10%")) -> list:
    rows = []
    for route in routes:
        bare = res.get("%s %s - bare" % (app, route))
        if not bare:
            continue
        for samp in samplings:
            cells = [_ratio_cell(res.get("%s %s %s %s" % (app, route, samp, c), {}), bare["rps"]) for c, _ in PEERS]
            if any(cells):
                rows.append(["/%s at %s" % (route, samp), "1.00 (%.0f req/s)" % bare["rps"]] + cells)
    for samp in samplings:
        bare = res.get("%s all - bare" % app)
        if bare:
            cells = ["%.1f ms" % (res["%s all %s %s" % (app, samp, c)]["p99_us"] / 1000)
                     if "%s all %s %s" % (app, samp, c) in res else "" for c, _ in PEERS]
            if any(cells):
                rows.append(["/all p99 at %s" % samp, "%.1f ms" % (bare["p99_us"] / 1000)] + cells)
    for route in routes:  # the worker's own CPU time per request, all its threads (export included)
        bare = res.get("%s %s - bare" % (app, route))
        if not bare or "cpu_all_us" not in bare:
            continue
        for samp in samplings:
            cells = []
            for c, _ in PEERS:
                r = res.get("%s %s %s %s" % (app, route, samp, c))
                cells.append("%+.0f us" % (r["cpu_all_us"] - bare["cpu_all_us"]) if r and "cpu_all_us" in r else "")
            if any(cells):
                rows.append(["/%s worker CPU per request at %s" % (route, samp), "%.0f us" % bare["cpu_all_us"]]
                            + cells)
    cells = []
    for c, _ in PEERS:
        r = res.get("%s all 100%% %s" % (app, c))
        cells.append("%.2f / %.2f" % (r["spans_per_request"], r["expected_spans"]) if r else "")
    if any(cells):
        rows.append(["/all spans received / made per request", "-"] + cells)
    return rows


def memory_rows(over: dict) -> list:
    mem = {(m["config"], m["protocol"]): m for m in over.get("memory", [])}
    bare = mem.get(("bare", "http"))
    if not bare:
        return []
    rows = []
    for proto, label in (("http", "OTLP/HTTP"), ("grpc", "OTLP/gRPC")):
        cells = []
        for c, _ in PEERS:
            m = mem.get((c, "http" if c == "ddtrace" else proto))
            if not m:
                cells.append("")
                continue
            cell = "%+.1f -> %+.1f MiB" % (m["half"][1] - bare["half"][1], m["full"][1] - bare["full"][1])
            if c == "ddtrace":
                cell += " (Datadog agent API)"
            cells.append(cell)
        rows.append(["worker RSS, %s, at %dk -> %dk requests" % (label, round(bare["half"][0] / 1000),
                                                                  round(bare["full"][0] / 1000)),
                     "%.1f -> %.1f MiB" % (bare["half"][1], bare["full"][1])] + cells)
    return rows


def startup_rows(start: dict) -> list:
    res = start.get("results", {})
    rows = []
    bare = res.get("pass | bare")
    if bare:
        cells = []
        for label in ("trace-run python ...", "opentelemetry-instrument python ...", "ddtrace-run python ..."):
            r = res.get("pass | " + label)
            cells.append("%.2fx (%.1f ms)" % (r.get("ratio", float("nan")), r["median_ms"]) if r else "")
        rows.append(["`X python -c pass`, vs its venv's bare start", "1.00 (%.1f ms)" % bare["median_ms"]] + cells)
    bare = res.get("four | bare")
    if bare:
        cells = []
        for label, agent in (("trace-run python ...", "trace-run sitecustomize only"),
                             ("opentelemetry-instrument python ...", "upstream sitecustomize only"),
                             ("ddtrace-run python ...", "ddtrace sitecustomize only")):
            r, a = res.get("four | " + label), res.get("four | " + agent)
            cells.append("%s (agent alone %s)" % (r["added"].split(" /")[0], a["added"].split(" /")[0])
                         if r and a else "")
        rows.append(["`import flask, requests, psycopg, redis`, added", "%.0f ms" % bare["median_ms"]] + cells)
    return rows


def micro_rows(over: dict) -> list:
    micro = over.get("micro", {})
    sdk = micro.get("bare SDK + BatchSpanProcessor + OTLP/HTTP")
    if not sdk:
        return []
    cells = []
    for label in ("trace-run", "opentelemetry-instrument", "ddtrace-run (ddtrace's own tracer)"):
        m = micro.get(label)
        cells.append("%.1f us (%.1f with export)" % (m["request_us"], m["request_us"] + m["export_us"]) if m else "")
    return [["span with 5 attributes, request thread (start to queued)",
             "SDK: %.1f us (%.1f with export)" % (sdk["request_us"], sdk["request_us"] + sdk["export_us"])] + cells]


def frameworks_rows(over: dict, frame: dict) -> list:
    rows = []
    for res, apps in ((over.get("results", {}), ["flask"]), (frame.get("results", {}), frame.get("apps", []))):
        for app in apps:
            for route in ("plain", "all"):
                bare = res.get("%s %s - bare" % (app, route))
                if not bare:
                    continue
                cells = []
                for c, _ in PEERS:
                    r = res.get("%s %s 100%% %s" % (app, route, c))
                    cells.append("%s, %.2f spans" % (_ratio_cell(r, bare["rps"]), r["spans_per_request"]) if r else "")
                rows.append([app, "/" + route, "%.0f req/s, p99 %.1f ms" % (bare["rps"], bare["p99_us"] / 1000)]
                            + cells)
    return rows


def targets(over: dict, start: dict) -> list:
    """Issue 19's targets, trace-run's side."""
    res, out = over.get("results", {}), []

    def ratio(route, samp):
        r = res.get("flask %s %s tracerun" % (route, samp))
        return r.get("paired_ratio", r["ratio"]) if r else float("nan")

    for route, samp, want in (("all", "100%", 0.90), ("plain", "100%", 0.85), ("all", "10%", 0.97),
                              ("plain", "10%", 0.97)):
        x = ratio(route, samp)
        if x == x:  # not NaN: measured
            out.append(["/%s at %s >= %.2fx bare" % (route, samp, want), "%.2fx" % x,
                        "met" if x >= want else "not met"])
    r, bare = res.get("flask all 100% tracerun"), res.get("flask all - bare")
    if r and bare and "paired_p99_added_us" in r:
        added = r["paired_p99_added_us"]
        out.append(["/all p99 <= bare + 1 ms", "%+.1f ms over the bare run before it (%.1f ms vs %.1f, medians)"
                    % (added / 1000, r["p99_us"] / 1000, bare["p99_us"] / 1000), "met" if added <= 1000 else "not met"])
    elif r and bare:
        ok = r["p99_us"] <= bare["p99_us"] + 1000
        out.append(["/all p99 <= bare + 1 ms", "%.1f ms vs %.1f + 1" % (r["p99_us"] / 1000, bare["p99_us"] / 1000),
                    "met" if ok else "not met"])
    mem = {(m["config"], m["protocol"]): m for m in over.get("memory", [])}
    for proto in ("http", "grpc"):
        m, b = mem.get(("tracerun", proto)), mem.get(("bare", "http"))
        if m and b:
            added = m["full"][1] - b["full"][1]
            growth = m["full"][1] - m["half"][1]
            ok = added <= 8 and growth <= 1
            out.append(["worker RSS within 8 MiB of bare, flat, OTLP/%s" % proto.upper().replace("GRPC", "gRPC"),
                        "%+.1f MiB, %+.1f from %dk to %dk" % (added, growth, m["half"][0] // 1000,
                                                              m["full"][0] // 1000),
                        "met" if ok else "not met"])
    sres = start.get("results", {})
    p = sres.get("pass | trace-run python ...")
    if p and "ratio" in p:  # (results from before issue 19 have no ratio)
        out.append(["`trace-run python -c pass` <= 1.3x bare", "%.2fx" % p["ratio"],
                    "met" if p["ratio"] <= 1.3 else "not met"])
    f = sres.get("four | trace-run python ...")
    if f:
        ms = float(f["added"].split(" ms")[0])
        out.append(["four-library import <= +40 ms", "%+.0f ms" % ms, "met" if ms <= 40 else "not met"])
    m = over.get("micro", {}).get("trace-run")
    if m:
        out.append(["sampled 5-attribute span, request thread <= 10 us", "%.1f us" % m["request_us"],
                    "met" if m["request_us"] <= 10 else "not met"])
    off = [c for c in over.get("checks", [])]
    out.append(["spans received per request = spans made (every peer, every run)",
                "all" if not off else "%d off" % len(off), "met" if not off else "CHECK"])
    return out


def summary() -> str:
    over, frame, start = load("overhead"), load("frameworks"), load("startup")
    head = ["", "bare"] + [label for _, label in PEERS]
    m = over.get("machine", {})
    out = ["## Side by side (issue 19): Flask, gunicorn one sync worker, one connection (%s; load %s -> %s; "
           "%s round(s) x %s s, driver %s)\n" % (m.get("date", "?"), m.get("load", "?"), m.get("load_after", "?"),
                                                  over.get("rounds", "?"), over.get("duration_s", "?"),
                                                  over.get("driver", "?")),
           ("Ratios are req/s against bare: each agent run against the bare run of its route just before it, "
            "median over the rounds (min-max of these pairs; then the ratio of the medians over the rounds).\n"
            if over.get("paired") else
            "Ratios are req/s against bare, median over the rounds (min-max of the rounds in brackets).\n"),
           table(head, per_request_rows(over.get("results", {}), "flask") + memory_rows(over) + startup_rows(start)
                 + micro_rows(over)), ""]
    out += ["### Issue 19's targets, trace-run\n", table(["target", "measured", ""], targets(over, start)), ""]
    fm = frame.get("machine", {})
    out += ["## Frameworks (issue 16): 100 %% sampling, one connection (%s; load %s -> %s)\n"
            % (fm.get("date", "?"), fm.get("load", "?"), fm.get("load_after", "?")),
            "FastAPI as its release ships (its own telemetry on: it makes its own spans whenever a tracer "
            "provider is set) under uvicorn, one process; Django under gunicorn, one sync worker. Cells: ratio "
            "vs bare (min-max), spans received per request.\n",
            table(["app", "route", "bare"] + [label for _, label in PEERS], frameworks_rows(over, frame)), ""]
    checks = over.get("checks", []) + frame.get("checks", [])
    if checks:
        out += ["Spans received per request that do not match the spans made:\n"] + ["- " + c for c in checks]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="~7 min instead of ~25")
    parser.add_argument("--summary", action="store_true", help="only print the tables from the last results")
    parser.add_argument("--only", default="", help="steps to run, e.g. frameworks (default: all)")
    args = parser.parse_args(argv)
    if not args.summary:
        steps = [s for s in (args.only.split(",") if args.only else STEPS) if s]
        total = sum(ESTIMATE_MIN[s][args.short] for s in steps)
        sys.stderr.write("[run_all] steps %s, about %.0f min (plus virtualenvs the first time)\n"
                         % (", ".join(steps), total))
        import venvs

        venvs.ensure_all(("bare", "tracerun", "otel", "ddtrace", "sink"))
        for step in steps:
            t0 = time.time()
            cmd = list(STEPS[step][args.short])
            cmd[0] = os.path.join(HERE, cmd[0])
            if step == "frameworks":
                cmd += ["--json", os.path.join(RESULTS, "frameworks-latest.json")]
            sys.stderr.write("[run_all] %s: %s\n" % (step, " ".join(cmd[1:])))
            subprocess.run([sys.executable] + cmd, check=True)
            sys.stderr.write("[run_all] %s took %.1f min\n" % (step, (time.time() - t0) / 60))
    text = summary()
    print(text)
    with open(os.path.join(RESULTS, "summary-latest.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
