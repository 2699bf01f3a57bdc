"""fraud: scores a user with one PostgreSQL query: their failed orders of the last ten minutes.

The query can be made slow on demand (`simulate_slow`): pg_sleep stands in
for what makes such queries slow in real life (a missing index, a lock wait).
"""

from __future__ import annotations

import logging

import psycopg
import service
from flask import Flask, jsonify, request

app = Flask("fraud")
log = logging.getLogger("fraud")

SCORE = ("SELECT count(*) FILTER (WHERE status = 'failed'), pg_sleep(%%s) FROM %s "
         "WHERE user_id = %%s AND created_at > now() - interval '10 minutes'" % service.ORDERS_TABLE)


@app.post("/score")
def score():
    check = request.get_json(force=True)
    delay = service.FRAUD_SLOW_SECONDS if check.get("simulate_slow") else 0.0
    with psycopg.connect(service.PG_DSN) as conn:
        failed = conn.execute(SCORE, (delay, check["user_id"])).fetchone()[0]
    log.info("user %s: risk %d", check["user_id"], failed)
    return jsonify(risk=failed)


if __name__ == "__main__":
    service.setup_logging()
    service.serve(app, 8004)
