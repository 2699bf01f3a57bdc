"""`trace-run view`'s pages in headless chromium: a 1,000-span trace page and the trace list,
from navigation start to rendered, with the store filled towards a million spans.

    .venv/bin/python benchmarks/viewer_pages.py [--fill 1000000] [--loads 20] [--baseline main] [--json FILE]

1. Fill a fresh store directly (viewer.py's `fill`, not measured) with `--fill` spans, start
   `trace-run view` on it and send one 1,000-span trace over OTLP/HTTP: 6 services, nested up
   to 6 levels, events on some spans, a few errors with exception events and stack traces.
2. Open /trace/<id> and / in headless chromium (Playwright, Debian's /usr/bin/chromium), each
   load in a fresh browser context (nothing cached). A script injected before the page's own
   watches the DOM; "rendered" is the first frame painted after the waterfall holds all 1,000
   rows (the list: its 50 rows): a requestAnimationFrame, then a task after it. Times are
   performance.now(), i.e. milliseconds since navigation start.
3. A/B in one run: the page's static files (JS, CSS) as committed at `--baseline` (git show) and
   as in this checkout, both served through Playwright's request routing so both pay the same,
   plus this checkout's files served by the viewer itself; the variants are interleaved, load
   by load, so a busy moment of the machine hits all of them.

Target (issue 18): a 1,000-span trace page in under 200 ms with a million spans stored.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from stats import median, pct  # noqa: E402
from support.viewer import Viewer, request, span  # noqa: E402

from viewer import fill  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STATIC = os.path.join(ROOT, "viewer", "static")
SERVICES = ("frontend", "checkout", "payments", "inventory", "fraud", "shipping")
NAMES = ("GET /checkout", "POST /pay", "SELECT stock", "redis GET", "publish order", "grpc Check", "render")

# Runs before the page's scripts: resolves window.__rendered with the time of the first frame
# painted after `done()` holds. Uniform across versions of the page (none needs a hook).
WATCH = """
(() => {
  const done = %s;
  window.__rendered = new Promise((resolve) => {
    const check = () => {
      if (!done()) return false;
      const dom = performance.now();
      requestAnimationFrame(() => setTimeout(() => resolve({dom, painted: performance.now()}), 0));
      return true;
    };
    const start = () => {
      if (check()) return;
      const mo = new MutationObserver(() => { if (check()) mo.disconnect(); });
      mo.observe(document.documentElement, {childList: true, subtree: true});
    };
    if (document.documentElement) start(); else document.addEventListener("readystatechange", start, {once: true});
  });
})();
"""
TRACE_DONE = "() => document.querySelectorAll('#waterfall .wf-row[data-span-id]').length >= 1000"
LIST_DONE = "() => document.querySelectorAll('#traces tbody tr').length >= %d"


def big_trace(trace_id: str) -> list:
    """1,000 spans over 6 services, nested up to 6 levels, some events and errors."""
    rnd = random.Random(18)
    t0 = time.time_ns() - 5 * 10**9
    spans = [span(trace_id, "%016x" % 1, "GET /checkout", "frontend", t0, 2400.0)]
    depth = {1: 0}
    window = {1: (t0, t0 + 2400 * 10**6)}
    open_parents = [1]
    for k in range(2, 1001):
        parent = rnd.choice(open_parents[-80:])
        a, b = window[parent]
        start = a + rnd.randrange(0, max(1, (b - a) * 3 // 4))
        dur = rnd.randrange(1, max(2, (b - start) // 10**3)) * 10**3
        pservice = spans[parent - 1]["service"]
        service = rnd.choice(SERVICES) if rnd.random() < 0.3 else pservice
        extra = {}
        if k % 25 == 0:
            extra["events"] = [("cache miss", start + dur // 2, {"cache.key": "order:%d" % k})]
        error = k % 97 == 0
        if error:
            extra["events"] = [("exception", start + dur - 1000, {
                "exception.type": "TimeoutError", "exception.message": "Payment timeout",
                "exception.stacktrace": "Traceback (most recent call last):\n  File \"pay.py\", line 9\n"
                                        "TimeoutError: Payment timeout"})]
        spans.append(span(trace_id, "%016x" % k, NAMES[k % len(NAMES)], service, start, dur / 1e6,
                          parent="%016x" % parent, kind=3 if service != pservice else 1, error=error,
                          attrs={"order.id": k, "http.route": "/checkout", "peer.service": pservice}, **extra))
        depth[k] = depth[parent] + 1
        if depth[k] < 5:
            open_parents.append(k)
        window[k] = (start, start + dur)
    return spans


def git_static(ref: str) -> dict:
    out = {}
    for name in sorted(os.listdir(STATIC)):
        if name.endswith((".js", ".css")):
            out[name] = subprocess.run(["git", "-C", ROOT, "show", "%s:viewer/static/%s" % (ref, name)],
                                       capture_output=True, check=True).stdout
    return out


def local_static() -> dict:
    out = {}
    for name in sorted(os.listdir(STATIC)):
        if name.endswith((".js", ".css")):
            with open(os.path.join(STATIC, name), "rb") as f:
                out[name] = f.read()
    return out


def load_once(browser, url: str, done: str, files: dict = None) -> dict:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        if files is not None:
            def serve(route):
                name = route.request.url.rsplit("/", 1)[1].split("?")[0]
                kind = "text/css" if name.endswith(".css") else "text/javascript"
                route.fulfill(status=200, body=files[name], headers={"Content-Type": kind + "; charset=utf-8",
                                                                     "Cache-Control": "no-store"})
            ctx.route("**/static/*", serve)
        ctx.add_init_script(WATCH % done)
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url, wait_until="commit")
        result = page.evaluate("window.__rendered")
        # the page's own marks where it has them (trace.js: data parsed, rows in the DOM)
        result.update(page.evaluate("Object.fromEntries(performance.getEntriesByType('mark')"
                                    ".map((m) => [m.name, m.startTime]))"))
        if errors:
            raise SystemExit("page error on %s: %s" % (url, errors))
        return result
    finally:
        ctx.close()


def summary(times: list) -> dict:
    return {"median_ms": round(median(times), 1), "p10_ms": round(pct(times, 10), 1),
            "p90_ms": round(pct(times, 90), 1), "min_ms": round(min(times), 1), "max_ms": round(max(times), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fill", type=int, default=1_000_000, help="spans stored besides the measured trace")
    ap.add_argument("--loads", type=int, default=20, help="page loads per page and variant")
    ap.add_argument("--baseline", default="main", help="git ref whose static files are the A variant ('' = none)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "viewer-pages-latest.json"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    variants = {}
    if args.baseline:
        variants["baseline " + args.baseline] = git_static(args.baseline)
    variants["this checkout"] = local_static()
    variants["this checkout, served by the viewer"] = None
    trace_id = "%032x" % (0x18 << 100)
    result = {"fill": args.fill, "loads": args.loads, "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "pages.sqlite3")
        if args.fill:
            t = time.perf_counter()
            fill(db, args.fill - 1000)
            print("filled %d spans directly in %.1f s" % (args.fill - 1000, time.perf_counter() - t), flush=True)
        viewer = Viewer(db, "--max-spans", str(max(args.fill, 10_000) + 1000), grpc_port=-1).start()
        try:
            status, body = viewer.post(request(big_trace(trace_id)).SerializeToString())
            assert status == 200, (status, body)
            viewer.wait_trace(trace_id, 1000)
            pages = {"trace page, 1,000 spans": (viewer.ui + "/trace/" + trace_id, TRACE_DONE),
                     "trace list": (viewer.ui + "/", LIST_DONE % (50 if args.fill >= 1000 else 1))}
            times = {(p, v): {} for p in pages for v in variants}
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for url, done in pages.values():  # warm-up: one load of each
                    for files in variants.values():
                        load_once(browser, url, done, files)
                for i in range(args.loads):
                    order = list(variants.items())
                    order = order[i % len(order):] + order[:i % len(order)]
                    for page, (url, done) in pages.items():
                        for name, files in order:
                            r = load_once(browser, url, done, files)
                            for key, value in r.items():
                                times[page, name].setdefault(key, []).append(value)
                browser.close()
        finally:
            viewer.stop()
    result["load_after"] = os.getloadavg()
    result["pages"] = {}
    for (page, name), t in times.items():
        row = {"rendered": summary(t.pop("painted")), "dom_complete": summary(t.pop("dom"))}
        row.update({"mark " + key: summary(values) for key, values in t.items() if len(values) == args.loads})
        result["pages"].setdefault(page, {})[name] = row
        print("%-24s %-36s rendered median %6.1f ms (p10 %6.1f, p90 %6.1f)  rows in DOM median %6.1f ms%s"
              % (page, name, row["rendered"]["median_ms"], row["rendered"]["p10_ms"], row["rendered"]["p90_ms"],
                 row["dom_complete"]["median_ms"], "".join("  %s %.1f" % (k, v["median_ms"]) for k, v in row.items()
                                                           if k.startswith("mark"))), flush=True)
    print("load average before %s, after %s" % (result["load_before"], result["load_after"]))
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
