"""A Starlette app with no tracing code, for the ASGI server tests (`asgi_db_app:app` under uvicorn,
hypercorn or gunicorn's uvicorn worker, run by trace-run).

Every route reaches PostgreSQL a different way: asyncpg in an async endpoint, psycopg in a sync
endpoint (Starlette's thread pool) and through `run_in_threadpool`, both in background tasks, once per
WebSocket message. The lifespan opens the asyncpg pool (no span: lifespan is not a request).
$TRACE_RUN_TEST_PG_DSN is the database.
"""

import asyncio
import contextlib
import os

import asyncpg
import psycopg
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute

DSN = os.environ.get("TRACE_RUN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
state = {}


def sync_query(n: int) -> int:
    with psycopg.connect(DSN, autocommit=True) as conn:
        return conn.execute("SELECT %s::int * 2", (n,)).fetchone()[0]


async def async_query(n: int) -> int:
    return await state["pool"].fetchval("SELECT $1::int + 1", n)


async def async_route(request):
    return JSONResponse({"value": await async_query(request.path_params["n"])})


def sync_route(request):  # Starlette runs a sync endpoint in its thread pool
    return JSONResponse({"value": sync_query(request.path_params["n"])})


async def threadpool_route(request):
    return JSONResponse({"value": await run_in_threadpool(sync_query, request.path_params["n"])})


async def background_route(request):
    tasks = BackgroundTasks()
    tasks.add_task(async_query, 5)
    tasks.add_task(sync_query, 6)  # a sync task: the thread pool again
    return PlainTextResponse("queued", background=tasks)


async def stream_route(request):
    async def chunks():
        for i in range(200):
            yield b"chunk %d\n" % i
            await asyncio.sleep(0.05)

    return StreamingResponse(chunks(), media_type="text/plain")


async def ws_route(websocket):
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        if text == "bye":
            await websocket.close()
            return
        await websocket.send_text(str(await async_query(int(text))))


@contextlib.asynccontextmanager
async def lifespan(app):
    state["pool"] = await asyncpg.create_pool(DSN, min_size=1, max_size=2)
    yield
    await state["pool"].close()


app = Starlette(lifespan=lifespan, routes=[
    Mount("/db", routes=[
        Route("/async/{n:int}", async_route),
        Route("/sync/{n:int}", sync_route),
        Route("/threadpool/{n:int}", threadpool_route),
    ]),
    Route("/background", background_route),
    Route("/stream", stream_route),
    WebSocketRoute("/ws", ws_route),
])
