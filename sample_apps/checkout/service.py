"""What every checkout service shares: its settings and how it serves.

Nothing here knows about tracing: `trace-run` adds that from outside. The
settings come from the environment so that run.py (and the tests) can point
the services at other databases and keep parallel runs apart (CHECKOUT_PREFIX
names the tables, Redis keys and the receipts queue).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys

PG_DSN = os.environ.get("CHECKOUT_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CHECKOUT_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("CHECKOUT_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")

PREFIX = os.environ.get("CHECKOUT_PREFIX", "checkout")
if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", PREFIX):
    sys.exit("CHECKOUT_PREFIX must be a lower-case SQL identifier, not %r" % PREFIX)
ORDERS_TABLE = PREFIX + "_orders"
RECEIPTS_TABLE = PREFIX + "_receipts"
RECEIPTS_QUEUE = PREFIX + ".receipts"

# Where the next hop listens (run.py fills these in).
ORDERS_URL = os.environ.get("CHECKOUT_ORDERS_URL", "http://127.0.0.1:8002")
PAYMENTS_URL = os.environ.get("CHECKOUT_PAYMENTS_URL", "http://127.0.0.1:8003")
FRAUD_URL = os.environ.get("CHECKOUT_FRAUD_URL", "http://127.0.0.1:8004")

# How long payments waits for the fraud check, and how long a slow fraud query takes.
PAYMENTS_FRAUD_DEADLINE = float(os.environ.get("CHECKOUT_PAYMENTS_FRAUD_DEADLINE", "1.0"))
FRAUD_SLOW_SECONDS = float(os.environ.get("CHECKOUT_FRAUD_SLOW_SECONDS", "2.0"))

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {orders} (
        id serial PRIMARY KEY,
        user_id text NOT NULL,
        email text NOT NULL,
        amount numeric(10, 2) NOT NULL,
        status text NOT NULL,
        payment_id text,
        created_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS {orders}_user ON {orders} (user_id)",
    """CREATE TABLE IF NOT EXISTS {receipts} (
        order_id integer PRIMARY KEY,
        email text NOT NULL,
        sent_at timestamptz NOT NULL DEFAULT now())""",
)


def schema() -> list:
    """The CREATE statements for this prefix (run.py runs them before starting anything)."""
    return [s.format(orders=ORDERS_TABLE, receipts=RECEIPTS_TABLE) for s in SCHEMA]


def setup_logging() -> None:
    """Plain logging; with OTEL_PYTHON_LOG_CORRELATION=true trace-run adds the trace ids to the format."""
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log: the spans say it better


def serve(app, default_port: int) -> None:
    """Serve `app` with werkzeug's threaded server until SIGTERM or Ctrl-C.

    run.py hands over an already listening socket (CHECKOUT_LISTEN_FD), so
    that every service gets a free port without a race and the driver knows
    the port before the service has started. On SIGTERM the server stops
    accepting and waits for the requests in flight, so their spans end.
    """
    from werkzeug.serving import make_server

    fd = os.environ.get("CHECKOUT_LISTEN_FD")
    port = int(os.environ.get("CHECKOUT_PORT", default_port))
    server = make_server("127.0.0.1", port, app, threaded=True, fd=int(fd) if fd else None)
    server.daemon_threads = False  # server_close() joins the request threads
    signal.signal(signal.SIGTERM, _stop)
    logging.getLogger(app.name).info("%s listening on http://127.0.0.1:%d", app.name, server.port)
    ready = os.environ.get("CHECKOUT_READY_FILE")
    if ready:
        with open(ready, "w") as f:
            f.write(str(server.port))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


def _stop(signum, frame) -> None:
    raise SystemExit(0)
