"""Start-up cost of trace-run against the bare interpreter and `opentelemetry-instrument`.

    python benchmarks/startup.py [--runs N] [--short] [--json FILE]

Measures, interleaved over N rounds, the wall time and peak RSS of
- `python -c pass`,
- `python benchmarks/apps/startup_app.py` (imports Flask and builds a small app), and
- `python -c "import flask, requests, psycopg, redis"` (four libraries, four instrumentors),
each bare, under the agent's sitecustomize alone (PYTHONPATH, what every child
process of a traced program pays), and through the launcher (`trace-run python ...`: a shell
script that execs the command; `opentelemetry-instrument python ...`, `ddtrace-run python ...`:
one more interpreter start each).
Each agent is compared with the bare run of its own virtualenv, so that the
packages installed beside it do not count against it. Then `python -X importtime`
lists what the agent's sitecustomize path imports that a bare start does not.

Targets (issue 2): under 10 ms added to `python -c pass`, under 60 ms added to the
Flask app import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import venvs  # noqa: E402
from stats import fmt, median, pct, spread, table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "apps", "startup_app.py")
PROBE = os.path.join(HERE, "apps", "startup_probe.py")
WORKLOADS = {"pass": ["-c", "pass"], "flask": [APP], "four": ["-c", "import flask, requests, psycopg, redis"]}
WORKLOAD_LABELS = {"pass": "`python -c pass`", "flask": "flask app import",
                   "four": "`import flask, requests, psycopg, redis`"}


def clean_env(venv: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "DD_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.path.join(venvs.path(venv), "bin") + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = venvs.path(venv)
    env["OTEL_SERVICE_NAME"] = "startup-bench"
    # ddtrace: nothing sent at start-up (no agent is listening here; telemetry and remote config off)
    env.update({"DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false", "DD_REMOTE_CONFIGURATION_ENABLED": "false",
                "DD_TRACE_STARTUP_LOGS": "false", "DD_TRACE_AGENT_URL": "http://127.0.0.1:9"})
    env.update(extra)
    return env


def inject_dir(venv: str, module: str, expr: str) -> str:
    code = f"import {module} as m; print({expr})"
    out = subprocess.run([venvs.bin_path(venv), "-c", code], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    return out.stdout.strip()


def configs() -> list:
    """(label, venv, argv prefix, env, baseline label) for every way of starting Python."""
    tr_inject = inject_dir("tracerun", "trace_run.agent.cli", "m.inject_dir()")
    otel_inject = inject_dir("otel", "opentelemetry.instrumentation.auto_instrumentation",
                             "__import__('os').path.dirname(m.__file__)")
    dd_inject = inject_dir("ddtrace", "ddtrace.bootstrap", "__import__('os').path.dirname(m.__file__)")
    py = venvs.bin_path
    return [
        ("bare", "bare", [py("bare")], clean_env("bare"), None),
        ("tracerun venv, no agent", "tracerun", [py("tracerun")], clean_env("tracerun"), None),
        ("trace-run sitecustomize only", "tracerun", [py("tracerun")],
         clean_env("tracerun", PYTHONPATH=tr_inject), "tracerun venv, no agent"),
        ("trace-run python ...", "tracerun", [py("tracerun", "trace-run"), "python"],
         clean_env("tracerun"), "tracerun venv, no agent"),
        ("otel venv, no agent", "otel", [py("otel")], clean_env("otel"), None),
        ("upstream sitecustomize only", "otel", [py("otel")],
         clean_env("otel", PYTHONPATH=otel_inject), "otel venv, no agent"),
        ("opentelemetry-instrument python ...", "otel", [py("otel", "opentelemetry-instrument"), "python"],
         clean_env("otel"), "otel venv, no agent"),
        ("ddtrace venv, no agent", "ddtrace", [py("ddtrace")], clean_env("ddtrace"), None),
        ("ddtrace sitecustomize only", "ddtrace", [py("ddtrace")],
         clean_env("ddtrace", PYTHONPATH=dd_inject), "ddtrace venv, no agent"),
        ("ddtrace-run python ...", "ddtrace", [py("ddtrace", "ddtrace-run"), "python"],
         clean_env("ddtrace"), "ddtrace venv, no agent"),
    ]


def spawn(argv: list, env: dict) -> tuple:
    """Run argv once; (wall seconds, peak RSS in MiB, exit status). stdout/stderr to /dev/null."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
    ]
    exe = argv[0]
    t0 = time.perf_counter()
    pid = os.posix_spawn(exe, argv, env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    return wall, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status)


