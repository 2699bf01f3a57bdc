"""The checkout sample end to end: `python sample_apps/checkout/run.py --checkouts 3` with
five services under trace-run exporting to the OTLP receiver; every checkout is one
readable trace and the slow one tells the "Payment timeout" story.

The scenario runs once per module (about 10 s); each test checks one part of the story.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from support import AMQP_URL, PG_DSN, REDIS_URL, clean_env, python
from support.otlp_receiver import Receiver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "sample_apps", "checkout", "run.py")

WEB = ("storefront", "orders", "payments", "fraud")
ALL = WEB + ("notifications",)
DRIVER = "checkout-driver"  # run.py traces itself: one root span per checkout


def _driver_cards() -> tuple:
    """The card numbers run.py sends (its CARDS constant)."""
    with open(RUN_PY) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CARDS":
            return ast.literal_eval(node.value)
    raise AssertionError("no CARDS in run.py")


CARDS = _driver_cards()
DSN_PASSWORD = "Sup3r-Secret-DSN-pw"  # trust auth ignores it; it must never be exported
SLOW_SECONDS = 2.0
DEADLINE = 0.8


def _with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.hostname + (":%d" % parts.port if parts.port else "")
    return urlunsplit(parts._replace(netloc="%s:%s@%s" % (user, password, host)))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Run the sample once against an OTLP receiver; yield (results, receiver, run output)."""
    receiver = Receiver().start()
    prefix = "checkout_t%s" % uuid.uuid4().hex[:10]
    out = tmp_path_factory.mktemp("checkout") / "results.json"
    env = clean_env(
        **receiver.env(OTEL_BSP_SCHEDULE_DELAY=100),
        CHECKOUT_PREFIX=prefix,
        CHECKOUT_PG_DSN=_with_password(PG_DSN, DSN_PASSWORD),
        CHECKOUT_REDIS_URL=REDIS_URL,
        CHECKOUT_BROKER_URL=AMQP_URL,
        CHECKOUT_FRAUD_SLOW_SECONDS=SLOW_SECONDS,
        CHECKOUT_PAYMENTS_FRAUD_DEADLINE=DEADLINE,
    )
    try:
        proc = subprocess.run([python(), RUN_PY, "--checkouts", "3", "--json", str(out)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, "run.py exit %d\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
        results = json.loads(out.read_text())
        # The services flush at exit; wait only for stragglers of the last export.
        receiver.wait_for(lambda spans: _complete(spans, results), timeout=15)
        yield results, receiver, proc
    finally:
        receiver.stop()
        _cleanup(prefix)


def _complete(spans: list, results: dict) -> bool:
    services: dict = {}
    for s in spans:
        services.setdefault(s.trace_id, set()).add(s.service)
    return all(services.get(c["trace_id"], set()) >= _expected_services(c) for c in results["checkouts"])


def _expected_services(checkout: dict) -> set:
    return (set(ALL) if checkout["ok"] else set(WEB)) | {DRIVER}


def _cleanup(prefix: str) -> None:
    import psycopg
    import redis

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS %s_orders, %s_receipts" % (prefix, prefix))
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter("%s:*" % prefix))
    if keys:
        r.delete(*keys)


def _trace(receiver, tid: str) -> list:
    return receiver.traces().get(tid, [])


def _one(spans: list, **where):
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, "want one span with %s, got %s in %s" % (where, found, spans)
    return found[0]


def _children(trace: list, parent) -> list:
    return [s for s in trace if s.parent_id == parent.span_id]


def _checkouts(scenario, ok: bool) -> list:
    return [c for c in scenario[0]["checkouts"] if c["ok"] is ok]


# -- the driver -------------------------------------------------------------------------------


def test_driver_reports_each_checkout(scenario):
    results, _, proc = scenario
    checkouts = results["checkouts"]
    assert [c["ok"] for c in checkouts] == [True, False, True]
    assert [c["slow"] for c in checkouts] == [False, True, False]
    assert checkouts[1]["error"] == "Payment timeout"
    for c in checkouts:
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("checkout %d/3  trace %s  " % (
            c["checkout"], c["trace_id"]))]
        assert len(line) == 1, proc.stdout
        assert ("ok      order %s" % c["order_id"] if c["ok"] else "FAILED  Payment timeout") in line[0]


