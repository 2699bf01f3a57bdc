"""The ASGI app the overhead benchmark serves (uvicorn, one process), FastAPI or plain Starlette.

BENCH_ASGI_APP=fastapi (default): FastAPI as its current release ships, telemetry left at its
defaults (it traces itself when a tracer provider is set); =starlette: the same routes on a
plain Starlette app. /plain is async; /all is a sync endpoint (run in the thread pool), as an
app with sync clients writes it. Nothing here knows about tracing.
"""

import os

from bench_work import PLAIN, work
from starlette.responses import PlainTextResponse

if os.environ.get("BENCH_ASGI_APP", "fastapi") == "starlette":
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def plain(request):
        return PlainTextResponse(PLAIN)

    def all_(request):
        return PlainTextResponse(work())

    app = Starlette(routes=[Route("/plain", plain), Route("/all", all_)])
else:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/plain", response_class=PlainTextResponse)
    async def plain():
        return PLAIN

    @app.get("/all", response_class=PlainTextResponse)
    def all_():
        return work()
