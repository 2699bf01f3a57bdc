"""orders: writes the order to PostgreSQL, charges it through `payments` and,
once paid, queues the receipt for the `notifications` worker.
"""

from __future__ import annotations

import logging

import psycopg
import requests
import service
from flask import Flask, jsonify, request
from notifications import send_receipt

app = Flask("orders")
log = logging.getLogger("orders")

INSERT = "INSERT INTO %s (user_id, email, amount, status) VALUES (%%s, %%s, %%s, 'pending') RETURNING id" % (
    service.ORDERS_TABLE)
UPDATE = "UPDATE %s SET status = %%s, payment_id = %%s WHERE id = %%s" % service.ORDERS_TABLE


@app.post("/orders")
def create_order():
    order = request.get_json(force=True)
    with psycopg.connect(service.PG_DSN) as conn:
        order_id = conn.execute(INSERT, (order["user_id"], order["email"], order["amount"])).fetchone()[0]
    log.info("order %s created for user %s", order_id, order["user_id"])

    charge = {
        "order_id": order_id,
        "user_id": order["user_id"],
        "amount": order["amount"],
        "card_number": order["card_number"],
        "simulate_slow_fraud_check": order.get("simulate_slow_fraud_check", False),
    }
    resp = requests.post(service.PAYMENTS_URL + "/charge", json=charge, timeout=30)
    payment = resp.json()
    paid = resp.status_code == 200
    with psycopg.connect(service.PG_DSN) as conn:
        conn.execute(UPDATE, ("paid" if paid else "failed", payment.get("payment_id"), order_id))
    if not paid:
        log.error("order %s failed: payment error: %s", order_id, payment.get("error"))
        return jsonify(order_id=order_id, status="failed", error=payment.get("error", "payment failed")), 502

    try:
        send_receipt.delay(order_id, order["email"])
    except Exception:  # the order is paid: a lost receipt must not fail it
        log.exception("order %s: could not queue the receipt", order_id)
    log.info("order %s paid (%s)", order_id, payment["payment_id"])
    return jsonify(order_id=order_id, status="paid"), 201


if __name__ == "__main__":
    service.setup_logging()
    service.serve(app, 8002)
