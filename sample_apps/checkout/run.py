"""Run the checkout scenario: five services under trace-run, N checkouts, one of them slow.

    python sample_apps/checkout/run.py [--checkouts N] [--slow K] [--quiet] [--json FILE]

Prepares the schema, starts storefront, orders, payments, fraud (Flask) and
the notifications Celery worker, each under `trace-run` with its own
OTEL_SERVICE_NAME, drives the checkouts, prints each one's trace id and
outcome, and stops everything (also on Ctrl-C or an error).

The driver traces itself, like a browser with a tracing SDK: it starts
trace-run's agent in its own process (service `checkout-driver`) and makes one
root span per checkout, so each checkout is one trace with exactly one root,
the services' spans all under it, and the driver knows every trace id.

Every OTEL_* variable given to run.py is passed on to the services (for
example OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_TRACES_EXPORTER=console to see
each service's part of a trace as a tree). Log correlation is on unless
OTEL_PYTHON_LOG_CORRELATION says otherwise. Each service's output goes to a
log file in a temporary folder (printed at the end) and, unless --quiet, to
the terminal prefixed with the service name.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import service  # noqa: E402  (the services' own settings: prefix, DSNs)

WEB_SERVICES = ("storefront", "orders", "payments", "fraud")
WORKER = "notifications"
SERVICES = WEB_SERVICES + (WORKER,)
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CARDS = ("4111111111111111", "5555555555554444", "4242424242424242", "378282246310005")
DRIVER_SERVICE = "checkout-driver"


_stopping = threading.Event()  # a stop signal arrived
_output = threading.Lock()  # the driver's lines and the services' lines never mix mid-line


def say(text: str, stream=None) -> None:
    stream = stream or sys.stdout
    with _output:
        stream.write(text + "\n")
        stream.flush()


class Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP to run.py: stop the services and exit 130."""


def find_trace_run() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "trace-run")
    if os.path.exists(beside):
        return beside
    found = shutil.which("trace-run")
    if not found:
        sys.exit("run.py: trace-run not found next to %s nor on PATH; pip install trace-run" % sys.executable)
    return found


def trace_driver():
    """Start trace-run's agent in this process (as `trace-run python run.py` would) and return a tracer.

    The driver's spans go where the services' go (the same OTEL_* settings). Each service still
    gets its own OTEL_SERVICE_NAME (Service.start). None when trace_run cannot be imported here:
    the checkouts then carry a traceparent of the driver's making and have no root span.
    """
    os.environ["OTEL_SERVICE_NAME"] = DRIVER_SERVICE
    try:
        from trace_run.agent import boot
    except ImportError as exc:
        say("run.py: the driver runs untraced (cannot import trace_run: %s)" % exc, sys.stderr)
        return None
    boot.start()
    from opentelemetry import trace

    return trace.get_tracer("checkout-driver")


def untraced():
    """The driver's own bookkeeping queries (schema, waiting for receipts) belong to no checkout."""
    try:
        from opentelemetry.instrumentation.utils import suppress_instrumentation
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return suppress_instrumentation()


def prepare_schema() -> None:
    import psycopg

    try:
        with psycopg.connect(service.PG_DSN, autocommit=True, connect_timeout=10) as conn:
            for statement in service.schema():
                conn.execute(statement)
    except psycopg.Error as exc:
        sys.exit("run.py: cannot prepare the schema (CHECKOUT_PG_DSN): %s" % str(exc).strip())


