"""payments: tokenizes the card (tokens cached in Redis), asks `fraud` for a
score within a deadline, and charges. A fraud check slower than the deadline
fails the payment with "Payment timeout".
"""

from __future__ import annotations

import hashlib
import logging
import secrets

import redis
import requests
import service
from flask import Flask, jsonify, request

app = Flask("payments")
log = logging.getLogger("payments")
cache = redis.Redis.from_url(service.REDIS_URL)
MAX_RISK = 10  # failed orders in ten minutes


def card_token(card_number: str) -> str:
    """A stable token for a card; the cache key is a hash, never the number itself."""
    key = "%s:card-token:%s" % (service.PREFIX, hashlib.sha256(card_number.encode()).hexdigest())
    token = cache.get(key)
    if token is None:
        token = ("tok_" + secrets.token_hex(8)).encode()
        cache.set(key, token, ex=3600)
    return token.decode()


@app.post("/charge")
def charge():
    payment = request.get_json(force=True)
    token = card_token(payment["card_number"])
    check = {"user_id": payment["user_id"], "simulate_slow": payment.get("simulate_slow_fraud_check", False)}
    try:
        resp = requests.post(service.FRAUD_URL + "/score", json=check, timeout=service.PAYMENTS_FRAUD_DEADLINE)
    except requests.Timeout:
        log.error("order %s: Payment timeout: no fraud score within %.1f s",
                  payment["order_id"], service.PAYMENTS_FRAUD_DEADLINE)
        return jsonify(error="Payment timeout"), 504
    risk = resp.json()["risk"]
    if risk > MAX_RISK:
        log.warning("order %s declined: risk %s", payment["order_id"], risk)
        return jsonify(error="Payment declined"), 402
    payment_id = "pay_" + secrets.token_hex(6)
    log.info("order %s charged %.2f to card %s as %s", payment["order_id"], payment["amount"], token, payment_id)
    return jsonify(payment_id=payment_id)


if __name__ == "__main__":
    service.setup_logging()
    service.serve(app, 8003)
