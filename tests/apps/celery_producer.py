"""Sends Celery tasks: `celery_producer.py MODE...` under one root span `producer-main`.

MODE: add (delay), apply_async, send_task, fail, flaky, chain, group, parent, wait (add + wait for the
result). Prints the task ids.
"""

import sys

from celery import chain, group
from celery_app import add, app, fail, flaky, parent_task
from opentelemetry import trace

tracer = trace.get_tracer("producer")
with tracer.start_as_current_span("producer-main"):
    for mode in sys.argv[1:]:
        if mode == "add":
            result = add.delay(1, 2)
        elif mode == "apply_async":
            result = add.apply_async((3, 4))
        elif mode == "send_task":
            result = app.send_task("celery_app.add", args=(5, 6))
        elif mode == "fail":
            result = fail.delay()
        elif mode == "flaky":
            result = flaky.delay(2)
        elif mode == "chain":
            result = chain(add.s(1, 1), add.s(100)).apply_async()
        elif mode == "group":
            result = group(add.s(2, 2), add.s(3, 3)).apply_async()
        elif mode == "parent":
            result = parent_task.delay()
        elif mode == "wait":
            result = add.delay(7, 8)
            print("result", result.get(timeout=30))
        else:
            raise SystemExit("unknown mode " + mode)
        print(mode, result.id)
