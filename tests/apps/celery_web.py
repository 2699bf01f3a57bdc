"""A Flask app that enqueues a Celery task per request: `celery_web.py PORT`."""

import sys

from celery_app import query_pg
from flask import Flask

app = Flask(__name__)


@app.route("/enqueue/<int:n>")
def enqueue(n):
    return query_pg.delay(n).id


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