def _still_running(pids: dict, prefix: str) -> list:
    """Which of the services' processes still exist (a pid reused by another program does not count)."""
    alive = []
    for name, pid in pids.items():
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                if ("CHECKOUT_PREFIX=%s" % prefix).encode() in f.read():
                    alive.append(name)
        except OSError:
            pass  # gone
    return alive


def test_nothing_left_running(scenario):
    results = scenario[0]
    assert set(results["pids"]) == set(ALL)
    assert _still_running(results["pids"], results["prefix"]) == []


# -- one trace per checkout ---------------------------------------------------------------------


def test_one_trace_id_across_every_service(scenario):
    results, receiver, _ = scenario
    traces = receiver.traces()
    for c in results["checkouts"]:
        services = {s.service for s in traces.get(c["trace_id"], [])}
        assert services == _expected_services(c), (c, services)
    stray = [s for s in receiver.spans if s.trace_id not in {c["trace_id"] for c in results["checkouts"]}]
    assert stray == [], "spans outside the checkouts' traces (broken propagation or chatter)"


def test_each_checkout_is_one_tree_under_the_drivers_root(scenario):
    """Exactly one root per checkout (the driver's span) and no span whose parent is missing."""
    results, receiver, _ = scenario
    for c in results["checkouts"]:
        trace = _trace(receiver, c["trace_id"])
        ids = {s.span_id for s in trace}
        assert len(ids) == len(trace)
        roots = [s for s in trace if not s.parent_id]
        assert len(roots) == 1, roots
        root = roots[0]
        assert (root.service, root.name, root.span_id) == (DRIVER, "checkout", c["root_span_id"])
        assert root.attributes["checkout.number"] == c["checkout"]
        assert root.status == ("UNSET" if c["ok"] else "ERROR")
        missing = [s for s in trace if s.parent_id and s.parent_id not in ids]
        assert missing == [], "spans whose parent never arrived: %s" % missing
        storefront = _one(trace, service="storefront", kind="SERVER")
        call = [s for s in trace if s.span_id == storefront.parent_id][0]
        assert (call.service, call.kind, call.parent_id) == (DRIVER, "CLIENT", root.span_id)


# -- the slow checkout ---------------------------------------------------------------------------


def test_slow_checkout_shows_the_fraud_query_and_the_payment_timeout(scenario):
    _, receiver, _ = scenario
    (c,) = _checkouts(scenario, ok=False)
    trace = _trace(receiver, c["trace_id"])

    query = _one(trace, service="fraud", kind="CLIENT")
    assert query.attributes["db.system.name"] == "postgresql"
    assert "pg_sleep" in query.attributes["db.query.text"]
    assert query.duration_ms >= SLOW_SECONDS * 1000 * 0.95
    by_length = sorted(trace, key=lambda s: s.duration_ms, reverse=True)
    fraud_server = _one(trace, service="fraud", kind="SERVER")
    assert by_length[:2] == [fraud_server, query], "the fraud query is the long span: %s" % by_length[:3]
    assert query.parent_id == fraud_server.span_id

    payments = _one(trace, service="payments", kind="SERVER")
    assert payments.status == "ERROR"
    assert payments.attributes["http.response.status_code"] == 504
    call = _one(trace, service="payments", kind="CLIENT", name="POST")
    assert call.status == "ERROR" and "Timeout" in call.attributes["error.type"], call.attributes
    assert DEADLINE * 1000 * 0.95 <= call.duration_ms < SLOW_SECONDS * 1000
    assert fraud_server.parent_id == call.span_id
    assert any(name == "exception" and "Timeout" in attrs.get("exception.type", "") for name, attrs in call.events)

    for service, code in (("orders", 502), ("storefront", 502)):
        server = _one(trace, service=service, kind="SERVER")
        assert server.status == "ERROR" and server.attributes["http.response.status_code"] == code
    assert not [s for s in trace if s.kind in ("PRODUCER", "CONSUMER")], "no receipt for a failed order"


def test_successful_checkouts_have_no_errors(scenario):
    _, receiver, _ = scenario
    for c in _checkouts(scenario, ok=True):
        trace = _trace(receiver, c["trace_id"])
        assert [s for s in trace if s.status == "ERROR"] == []