class Service:
    """One service process: its listening socket (web services), log file and output pump."""

    def __init__(self, name: str, logdir: str, echo: bool):
        self.name = name
        self.log_path = os.path.join(logdir, name + ".log")
        self.ready_path = os.path.join(logdir, name + ".ready")
        self.echo = echo
        self.proc = None
        self.sock = None
        self.port = None
        self._pump = None
        if name != WORKER:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(64)
            self.port = self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def command(self, trace_run: str) -> list:
        if self.name == WORKER:
            return [trace_run, sys.executable, "-m", "celery", "-A", "notifications", "worker",
                    "--pool", "solo", "--queues", service.RECEIPTS_QUEUE, "--loglevel", "INFO",
                    "--hostname", "notifications-%s@%%h" % service.PREFIX,
                    "--without-gossip", "--without-mingle", "--without-heartbeat"]
        return [trace_run, sys.executable, os.path.join(HERE, self.name + ".py")]

    def start(self, trace_run: str, env: dict) -> None:
        env = dict(env, OTEL_SERVICE_NAME=self.name, CHECKOUT_READY_FILE=self.ready_path)
        pass_fds = ()
        if self.sock is not None:
            env["CHECKOUT_LISTEN_FD"] = str(self.sock.fileno())
            pass_fds = (self.sock.fileno(),)
        # A session of its own: Ctrl-C reaches run.py only, which then stops the services in order.
        self.proc = subprocess.Popen(
            self.command(trace_run), cwd=HERE, env=env, pass_fds=pass_fds, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._pump = threading.Thread(target=self._copy_output, name="pump-" + self.name, daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        prefix = ("%-13s| " % self.name).encode()
        with open(self.log_path, "ab") as log:
            for line in iter(self.proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                if self.echo:
                    with _output:
                        sys.stdout.buffer.write(prefix + line)
                        sys.stdout.buffer.flush()

    def ready(self) -> bool:
        return os.path.exists(self.ready_path)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError("%s exited with code %s; see %s:\n%s"
                               % (self.name, self.proc.returncode, self.log_path, tail(self.log_path)))

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say("run.py: %s did not stop in time, killing it" % self.name, sys.stderr)
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        if self._pump is not None:
            self._pump.join(5)

    def close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def start_all(services: dict, trace_run: str) -> None:
    env = dict(os.environ)
    env.setdefault("OTEL_PYTHON_LOG_CORRELATION", "true")
    env["PYTHONUNBUFFERED"] = "1"
    env["CHECKOUT_ORDERS_URL"] = services["orders"].url
    env["CHECKOUT_PAYMENTS_URL"] = services["payments"].url
    env["CHECKOUT_FRAUD_URL"] = services["fraud"].url
    for svc in services.values():
        svc.start(trace_run, env)
    for svc in services.values():
        svc.close_socket()  # the child holds its own copy
    deadline = time.monotonic() + READY_TIMEOUT
    waiting = list(services.values())
    while waiting:
        for svc in waiting:
            svc.check_alive()
        waiting = [svc for svc in waiting if not svc.ready()]
        if waiting and time.monotonic() > deadline:
            raise RuntimeError("not ready after %.0f s: %s\n%s" % (
                READY_TIMEOUT, ", ".join(s.name for s in waiting),
                "\n".join("--- %s:\n%s" % (s.log_path, tail(s.log_path, 10)) for s in waiting)))
        time.sleep(0.05)


def stop_all(services: dict) -> None:
    """SIGTERM to all (front to back), then wait; SIGKILL what is still there after STOP_TIMEOUT."""
    for svc in services.values():
        svc.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for svc in services.values():
        svc.wait(deadline)
        svc.close_socket()


def drive(storefront_url: str, checkouts: int, slow: int, results: list, tracer=None) -> None:
    """POST /checkout N times, each under one root span of the driver's; append one result per checkout."""
    import contextlib

    import requests  # noqa: F401  (imported now: its first import is not part of the first checkout)

    for i in range(1, checkouts + 1):
        if _stopping.is_set():  # the signal's exception was swallowed (it landed in a finalizer, see main)
            raise Stop()
        root = contextlib.nullcontext() if tracer is None else tracer.start_as_current_span(
            "checkout", attributes={"checkout.number": i, "checkout.slow_fraud_check": i == slow})
        with root as span:
            checkout(storefront_url, i, checkouts, slow, results, span)


def checkout(storefront_url: str, i: int, checkouts: int, slow: int, results: list, span) -> None:
    """One POST /checkout; `span` is the driver's root span of it (None when the driver is untraced)."""
    import requests

    headers = {}
    context = span.get_span_context() if span is not None else None
    if context is not None and context.is_valid:
        from opentelemetry import propagate

        trace_id, root_id = "%032x" % context.trace_id, "%016x" % context.span_id
        propagate.inject(headers)  # the requests instrumentation, when on, puts its CLIENT span's id here
    else:
        trace_id, root_id = secrets.token_hex(16), ""
        headers["traceparent"] = "00-%s-%s-01" % (trace_id, secrets.token_hex(8))
    cart = {
        "user_id": "user-%d" % (100 + i),
        "email": "customer%d@example.com" % i,
        "card_number": CARDS[(i - 1) % len(CARDS)],
        "items": [{"sku": "mug", "price": 12.5, "quantity": i}, {"sku": "tea", "price": 7.25}],
        "simulate_slow_fraud_check": i == slow,
    }
    started = time.monotonic()
    resp = requests.post(storefront_url + "/checkout", json=cart, timeout=60, headers=headers)
    elapsed = time.monotonic() - started
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text[:200]}
    ok = resp.status_code == 200
    result = {
        "checkout": i, "trace_id": trace_id, "root_span_id": root_id, "slow": i == slow,
        "ok": ok, "status": resp.status_code, "order_id": body.get("order_id"),
        "error": None if ok else body.get("error", "HTTP %d" % resp.status_code), "seconds": round(elapsed, 3),
    }
    results.append(result)
    if span is not None:
        span.set_attribute("checkout.outcome", "ok" if ok else "failed")
        if not ok:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, result["error"]))
    outcome = "ok      order %s" % result["order_id"] if ok else "FAILED  %s" % result["error"]
    say("checkout %d/%d  trace %s  %-32s %6.2f s" % (i, checkouts, trace_id, outcome, elapsed))


