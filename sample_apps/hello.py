"""The README quick start: a tiny Flask app with no tracing code at all.

It serves two requests to itself and exits, so that

    OTEL_TRACES_EXPORTER=console trace-run python sample_apps/hello.py

prints two traces, one per request, each in three parts with the same trace id
(the console exporter prints one tree per local root span, as that root ends):
the CLIENT span of main()'s call; the SERVER span of `/hello/<name>` with, under
it, the CLIENT span of its own call to `/greeting/<name>`; and that request's
SERVER span. Six trees in all; the two SERVER parts of a request each say
"continues remote parent" (without propagation they would start traces of their
own).
"""

from __future__ import annotations

import logging
import sys
import threading

import requests
from flask import Flask, jsonify
from werkzeug.serving import make_server

app = Flask(__name__)
base_url = ""  # set once the server is listening


@app.route("/hello/<name>")
def hello(name: str):
    # One hop over HTTP, to show a CLIENT span and context propagation.
    greeting = requests.get("%s/greeting/%s" % (base_url, name), timeout=5).json()["greeting"]
    return jsonify(message="%s, %s!" % (greeting, name))


@app.route("/greeting/<name>")
def greeting(name: str):
    return jsonify(greeting="Hello")


def main() -> None:
    global base_url
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines in the demo output
    server = make_server("127.0.0.1", 0, app, threaded=True)
    base_url = "http://127.0.0.1:%d" % server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for name in ("world", "trace-run"):
            message = requests.get("%s/hello/%s" % (base_url, name), timeout=5).json()["message"]
            sys.stdout.write(message + "\n")  # one write: the console exporter's thread prints too
    finally:
        server.shutdown()
        thread.join(5)


if __name__ == "__main__":
    main()
