"""The W3C Trace Context test service (run under trace-run).

    python w3c_service.py PORT

POST /test with a JSON array of {"url": ..., "arguments": [...]}: for each
element, POST `arguments` as JSON to `url`. This is the contract of the W3C's
own harness (w3c/trace-context, test/README.md); the harness, or a test
standing in for it, then reads the trace context this service propagated.
"""

import sys

import requests
from flask import Flask, request

app = Flask(__name__)


@app.route("/test", methods=["POST"])
def test():
    with requests.Session() as session:
        for action in request.get_json(force=True, silent=True) or []:
            session.post(action["url"], json=action.get("arguments") or [], timeout=5)
    return "ok"


if __name__ == "__main__":
    app.run("127.0.0.1", int(sys.argv[1]), threaded=True)
