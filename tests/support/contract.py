"""What the instrumentor contract test (tests/test_instrumentor_contract.py) runs for each built-in library.

`EXERCISES[name]`: a program body using the library that makes at least one span of the
instrumentor's scope (`trace_run.instrumentors.<name>`) and prints what it saw (the output a bare run
must match); services are the local ones of `support`. A library added to the registry without an
exercise here fails the contract test.
"""

from __future__ import annotations

from support import AMQP_URL, PG_DSN, REDIS_URL

_REFUSED = "http://127.0.0.1:1/refused"

EXERCISES = {
    "flask": """
        import flask
        app = flask.Flask("contract")
        app.add_url_rule("/items/<int:n>", "items", lambda n: "item %d" % n)
        print(app.test_client().get("/items/7").get_data(as_text=True))
    """,
    "starlette": """
        import asyncio
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Mount, Route
        item = Route("/items/{n:int}", lambda request: PlainTextResponse("item %d" % request.path_params["n"]))
        app = Starlette(routes=[Mount("/api", routes=[item])])
        sent = []
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}
        async def send(message):
            sent.append(message)
        asyncio.run(app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                         "scheme": "http", "path": "/api/items/7", "root_path": "", "query_string": b"",
                         "headers": [], "server": ("contract", 80)}, receive, send))
        print(sent[0]["status"], sent[1]["body"].decode())
    """,
    "django": """
        import django
        import io
        from django.conf import settings
        settings.configure(ROOT_URLCONF="contract_urls", ALLOWED_HOSTS=["*"], SECRET_KEY="contract")
        django.setup()
        import sys, types
        from django.http import HttpResponse
        from django.urls import path
        def item(request, n):
            return HttpResponse("item %d" % n)
        item.__module__ = "contract_urls"  # Django 4.2 names views by module
        sys.modules["contract_urls"] = types.SimpleNamespace(urlpatterns=[path("items/<int:n>", item)])
        from django.core.wsgi import get_wsgi_application
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/items/7", "SERVER_NAME": "contract", "SERVER_PORT": "80",
                   "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
        status = []
        body = get_wsgi_application()(environ, lambda s, h, e=None: status.append(s))
        print(status[0], b"".join(body).decode())
        body.close()
    """,
    "requests": """
        import requests
        try:
            requests.get(%r, timeout=5)
        except requests.ConnectionError as exc:
            print("refused:", type(exc).__name__)
    """ % _REFUSED,
    "urllib3": """
        import urllib3
        try:
            urllib3.PoolManager().request("GET", %r, retries=False)
        except urllib3.exceptions.HTTPError as exc:
            print("refused:", type(exc).__name__)
    """ % _REFUSED,
    "urllib": """
        import urllib.error, urllib.request
        try:
            urllib.request.urlopen(%r, timeout=5)
        except urllib.error.URLError as exc:
            print("refused:", type(exc).__name__)
    """ % _REFUSED,
    "httpx": """
        import httpx
        try:
            httpx.get(%r, timeout=5)
        except httpx.ConnectError as exc:
            print("refused:", type(exc).__name__)
    """ % _REFUSED,
    "psycopg": """
        import psycopg
        with psycopg.connect(%r) as conn:
            print(conn.execute("SELECT 40 + 2").fetchone()[0])
    """ % PG_DSN,
    "psycopg2": """
        import psycopg2
        conn = psycopg2.connect(%r)
        cur = conn.cursor()
        cur.execute("SELECT 40 + 2")
        print(cur.fetchone()[0])
        conn.close()
    """ % PG_DSN,
    "asyncpg": """
        import asyncio, asyncpg

        async def main():
            conn = await asyncpg.connect(%r)
            print(await conn.fetchval("SELECT 40 + 2"))
            await conn.close()

        asyncio.run(main())
    """ % PG_DSN,
    "sqlite3": """
        import sqlite3
        print(sqlite3.connect(":memory:").execute("SELECT 40 + 2").fetchone()[0])
    """,
    "redis": """
        import redis
        print(redis.Redis.from_url(%r).ping())
    """ % REDIS_URL,
    "pika": """
        import pika
        conn = pika.BlockingConnection(pika.URLParameters(%r))
        channel = conn.channel()
        channel.queue_declare("trace-run-contract", auto_delete=True)
        channel.basic_publish("", "trace-run-contract", b"hello")
        conn.close()
        print("published")
    """ % AMQP_URL,
    "celery": """
        import celery
        app = celery.Celery("contract", broker="memory://")
        print(type(app.send_task("contract.task", (1,))).__name__)
    """,
    # No spans of its own: the context reaches the thread, so the span made there has a parent.
    "threading": """
        import threading
        from opentelemetry import trace
        tracer = trace.get_tracer("contract")
        with tracer.start_as_current_span("outer"):
            worker = threading.Thread(target=lambda: tracer.start_span("inner").end())
            worker.start()
            worker.join()
        print("joined")
    """,
}

# Run in a bare interpreter: instrument by hand, twice, uninstrument, again; print what changed.
PATCH_PROBE = r"""
import importlib, json, sys
from trace_run.core.wrapping import is_wrapper  # ours (a plain function or wrapt's) or anyone's wrapt wrapper
from trace_run.instrumentors import registry

_GONE = object()

entry = registry.BUILTIN[sys.argv[1]]
names = list(entry.modules) + [m for m, _ in entry.submodules] + list(entry.aliases) + [entry.name]
if entry.name == "threading":
    names += ["threading", "concurrent.futures.thread"]
prefixes = []
for name in names:
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    prefixes.append(name)


def snapshot():
    out = {}
    for modname, module in list(sys.modules.items()):
        if module is None or not any(modname == p or modname.startswith(p + ".") for p in prefixes):
            continue
        for key, value in list(vars(module).items()):
            out[(modname, key)] = value
            # issubclass(type(...)), not isinstance: a lazy proxy (django.conf.settings) would set itself up
            if issubclass(type(value), type) and value.__module__ == modname:
                for attr, member in list(vars(value).items()):
                    out[(modname, key, attr)] = member
    return out


def changed(before, after):
    # Values replaced or removed since `before`, and wrappers added (a library's own lazy imports add
    # plain attributes: not ours).
    out = [k for k, v in before.items() if after.get(k, _GONE) is not v]
    out += [k for k, v in after.items() if k not in before and is_wrapper(v)]
    return sorted(".".join(k) for k in out)


from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
cls = registry.load(entry)
s0 = snapshot()
inst = cls()
inst.instrument()
s1 = snapshot()
inst.instrument()  # again: nothing more is wrapped
s2 = snapshot()
inst.uninstrument()
s3 = snapshot()
cls().instrument()  # once more after uninstrument
s4 = snapshot()
cls().uninstrument()
s5 = snapshot()
exec(compile(sys.argv[2], "exercise", "exec"), {})  # once uninstrumented, the library makes no spans
ours = sorted({s.instrumentation_scope.name for s in exporter.get_finished_spans()
               if s.instrumentation_scope.name.startswith("trace_run.")})
print(json.dumps({
    "spans_after_uninstrument": ours,
    "patched": changed(s0, s1), "second": changed(s1, s2), "restored": changed(s0, s3),
    "repatched": changed(s0, s4), "restored_again": changed(s0, s5),
    "dependencies": list(inst.instrumentation_dependencies()),
}))
"""
