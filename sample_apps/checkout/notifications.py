"""notifications: a Celery worker (RabbitMQ broker) that sends the receipt of a paid order.

    celery -A notifications worker -Q <CHECKOUT_PREFIX>.receipts

"Sending" records the receipt in PostgreSQL. The queue and its exchange
delete themselves when unused, so runs with their own prefix leave nothing
behind in RabbitMQ.
"""

from __future__ import annotations

import logging
import os

import psycopg
import service
from celery import Celery, signals
from kombu import Exchange, Queue

app = Celery("notifications", broker=service.BROKER_URL)
app.conf.update(
    task_default_queue=service.RECEIPTS_QUEUE,
    task_queues=[Queue(service.RECEIPTS_QUEUE, Exchange(service.RECEIPTS_QUEUE, durable=False, auto_delete=True),
                       routing_key=service.RECEIPTS_QUEUE, durable=False, auto_delete=True, expires=300)],
    task_ignore_result=True,
    worker_hijack_root_logger=False,  # keep the root logging setup (and its trace ids)
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)
log = logging.getLogger("notifications")

SELECT = "SELECT amount FROM %s WHERE id = %%s" % service.ORDERS_TABLE
INSERT = "INSERT INTO %s (order_id, email) VALUES (%%s, %%s) ON CONFLICT DO NOTHING" % service.RECEIPTS_TABLE


@app.task(name="notifications.send_receipt")
def send_receipt(order_id: int, email: str) -> None:
    with psycopg.connect(service.PG_DSN) as conn:
        amount = conn.execute(SELECT, (order_id,)).fetchone()[0]
        conn.execute(INSERT, (order_id, email))
    log.info("receipt for order %s (%.2f) sent to %s", order_id, amount, email)


@signals.worker_ready.connect
def _ready(**kwargs) -> None:
    """Tell run.py that the worker consumes (CHECKOUT_READY_FILE)."""
    path = os.environ.get("CHECKOUT_READY_FILE")
    if path:
        with open(path, "w") as f:
            f.write("ready")


@signals.setup_logging.connect
def _logging(**kwargs) -> None:
    service.setup_logging()