def check(label: str, argv: list, env: dict) -> None:
    """One run with output shown if it fails or writes to stderr (a broken agent must not look fast)."""
    res = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if res.returncode != 0 or res.stderr.strip():
        sys.stderr.write(f"[startup] {label}: exit {res.returncode}, stderr:\n{res.stderr.strip()}\n")
    if res.returncode != 0:
        raise SystemExit(f"[startup] {label} failed")


def probe(argv_prefix: list, env: dict) -> dict:
    res = subprocess.run(argv_prefix + [PROBE], env=env, capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": res.stderr.strip()[-300:]}


def measure(runs: int) -> dict:
    cfgs = configs()
    os.chdir(tempfile.gettempdir())  # keep the checkout off sys.path ('' of -c)
    samples = {(c[0], w): [] for c in cfgs for w in WORKLOADS}
    for label, _venv, prefix, env, _base in cfgs:
        for w, args in WORKLOADS.items():
            check(f"{label} {w}", prefix + args, env)
            for _ in range(2):  # warm the page cache and the .pyc files
                spawn(prefix + args, env)
    for i in range(runs):
        order = cfgs[i % len(cfgs):] + cfgs[:i % len(cfgs)]  # rotate, so no config always goes first
        for label, _venv, prefix, env, _base in order:
            for w, args in WORKLOADS.items():
                wall, rss, code = spawn(prefix + args, env)
                if code != 0:
                    raise SystemExit(f"[startup] {label} {w} exited {code}")
                samples[(label, w)].append((wall * 1000.0, rss))
    probes = {c[0]: probe(c[2], c[3]) for c in cfgs}
    return {"configs": cfgs, "samples": samples, "probes": probes}


def report(result: dict) -> tuple:
    cfgs, samples = result["configs"], result["samples"]
    rows, summary = [], {}
    for w in WORKLOADS:
        for label, _venv, _prefix, _env, base in cfgs:
            ms = [s[0] for s in samples[(label, w)]]
            rss = [s[1] for s in samples[(label, w)]]
            med = median(ms)
            added = ""
            if base:
                added_v = med - median([s[0] for s in samples[(base, w)]])
                added_rss = median(rss) - median([s[1] for s in samples[(base, w)]])
                added = f"{added_v:+.1f} ms / {added_rss:+.1f} MiB"
            summary[f"{w} | {label}"] = {
                "median_ms": round(med, 2), "p25_ms": round(pct(ms, 25), 2), "p75_ms": round(pct(ms, 75), 2),
                "min_ms": round(min(ms), 2), "rss_mib": round(median(rss), 1), "added": added,
            }
            ratio = med / median([s[0] for s in samples[(base, w)]]) if base else 1.0
            summary[f"{w} | {label}"]["ratio"] = round(ratio, 3)
            rows.append([WORKLOAD_LABELS[w], label, "%.2fx" % ratio,
                         fmt(med), spread(ms), fmt(min(ms)), fmt(median(rss)), added or "(baseline)"])
    text = table(["workload", "configuration", "vs its venv", "median ms", "p25..p75", "min", "peak RSS MiB",
                  "added (median) vs its venv"], rows)
    return text, summary


# -- python -X importtime ------------------------------------------------------------------


def importtimes(argv: list, env: dict, repeat: int = 5) -> dict:
    """module -> (median self us, median cumulative us) over `repeat` runs."""
    runs: dict = {}
    for _ in range(repeat):
        res = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
        for line in res.stderr.splitlines():
            if not line.startswith("import time:") or "imported package" in line:
                continue
            self_us, cum_us, name = line[len("import time:"):].split("|", 2)
            runs.setdefault(name.strip(), []).append((int(self_us), int(cum_us)))
    return {n: (median([v[0] for v in vs]), median([v[1] for v in vs])) for n, vs in runs.items()}


def importtime_report(top: int = 15) -> tuple:
    cfgs = {c[0]: c for c in configs()}
    out, data = [], {}
    for w, args in WORKLOADS.items():
        base = cfgs["tracerun venv, no agent"]
        agent = cfgs["trace-run sitecustomize only"]
        bare = importtimes(base[2] + ["-X", "importtime"] + args, base[3])
        traced = importtimes(agent[2] + ["-X", "importtime"] + args, agent[3])
        added = {n: v for n, v in traced.items() if n not in bare}
        total_self = sum(v[0] for v in added.values()) / 1000.0
        ranked = sorted(added.items(), key=lambda kv: -kv[1][1])[:top]
        title = WORKLOAD_LABELS[w].strip("`")
        out.append(f"Modules imported under trace-run and not in the bare run (`{title}`): {len(added)} modules, "
                   f"{total_self:.1f} ms of own import time in all (median of 5 runs)\n")
        out.append(table(["module (top by cumulative)", "self ms", "cumulative ms"],
                         [[f"`{n.strip()}`", "%.2f" % (v[0] / 1000.0), "%.2f" % (v[1] / 1000.0)]
                          for n, v in ranked]))
        groups: dict = {}
        for n, v in added.items():
            top_name = n.split(".")[0] if not n.startswith("opentelemetry.") else ".".join(n.split(".")[:2])
            groups[top_name] = groups.get(top_name, 0) + v[0]
        ranked_groups = sorted(groups.items(), key=lambda kv: -kv[1])[:10]
        out.append("\nThe same added modules, own import time summed by package: " + ", ".join(
            "`%s` %.1f ms" % (g, us / 1000.0) for g, us in ranked_groups))
        out.append("")
        data[w] = {"added_modules": len(added), "added_self_ms": round(total_self, 2),
                   "by_package_ms": {g: round(us / 1000.0, 2) for g, us in ranked_groups},
                   "top": [[n.strip(), v[0], v[1]] for n, v in ranked]}
    return "\n".join(out), data


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=0, help="rounds (default 40, --short 10)")
    parser.add_argument("--no-importtime", action="store_true", help="skip the -X importtime lists")
    parser.add_argument("--short", action="store_true", help="quick check: 10 rounds")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "startup-latest.json"),
                        help="where to write the summary (a few KB)")
    args = parser.parse_args(argv)
    runs = args.runs or (10 if args.short else 40)
    venvs.ensure_all(("bare", "tracerun", "otel", "ddtrace"))
    m = machine()
    t0 = time.time()
    result = measure(runs)
    text, summary = report(result)
    itext, idata = ("(skipped)", {}) if args.no_importtime else importtime_report()
    m["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = {n: venvs.versions(n) for n in ("bare", "tracerun", "otel", "ddtrace")}
    print(f"## Start-up ({runs} interleaved runs each; {m['date']}, {m['nproc']} cores, {m['cpu']}, "
          f"Python {m['python']}; load {m['load']} -> {m['load_after']})\n")
    print(text)
    print()
    print("What each configuration had set up after importing the Flask app "
          "(provider class; is Flask patched):\n")
    for label, p in result["probes"].items():
        print(f"- {label}: {json.dumps(p, sort_keys=True)}")
    print()
    print("### python -X importtime, trace-run's sitecustomize path\n")
    print(itext)
    print("(%.0f s in all)" % (time.time() - t0))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": m, "runs": runs, "results": summary, "importtime": idata,
                   "probes": result["probes"], "versions": versions}, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
