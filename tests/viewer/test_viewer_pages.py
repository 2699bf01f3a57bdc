"""The viewer's pages in a real browser (Debian's chromium, headless, driven by Playwright).

One `trace-run view` for the module (free ports, a temporary store); real programs run under
trace-run send to it: sample_apps/hello.py, the checkout sample (its slow fraud check makes the
slowest hop known in advance), and a program whose span names and attribute values are hostile
HTML and whose root span's parent never arrives. One trace is built by hand over OTLP, where the
critical path must leave one span out. Set TRACE_RUN_UPDATE_SCREENSHOTS=1 to refresh the README's
screenshot of the slow checkout's waterfall (docs/checkout-waterfall.png).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import uuid

import pytest
from playwright.sync_api import expect
from support import AMQP_URL, PG_DSN, REDIS_URL, TRACE_RUN, clean_env, python, write_script
from support.viewer import Viewer, now_ns, request, sid, span

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = os.path.join(ROOT, "sample_apps", "hello.py")
RUN_PY = os.path.join(ROOT, "sample_apps", "checkout", "run.py")
SCREENSHOT = os.path.join(ROOT, "docs", "checkout-waterfall.png")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 20000

HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">'
HOSTILE_VALUE = "<script>window.__pwned=2</script>"
HOSTILE_EVENT = "<svg onload=window.__pwned=3>"
HOSTILE_SERVICE = "<b>svc</b>"


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    v = Viewer(str(tmp_path_factory.mktemp("viewer") / "spans.sqlite3")).start()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("%s is missing: apt-get install -y chromium (.ci/run installs it)" % CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page; any script error or failed resource on it fails the test."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    problems = []
    pg.on("pageerror", lambda exc: problems.append("pageerror: %s" % exc))
    pg.on("console", lambda msg: problems.append("console %s: %s" % (msg.type, msg.text))
          if msg.type == "error" else None)
    yield pg
    ctx.close()
    assert problems == []


def traced_env(viewer, **extra) -> dict:
    return clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=viewer.http, OTEL_BSP_SCHEDULE_DELAY=100, **extra)


def rows(pg) -> list:
    """The waterfall's span rows as dicts, in page order."""
    return pg.eval_on_selector_all(".wf-row[data-span-id]", """rows => rows.map(r => ({
        span_id: r.dataset.spanId, parent_id: r.dataset.parentId, service: r.dataset.service,
        depth: Number(r.dataset.depth), name: r.querySelector('.name').textContent,
        classes: Array.from(r.classList), hidden: r.hidden}))""")


def assert_nested(found: list) -> None:
    """Each row sits one level under its parent's row, and after it."""
    index = {r["span_id"]: i for i, r in enumerate(found)}
    for i, r in enumerate(found):
        if r["parent_id"] in index:
            parent = found[index[r["parent_id"]]]
            assert index[r["parent_id"]] < i and r["depth"] == parent["depth"] + 1, (r, parent)
        else:
            assert r["depth"] == 0, r


# -- the list, live ----------------------------------------------------------------------------------