# -- HTTP, database, Redis and messaging spans ---------------------------------------------------


def test_http_chain_storefront_orders_payments_fraud(scenario):
    results, receiver, _ = scenario
    urls = results["urls"]
    hops = (("storefront", "/checkout", "orders", "/orders"), ("orders", "/orders", "payments", "/charge"),
            ("payments", "/charge", "fraud", "/score"))
    for c in results["checkouts"]:
        trace = _trace(receiver, c["trace_id"])
        for caller, route, callee, callee_route in hops:
            server = _one(trace, service=caller, kind="SERVER")
            assert server.name == "POST " + route
            assert server.attributes["http.request.method"] == "POST"
            assert server.attributes["http.route"] == route
            assert server.attributes["url.path"] == route
            client = _one(trace, service=caller, kind="CLIENT", name="POST")
            assert client.parent_id == server.span_id
            assert client.attributes["http.request.method"] == "POST"
            assert client.attributes["url.full"] == urls[callee] + callee_route
            port = int(urls[callee].rsplit(":", 1)[1])
            assert client.attributes["server.address"] == "127.0.0.1"
            assert client.attributes["server.port"] == port
            downstream = _one(trace, service=callee, kind="SERVER")
            assert downstream.parent_id == client.span_id
            if c["ok"]:
                assert client.attributes["http.response.status_code"] in (200, 201)
                assert downstream.attributes["http.response.status_code"] == client.attributes[
                    "http.response.status_code"]


def test_postgresql_spans(scenario):
    results, receiver, _ = scenario
    prefix = results["prefix"]
    dsn = urlsplit(PG_DSN)
    expected = {"db.system.name": "postgresql", "db.namespace": dsn.path.lstrip("/"),
                "server.address": dsn.hostname, "server.port": dsn.port or 5432}
    for c in results["checkouts"]:
        trace = _trace(receiver, c["trace_id"])
        want = {("orders", "INSERT", prefix + "_orders"), ("orders", "UPDATE", prefix + "_orders"),
                ("fraud", "SELECT", prefix + "_orders")}
        if c["ok"]:
            want |= {("notifications", "SELECT", prefix + "_orders"),
                     ("notifications", "INSERT", prefix + "_receipts")}
        db = [s for s in trace if s.attributes.get("db.system.name") == "postgresql"]
        got = {(s.service, s.attributes.get("db.operation.name"), s.attributes.get("db.collection.name")) for s in db}
        assert got == want
        for s in db:
            assert s.kind == "CLIENT"
            assert s.name == "%s %s" % (s.attributes["db.operation.name"], s.attributes["db.collection.name"])
            assert {k: s.attributes.get(k) for k in expected} == expected, s.attributes
            text = s.attributes["db.query.text"]
            assert text.startswith(s.attributes["db.operation.name"]) and "%s" in text  # bound parameters
            parent = [p for p in trace if p.span_id == s.parent_id][0]
            assert parent.service == s.service and parent.kind in ("SERVER", "CONSUMER")


def test_redis_spans_in_payments(scenario):
    results, receiver, _ = scenario
    redis_url = urlsplit(REDIS_URL)
    for c in results["checkouts"]:
        trace = _trace(receiver, c["trace_id"])
        spans = [s for s in trace if s.attributes.get("db.system.name") == "redis"]
        assert spans and {s.service for s in spans} == {"payments"}
        assert "GET" in {s.attributes.get("db.operation.name") for s in spans}
        payments = _one(trace, service="payments", kind="SERVER")
        for s in spans:
            assert s.kind == "CLIENT" and s.parent_id == payments.span_id
            op = s.attributes["db.operation.name"]
            assert s.name == op and op in ("GET", "SET")
            assert s.attributes["server.address"] == redis_url.hostname
            assert s.attributes["server.port"] == (redis_url.port or 6379)
            assert s.attributes["db.query.text"].startswith(op + " ?"), s.attributes  # key sanitized


