"""A Flask app for the process-model and context tests (gunicorn `fault_workers_app:app`, or
`python fault_workers_app.py PORT`).

/work: one span in the handler; /pool, /thread, /async: spans made in a ThreadPoolExecutor,
a new threading.Thread and asyncio tasks, which must join the request's trace;
/slow?s=N: sleeps (signals arrive meanwhile).
"""

import asyncio
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, jsonify, request
from opentelemetry import trace

app = Flask(__name__)
tracer = trace.get_tracer("fault-workers")
pool = ThreadPoolExecutor(max_workers=2)


def work(name):
    with tracer.start_as_current_span(name):
        return os.getpid()


@app.route("/work")
def handler_work():
    return jsonify(pid=work("handler-work"))


@app.route("/pool")
def in_pool():
    futures = [pool.submit(work, "pool-work") for _ in range(2)]
    list(pool.map(work, ["pool-map"]))
    return jsonify(pids=[f.result() for f in futures])


@app.route("/thread")
def in_thread():
    t = threading.Thread(target=work, args=("thread-work",))
    t.start()
    t.join()
    return jsonify(ok=True)


@app.route("/async")
def in_tasks():
    async def one(i):
        await asyncio.sleep(0.01)
        with tracer.start_as_current_span("task-%d" % i):
            await asyncio.sleep(0.01)

    async def main():
        await asyncio.gather(*(asyncio.create_task(one(i)) for i in range(3)))
        await asyncio.get_running_loop().run_in_executor(None, work, "executor-work")

    asyncio.run(main())
    return jsonify(ok=True)


@app.route("/slow")
def slow():
    print("slow started", flush=True)
    time.sleep(float(request.args.get("s", "5")))
    return "slow"


if __name__ == "__main__":
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True)
    print("serving", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
