"""storefront: the entry point. POST /checkout places the order through `orders`.

A plain Flask app with no tracing code: run it under `trace-run`.
"""

from __future__ import annotations

import logging

import requests
import service
from flask import Flask, jsonify, request

app = Flask("storefront")
log = logging.getLogger("storefront")


@app.post("/checkout")
def checkout():
    cart = request.get_json(force=True)
    amount = round(sum(item["price"] * item.get("quantity", 1) for item in cart["items"]), 2)
    log.info("checkout for user %s: %d items, %.2f", cart["user_id"], len(cart["items"]), amount)
    order = {
        "user_id": cart["user_id"],
        "email": cart["email"],
        "amount": amount,
        "card_number": cart["card_number"],
        "simulate_slow_fraud_check": bool(cart.get("simulate_slow_fraud_check")),
    }
    resp = requests.post(service.ORDERS_URL + "/orders", json=order, timeout=30)
    body = resp.json()
    if resp.status_code != 201:
        log.error("checkout for user %s failed: %s", cart["user_id"], body.get("error"))
        return jsonify(error=body.get("error", "order failed"), order_id=body.get("order_id")), 502
    log.info("checkout for user %s done: order %s", cart["user_id"], body["order_id"])
    return jsonify(order_id=body["order_id"], status=body["status"])


if __name__ == "__main__":
    service.setup_logging()
    service.serve(app, 8001)
