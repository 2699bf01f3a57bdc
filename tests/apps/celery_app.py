"""The Celery app of the queue tests. Broker, backend and queue come from the environment:
CELERY_TEST_BROKER, CELERY_TEST_BACKEND (empty: none), CELERY_TEST_QUEUE, PG_DSN.
"""

import os

from celery import Celery

app = Celery("celery_app", broker=os.environ["CELERY_TEST_BROKER"],
             backend=os.environ.get("CELERY_TEST_BACKEND") or None)
app.conf.task_default_queue = os.environ.get("CELERY_TEST_QUEUE", "celery")
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False


@app.task
def add(x, y):
    return x + y


@app.task
def fail():
    raise ValueError("task failed on purpose")


@app.task(bind=True, max_retries=3)
def flaky(self, times):
    """Retries itself `times` times, then succeeds."""
    if self.request.retries < times:
        raise self.retry(countdown=0)
    return self.request.retries


@app.task
def query_pg(n):
    import psycopg

    with psycopg.connect(os.environ["PG_DSN"]) as conn:
        return conn.execute("SELECT %s::int + 1", (n,)).fetchone()[0]


@app.task
def parent_task():
    """Sends another task from inside a task."""
    add.delay(10, 20)
    return "sent"