def test_messaging_spans_orders_to_notifications(scenario):
    results, receiver, _ = scenario
    queue = results["queue"]
    for c in _checkouts(scenario, ok=True):
        trace = _trace(receiver, c["trace_id"])
        producer = _one(trace, kind="PRODUCER")
        consumer = _one(trace, kind="CONSUMER")
        assert producer.service == "orders" and consumer.service == "notifications"
        orders = _one(trace, service="orders", kind="SERVER")
        assert producer.parent_id == orders.span_id
        assert consumer.parent_id == producer.span_id
        for span, operation in ((producer, "send"), (consumer, "process")):
            assert span.attributes.get("messaging.system"), span.attributes
            assert span.attributes["messaging.destination.name"] == queue
            assert span.attributes["messaging.operation.type"] == operation
            assert "send_receipt" in span.name
        receipt_db = [s for s in trace if s.service == "notifications" and s.kind == "CLIENT"]
        assert receipt_db and all(s.parent_id == consumer.span_id for s in receipt_db)


# -- secrets and logs ------------------------------------------------------------------------------


def test_no_card_number_or_dsn_password_exported(scenario):
    results, receiver, _ = scenario
    raw = receiver.raw_bytes()
    assert raw and len(receiver.spans) >= 40
    for card in CARDS:
        assert card.encode() not in raw
        assert ("%s %s %s %s" % (card[:4], card[4:8], card[8:12], card[12:])).encode() not in raw
    assert DSN_PASSWORD.encode() not in raw


def test_every_service_logs_the_trace_id(scenario):
    results = scenario[0]
    logs = {}
    for name in ALL:
        with open(os.path.join(results["logdir"], name + ".log"), errors="replace") as f:
            logs[name] = f.read()
    for c in results["checkouts"]:
        for name in _expected_services(c) - {DRIVER}:
            assert "trace_id=%s" % c["trace_id"] in logs[name], "%s has no log line for %s" % (name, c)
    failed = _checkouts(scenario, ok=False)[0]
    lines = [ln for name in WEB for ln in logs[name].splitlines() if failed["trace_id"] in ln]
    assert any("payments" in ln and "Payment timeout" in ln for ln in lines), lines
    for log in logs.values():
        assert DSN_PASSWORD not in log and not any(card in log for card in CARDS)


# -- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_stops_every_service(tmp_path):
    """SIGINT in the middle of the checkouts: run.py stops the five services and exits 130."""
    import signal

    prefix = "checkout_t%s" % uuid.uuid4().hex[:10]
    out = tmp_path / "results.json"
    env = clean_env(OTEL_TRACES_EXPORTER="none", CHECKOUT_PREFIX=prefix, CHECKOUT_PG_DSN=PG_DSN,
                    CHECKOUT_REDIS_URL=REDIS_URL, CHECKOUT_BROKER_URL=AMQP_URL)
    proc = subprocess.Popen([python(), RUN_PY, "--checkouts", "100000", "--json", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("checkout 3/"):
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130, rest
        assert "interrupted, stopping the services" in rest and "every service stopped" in rest
        pids = json.loads(out.read_text())["pids"]
        assert set(pids) == set(ALL)
        assert _still_running(pids, prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _cleanup(prefix)


def test_a_stop_signal_lost_in_a_finalizer_still_stops_the_drive():
    """Python only prints an exception raised while a finalizer runs (urllib3 closes each checkout's
    pool in one): the handler's flag stops the drive before the next checkout all the same."""
    code = ("import sys, signal, weakref; sys.argv = ['run.py']; sys.path.insert(0, %r)\n"
            "import run\n"
            "class Pool: pass\n"
            "def close(): signal.raise_signal(signal.SIGINT)  # the signal lands inside the finalizer\n"
            "pool = Pool(); weakref.finalize(pool, close)\n"
            "signal.signal(signal.SIGINT, run._stop)\n"
            "del pool\n"
            "print('finalizer done')\n"
            "try:\n"
            "    run.drive('http://127.0.0.1:9', 5, 0, [])\n"
            "except run.Stop:\n"
            "    print('stopped before the first checkout')\n") % os.path.dirname(RUN_PY)
    proc = subprocess.run([python(), "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert "Exception ignored in" in proc.stderr and "Stop" in proc.stderr, proc.stderr
    assert proc.stdout.splitlines() == ["finalizer done", "stopped before the first checkout"], proc.stdout