def wait_for_receipts(order_ids: list, timeout: float = 30.0) -> bool:
    """The worker sends receipts after the checkout answered: wait for them before stopping it."""
    import psycopg

    if not order_ids:
        return True
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM %s WHERE order_id = ANY(%%s)" % service.RECEIPTS_TABLE
    with psycopg.connect(service.PG_DSN, autocommit=True) as conn:
        while True:
            if conn.execute(query, (order_ids,)).fetchone()[0] >= len(order_ids):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _stop(signum, frame) -> None:
    # Python ignores (prints) an exception raised while a finalizer runs, and urllib3 closes each
    # checkout's pool in one: the flag stops the drive at the next checkout if this one is lost
    _stopping.set()
    raise Stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", type=int, default=3, help="how many checkouts to drive (default 3)")
    parser.add_argument("--slow", type=int, default=None,
                        help="which checkout gets the slow fraud check (default 2, or 1 if only one; 0: none)")
    parser.add_argument("--quiet", action="store_true", help="services' output only to their log files")
    parser.add_argument("--json", metavar="FILE", help="write the results (trace ids, outcomes) as JSON")
    args = parser.parse_args(argv)
    slow = args.slow if args.slow is not None else min(2, args.checkouts)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)

    trace_run = find_trace_run()
    tracer = trace_driver()
    with untraced():
        prepare_schema()
    logdir = tempfile.mkdtemp(prefix="checkout-")
    services = {}
    results = []
    code = 1
    try:
        for name in SERVICES:
            services[name] = Service(name, logdir, echo=not args.quiet)
        start_all(services, trace_run)
        say("run.py: all services ready: " + ", ".join(
            "%s %s" % (s.name, s.url if s.port else "(celery worker)") for s in services.values()))
        drive(services["storefront"].url, args.checkouts, slow, results, tracer)
        with untraced():
            receipts = wait_for_receipts([r["order_id"] for r in results if r["ok"]])
        if not receipts:
            say("run.py: not every receipt was sent in time; see %s" % services[WORKER].log_path, sys.stderr)
        as_expected = receipts and all(r["ok"] != r["slow"] for r in results) and all(
            r["error"] == "Payment timeout" for r in results if r["slow"])
        code = 0 if as_expected else 1  # 1: the scenario did not play as written
    except (KeyboardInterrupt, Stop):
        say("\nrun.py: interrupted, stopping the services", sys.stderr)
        code = 130
    except Exception as exc:
        say("run.py: %s" % exc, sys.stderr)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stop_all(services)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"logdir": logdir, "prefix": service.PREFIX, "queue": service.RECEIPTS_QUEUE,
                       "urls": {s.name: s.url for s in services.values() if s.port},
                       "pids": {s.name: s.proc.pid for s in services.values() if s.proc},
                       "checkouts": results}, f, indent=2)
    print("run.py: every service stopped; logs in %s/" % logdir)
    failed = [r for r in results if not r["ok"]]
    if failed:
        print("run.py: find the failed checkout in every service's log:  grep %s %s/*.log"
              % (failed[0]["trace_id"], logdir))
    return code


if __name__ == "__main__":
    sys.exit(main())
