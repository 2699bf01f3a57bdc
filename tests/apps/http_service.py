"""A Flask service for the HTTP end-to-end tests (run under trace-run).

    python http_service.py PORT [run|reloader|make_server]

/call/<client>?to=URL calls URL with one client library and reports what
happened as JSON, so one service can call another (or itself).
"""

import asyncio
import json
import sys
import time

from flask import Blueprint, Flask, Response, jsonify, request

app = Flask(__name__)
bp = Blueprint("shop", __name__, url_prefix="/shop")


@app.route("/items/<int:item_id>")
def item(item_id):
    return jsonify(item=item_id)


@bp.route("/orders/<order_id>", methods=["GET", "POST"])
def order(order_id):
    return jsonify(order=order_id)


app.register_blueprint(bp)


@app.route("/boom")
def boom():
    raise ValueError("view failed")


@app.route("/fail")
def fail():
    return "failed on purpose", 500


@app.route("/slow")
def slow():
    time.sleep(float(request.args.get("s", "2")))
    return "slow"


@app.route("/headers")
def headers():
    return jsonify({k.lower(): v for k, v in request.headers.items()})


@app.route("/stream")
def stream():
    def body():
        for i in range(3):
            time.sleep(0.05)
            yield "chunk%d\n" % i

    return Response(body(), mimetype="text/plain")


@app.route("/redirect")
def redirect_view():
    from flask import redirect

    return redirect(request.args["to"])


def call(client, url, timeout):
    if client == "requests":
        import requests

        r = requests.get(url, timeout=timeout, headers={"X-Caller": "a"})
        return r.status_code, r.text
    if client == "urllib3":
        import urllib3

        r = urllib3.PoolManager().request("GET", url, timeout=timeout, retries=False)
        return r.status, r.data.decode()
    if client == "urllib":
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    if client == "httpclient":
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()
    if client == "httpx":
        import httpx

        with httpx.Client(timeout=timeout, follow_redirects=True) as c:
            r = c.get(url)
            return r.status_code, r.text
    if client == "httpx_async":
        import httpx

        async def go():
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as c:
                r = await c.get(url)
                return r.status_code, r.text

        return asyncio.run(go())
    raise LookupError(client)


@app.route("/call/<client>")
def call_view(client):
    try:
        status, text = call(client, request.args["to"], float(request.args.get("timeout", "5")))
    except Exception as exc:
        return jsonify(error=type(exc).__name__)
    return jsonify(status=status, body=text)


if __name__ == "__main__":
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "run"
    if mode == "make_server":
        from werkzeug.serving import make_server

        make_server("127.0.0.1", port, app, threaded=True).serve_forever()
    else:
        app.run("127.0.0.1", port, threaded=True, debug=(mode == "reloader"), use_reloader=(mode == "reloader"))
        print(json.dumps("stopped"))