def test_list_shows_a_new_trace_live_and_links_to_its_waterfall(viewer, page):
    page.goto(viewer.ui + "/")
    page.wait_for_selector("#traces thead")
    page.evaluate("window.__samePage = 'yes'")
    service = "live-hello-%s" % uuid.uuid4().hex[:6]
    proc = subprocess.run([TRACE_RUN, python(), HELLO], env=traced_env(viewer, OTEL_SERVICE_NAME=service),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # hello.py makes two requests to itself: two traces of four spans, one service each
    selector = "#traces tbody tr:has(.svc:text-is('%s'))" % service
    expect(page.locator(selector)).to_have_count(2, timeout=WAIT_MS)
    assert page.evaluate("window.__samePage") == "yes", "the list must update without a reload"
    row = page.locator(selector).first
    assert row.locator(".name").inner_text() == "GET"
    assert row.locator("td.spans").inner_text() == "4"
    assert row.locator("td.service-count").inner_text() == "1"
    assert row.locator("td.errors").inner_text() == "0"
    trace_id = row.get_attribute("data-trace-id")
    newest = viewer.json("/api/traces?service=" + service)["traces"][0]
    assert trace_id == newest["trace_id"], "newest first"

    row.locator("a.root").click()
    page.wait_for_url("**/trace/" + trace_id)
    expect(page.locator(".wf-row[data-span-id]")).to_have_count(4, timeout=WAIT_MS)
    found = rows(page)
    assert [(r["name"], r["depth"]) for r in found] == [
        ("GET", 0), ("GET /hello/<name>", 1), ("GET", 2), ("GET /greeting/<name>", 3)]
    assert {r["service"] for r in found} == {service}
    assert_nested(found)
    assert page.locator("#trace-id").inner_text() == trace_id


# -- the checkout sample ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkout(viewer, tmp_path_factory):
    """run.py --checkouts 2 (the second one slow) sending to the viewer; yields (slow, ok) results."""
    import psycopg
    import redis

    # the README's screenshot shows the sample's own table names; test runs use tables of their own
    prefix = "checkout" if os.environ.get("TRACE_RUN_UPDATE_SCREENSHOTS") else "checkout_v%s" % uuid.uuid4().hex[:10]
    out = tmp_path_factory.mktemp("checkout") / "results.json"
    env = traced_env(viewer, CHECKOUT_PREFIX=prefix, CHECKOUT_PG_DSN=PG_DSN, CHECKOUT_REDIS_URL=REDIS_URL,
                     CHECKOUT_BROKER_URL=AMQP_URL, CHECKOUT_FRAUD_SLOW_SECONDS=2.0,
                     CHECKOUT_PAYMENTS_FRAUD_DEADLINE=0.8)
    try:
        proc = subprocess.run([python(), RUN_PY, "--checkouts", "2", "--quiet", "--json", str(out)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, "run.py exit %d\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
        ok, slow = json.loads(out.read_text())["checkouts"]
        assert ok["ok"] and not slow["ok"] and slow["slow"]
        # all the parts of both traces are in: the driver's, every service's (fraud's ends last)
        viewer.wait_trace(slow["trace_id"], spans=14)
        viewer.wait_list(lambda ts: ts and ts[0]["service_count"] == 6, "?trace_id=" + ok["trace_id"])
        yield slow, ok
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS %s_orders, %s_receipts" % (prefix, prefix))
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter("%s:*" % prefix))
        if keys:
            r.delete(*keys)


def test_slow_checkout_waterfall_marks_the_fraud_hop(viewer, checkout, page, tmp_path):
    slow, _ = checkout
    page.goto(viewer.ui + "/trace/" + slow["trace_id"])
    page.wait_for_selector(".wf-row.slowest-hop", timeout=WAIT_MS)
    found = rows(page)
    assert len(found) == 14
    assert_nested(found)
    assert (found[0]["service"], found[0]["name"], found[0]["depth"]) == ("checkout-driver", "checkout", 0)
    assert [r for r in found if r["depth"] == 0] == [found[0]], "one root: the driver's span"
    chain = [(r["service"], r["name"]) for r in found if "SERVER" in r["name"] or r["name"].startswith("POST /")]
    assert chain == [("storefront", "POST /checkout"), ("orders", "POST /orders"), ("payments", "POST /charge"),
                     ("fraud", "POST /score")]
    # the page says which hop was slow: payments -> fraud, where the 2 s query ran
    hop = [r for r in found if "slowest-hop" in r["classes"]]
    assert [(r["service"], r["name"]) for r in hop] == [("fraud", "POST /score")]
    assert page.locator(".wf-row.slowest-hop .hop-badge").inner_text().lower() == "slowest hop"
    assert "payments → fraud" in page.locator("#hop-summary").inner_text()
    query = [r for r in found if r["service"] == "fraud" and r["name"].startswith("SELECT")]
    assert len(query) == 1 and "critical" in query[0]["classes"]
    assert "critical" in found[0]["classes"]
    errors = {(r["service"], r["name"]) for r in found if "error" in r["classes"]}
    assert ("payments", "POST /charge") in errors and ("fraud", "POST /score") not in errors
    assert {r["service"] for r in found} == {"checkout-driver", "storefront", "orders", "payments", "fraud"}
    colours = page.eval_on_selector_all(".wf-row[data-span-id]", """rows => rows.map(r =>
        [r.dataset.service, r.querySelector('.bar').style.backgroundColor])""")
    by_service = {}
    for service, colour in colours:
        by_service.setdefault(service, set()).add(colour)
    assert all(len(c) == 1 for c in by_service.values()), "one colour per service"
    assert len({c.pop() for c in by_service.values()}) == len(by_service), "services tell apart"

    shot = tmp_path / "checkout-waterfall.png"
    page.set_viewport_size({"width": 1400, "height": 560})
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10000
    if os.environ.get("TRACE_RUN_UPDATE_SCREENSHOTS"):
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_detail_panel_shows_the_timeout_with_its_stack_trace(viewer, checkout, page):
    slow, _ = checkout
    page.goto(viewer.ui + "/trace/" + slow["trace_id"])
    page.wait_for_selector(".wf-row.slowest-hop", timeout=WAIT_MS)
    call = page.locator(".wf-row[data-service='payments']:has(.name:text-is('POST'))")
    assert call.count() == 1
    call.click()
    detail = page.locator("#detail")
    detail.wait_for(state="visible")
    assert detail.locator("#detail-name").inner_text() == "POST"
    assert detail.locator("#detail-kind").inner_text() == "CLIENT"
    assert detail.locator("#detail-status").inner_text().startswith("ERROR")
    attrs = dict(detail.locator("table.attributes tr").evaluate_all(
        "trs => trs.map(tr => [tr.children[0].textContent, tr.children[1].textContent])"))
    assert "Timeout" in attrs["error.type"] and attrs["http.request.method"] == "POST"
    exception = detail.locator("li.event.exception")
    assert exception.count() == 1 and "Timeout" in exception.locator(".exc").inner_text()
    stack = exception.locator("pre.stack").inner_text()
    assert stack.startswith("Traceback (most recent call last)") and "Timeout" in stack
    resource = dict(detail.locator("table.resource tr").evaluate_all(
        "trs => trs.map(tr => [tr.children[0].textContent, tr.children[1].textContent])"))
    assert resource["service.name"] == "payments"


def test_subtrees_collapse_and_expand(viewer, checkout, page):
    slow, _ = checkout
    page.goto(viewer.ui + "/trace/" + slow["trace_id"])
    page.wait_for_selector(".wf-row.slowest-hop", timeout=WAIT_MS)
    toggle = page.locator(".wf-row[data-service='orders']:has(.name:text-is('POST /orders')) .toggle")
    toggle.click()
    hidden = {(r["service"], r["name"]) for r in rows(page) if r["hidden"]}
    assert ("fraud", "POST /score") in hidden and ("payments", "POST /charge") in hidden
    assert ("orders", "POST /orders") not in hidden and ("storefront", "POST /checkout") not in hidden
    assert len(hidden) == 9  # everything orders' server span holds
    assert page.locator(".wf-row.slowest-hop").is_hidden()
    toggle.click()
    assert [r for r in rows(page) if r["hidden"]] == []


def test_services_page_draws_the_checkout_edges(viewer, checkout, page):
    page.goto(viewer.ui + "/services")
    page.wait_for_selector("#service-map g.edge[data-parent='payments'][data-child='fraud']", timeout=WAIT_MS)
    table = page.eval_on_selector_all("#edges tbody tr", """trs => trs.map(tr => [tr.dataset.parent,
        tr.dataset.child, tr.querySelector('.calls').textContent, tr.querySelector('.errors').textContent,
        tr.querySelector('.p50').textContent, tr.querySelector('.p99').textContent])""")
    edges = {(t[0], t[1]): t[2:] for t in table}
    want = {("checkout-driver", "storefront"): ("2", "1"), ("storefront", "orders"): ("2", "1"),
            ("orders", "payments"): ("2", "1"), ("payments", "fraud"): ("2", "0"),
            ("orders", "notifications"): ("1", "0")}
    for edge, (calls, errs) in want.items():
        assert edges[edge][:2] == [calls, errs], (edge, edges[edge])
        assert edges[edge][2] and edges[edge][3], "p50 and p99 shown"
    assert edges[("payments", "fraud")][3].endswith(" s"), "fraud's slowest call took 2 s"
    for parent, child in want:
        assert page.locator("#service-map g.edge[data-parent='%s'][data-child='%s']" % (parent, child)).count() == 1
    for name in ("checkout-driver", "storefront", "orders", "payments", "fraud", "notifications"):
        assert page.locator("#service-map g.node[data-service='%s'] text" % name).text_content() == name
    label = page.locator("#service-map g.edge[data-parent='orders'][data-child='payments'] .edge-label")
    assert "2 calls" in label.text_content() and "1 error" in label.text_content()


def test_list_filters(viewer, checkout, page):
    slow, ok = checkout
    both = {slow["trace_id"], ok["trace_id"]}

    def shown() -> set:
        page.wait_for_timeout(250)
        return set(page.eval_on_selector_all("#traces tbody tr", "trs => trs.map(tr => tr.dataset.traceId)"))

    def settle(predicate) -> set:
        for _ in range(40):
            got = shown()
            if predicate(got):
                return got
        return got

    page.goto(viewer.ui + "/?service=fraud")
    assert settle(lambda s: s == both) == both
    page.check("#f-errors")
    assert settle(lambda s: s == {slow["trace_id"]}) == {slow["trace_id"]}
    assert "errors=1" in page.url
    page.uncheck("#f-errors")
    page.fill("#f-attr", "checkout.number=1")
    page.click("button[type=submit]")
    assert settle(lambda s: s == {ok["trace_id"]}) == {ok["trace_id"]}
    page.fill("#f-attr", "")
    page.fill("#f-min", "1500")
    page.click("button[type=submit]")
    assert settle(lambda s: s == {slow["trace_id"]}) == {slow["trace_id"]}
    page.fill("#f-min", "")
    page.fill("#f-name", "POST /score")
    page.fill("#f-trace", ok["trace_id"].upper())
    page.click("button[type=submit]")
    assert settle(lambda s: s == {ok["trace_id"]}) == {ok["trace_id"]}
    page.click("#f-clear")
    page.fill("#f-from", "2099-01-01T00:00:00")
    page.click("button[type=submit]")
    assert settle(lambda s: s == set()) == set()
    page.fill("#f-from", "")
    page.fill("#f-to", "2099-01-01T00:00:00")
    page.click("button[type=submit]")
    assert settle(lambda s: both <= s) >= both


# -- the marks, on a trace built by hand ----------------------------------------------------------------


def test_critical_path_and_slowest_hop_definitions(viewer, page):
    """front 0-100 ms: A 0-30 and B 10-90 overlap, C 92-98. The path is C, then B (A overlaps B's start).
    B (service back, 80 ms, its db child inside it) is the slowest hop; C (cache) is a hop of 6 ms
    with a link to another trace."""
    trace_id, linked_trace = secrets.token_hex(16), secrets.token_hex(16)
    t0 = now_ns() - 5 * 10**9
    ms = 10**6
    spans = [
        span(trace_id, sid(1), "GET /front", "front", t0, 100, kind=2),
        span(trace_id, sid(2), "A local work", "front", t0, 30, parent=sid(1), kind=1),
        span(trace_id, sid(3), "B call back", "back", t0 + 10 * ms, 80, parent=sid(1), kind=2),
        span(trace_id, sid(4), "B db query", "back", t0 + 20 * ms, 50, parent=sid(3), kind=3),
        span(trace_id, sid(5), "C cache get", "cache", t0 + 92 * ms, 6, parent=sid(1), kind=2,
             links=[(linked_trace, sid(9))]),
    ]
    status, _ = viewer.post(request(spans).SerializeToString())
    assert status == 200
    viewer.wait_trace(trace_id, spans=5)
    page.goto(viewer.ui + "/trace/" + trace_id)
    page.wait_for_selector(".wf-row.slowest-hop", timeout=WAIT_MS)
    found = {r["name"]: r for r in rows(page)}
    critical = {name for name, r in found.items() if "critical" in r["classes"]}
    assert critical == {"GET /front", "B call back", "B db query", "C cache get"}
    assert [name for name, r in found.items() if "slowest-hop" in r["classes"]] == ["B call back"]
    assert "front → back" in page.locator("#hop-summary").inner_text()
    # C's detail panel links to the trace its link points at
    page.locator(".wf-row:has(.name:text-is('C cache get'))").click()
    link = page.locator("#detail ul.links li a")
    assert link.inner_text() == linked_trace and link.get_attribute("href") == "/trace/" + linked_trace
    assert sid(9) in page.locator("#detail ul.links li").inner_text()


# -- hostile text and a parent that never arrives -------------------------------------------------------

HOSTILE_PROGRAM = """
import sys
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

trace_id, missing_parent = int(sys.argv[1], 16), int(sys.argv[2], 16)
NAME, VALUE, EVENT = sys.argv[3:6]
tracer = trace.get_tracer("hostile")
parent = NonRecordingSpan(SpanContext(trace_id, missing_parent, is_remote=True, trace_flags=TraceFlags(1)))
with tracer.start_as_current_span(NAME, context=set_span_in_context(parent),
                                  attributes={"payload": VALUE, VALUE: NAME}) as root:
    root.add_event(EVENT, {"payload": NAME})
    with tracer.start_as_current_span(VALUE):
        pass
    try:
        raise ValueError(NAME)
    except ValueError as exc:
        root.record_exception(exc)
"""


def test_hostile_text_is_shown_as_text_and_a_missing_parent_is_flagged(viewer, page, tmp_path):
    trace_id, missing_parent = secrets.token_hex(16), secrets.token_hex(8)
    script = write_script(tmp_path, HOSTILE_PROGRAM)
    proc = subprocess.run([TRACE_RUN, python(), script, trace_id, missing_parent, HOSTILE_NAME, HOSTILE_VALUE,
                           HOSTILE_EVENT], env=traced_env(viewer, OTEL_SERVICE_NAME=HOSTILE_SERVICE),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    viewer.wait_trace(trace_id, spans=2)

    def untouched():
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("img").count() == 0
        assert page.locator("main svg, main script, #waterfall b, #traces b").count() == 0

    page.goto(viewer.ui + "/?trace_id=" + trace_id)
    row = page.locator("#traces tbody tr[data-trace-id='%s']" % trace_id)
    row.wait_for(timeout=WAIT_MS)
    assert row.locator(".name").inner_text() == HOSTILE_NAME
    assert row.locator(".svc").inner_text() == HOSTILE_SERVICE
    assert row.locator(".flag").inner_text() == "1 missing parent"
    untouched()

    row.locator("a.root").click()
    page.wait_for_selector(".wf-row.missing-parent", timeout=WAIT_MS)
    found = rows(page)
    assert [(r["name"], r["depth"], r["service"]) for r in found] == [
        (HOSTILE_NAME, 0, HOSTILE_SERVICE), (HOSTILE_VALUE, 1, HOSTILE_SERVICE)]
    assert "missing-parent" in found[0]["classes"] and "missing-parent" not in found[1]["classes"]
    flag = page.locator(".wf-row.missing-parent .missing-flag")
    assert flag.inner_text().lower() == "parent missing" and missing_parent in flag.get_attribute("title")
    assert page.locator("#summary h1").inner_text() == HOSTILE_SERVICE + " " + HOSTILE_NAME
    untouched()

    page.locator(".wf-row.missing-parent").click()
    detail = page.locator("#detail")
    detail.wait_for(state="visible")
    attrs = dict(detail.locator("table.attributes tr").evaluate_all(
        "trs => trs.map(tr => [tr.children[0].textContent, tr.children[1].textContent])"))
    assert attrs == {"payload": HOSTILE_VALUE, HOSTILE_VALUE: HOSTILE_NAME}
    assert missing_parent + " (never arrived)" in detail.inner_text()
    events = detail.locator("li.event")
    assert events.nth(0).locator("strong").inner_text() == HOSTILE_EVENT
    assert HOSTILE_NAME in detail.locator("li.event.exception .exc").inner_text()
    assert HOSTILE_NAME in detail.locator("pre.stack").inner_text()
    untouched()


def test_ci_installs_chromium_when_it_is_missing():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        script = f.read()
    check = script.find("if [ ! -x %s ]" % CHROMIUM)
    assert check != -1, ".ci/run does not check for %s" % CHROMIUM
    block = script[check:script.index("\nfi\n", check)]
    assert "apt-get install -y -q chromium" in block and "apt-get update" in block and "exit 1" in block
    commands = [ln for ln in script.splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in commands if "playwright install" in ln], "the browser is Debian's, never downloaded"
    assert check < script.index("-m pytest"), "chromium must be there before the tests run"


def test_trace_page_shows_parts_that_arrive_later(viewer, page):
    """A process that flushes at exit sends its part after the page was opened: it appears, no reload."""
    trace_id = secrets.token_hex(16)
    t0 = now_ns() - 2 * 10**9
    first = [span(trace_id, sid(21), "GET /early", "early", t0, 50, kind=2),
             span(trace_id, sid(22), "GET", "early", t0 + 10**6, 40, parent=sid(21), kind=3)]
    assert viewer.post(request(first).SerializeToString())[0] == 200
    viewer.wait_trace(trace_id, spans=2)
    page.goto(viewer.ui + "/trace/" + trace_id)
    expect(page.locator(".wf-row[data-span-id]")).to_have_count(2, timeout=WAIT_MS)
    page.evaluate("window.__samePage = 'yes'")
    late = [span(trace_id, sid(23), "GET /late", "late", t0 + 2 * 10**6, 30, parent=sid(22), kind=2)]
    assert viewer.post(request(late).SerializeToString())[0] == 200
    expect(page.locator(".wf-row[data-span-id]")).to_have_count(3, timeout=WAIT_MS)
    assert page.evaluate("window.__samePage") == "yes"
    found = rows(page)
    assert [(r["service"], r["name"], r["depth"]) for r in found] == [
        ("early", "GET /early", 0), ("early", "GET", 1), ("late", "GET /late", 2)]
    assert [r["name"] for r in found if "slowest-hop" in r["classes"]] == ["GET /late"]
