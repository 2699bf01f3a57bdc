"""redis-py in process against the real Redis: clients, pools, pipelines, asyncio, errors, secrets."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio
import redis.asyncio.client
import redis.client
from hypothesis import given, settings
from hypothesis import strategies as st
from support import REDIS_URL
from trace_run.core import config
from trace_run.instrumentors.redis import RedisInstrumentor, command_text


@pytest.fixture
def traced(instrumented):
    provider, exporter = instrumented(RedisInstrumentor)
    return provider.get_tracer("test"), exporter


@pytest.fixture
def key():
    name = "trr:" + uuid.uuid4().hex[:10]
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name, name + ":2", name + ":n")


def _spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]


@given(st.lists(st.one_of(st.sampled_from(["GET", "set", b"hset", b"\xff", "CLIENT SETNAME", "é", "x" * 65, ""]),
                          st.integers(), st.binary(max_size=5), st.text(max_size=5)), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_a_sanitized_command_kept_by_name_and_count_is_what_it_was_without(args):
    """The span name and attributes redis_._command_span keeps answer as _name and command_text do, on the first
    call and the next (kept) one; the store holds names and counts only, never an argument's value."""
    from trace_run.instrumentors import redis as redis_

    args = tuple(args)
    op = redis_._name(args[0])
    expected = (op or redis_.SYSTEM, {**({"db.operation.name": op} if op else {}), "db.query.text": command_text(args)})
    kept: dict = {}
    assert redis_._command_span(args, True, None, kept) == expected
    assert kept.get((args[0], len(args)), expected) == expected
    assert all(type(name) in (str, bytes) and len(name) <= 64 and type(count) is int for name, count in kept)


def test_command_text():
    assert command_text(("SET", "k", "v")) == "SET ? ?"
    assert command_text((b"get", b"k")) == "GET ?"
    assert command_text(("CLIENT SETNAME", "n")) == "CLIENT SETNAME ?"
    assert command_text(("PING",)) == "PING"
    assert command_text(("SET", "k", b"v" * 500), sanitize=False) == "SET k " + "v" * 100 + "..."
    assert command_text(("AUTH", "user", "pw"), sanitize=False) == "AUTH ? ?"
    assert command_text(("HELLO", 3, "AUTH", "u", "p"), sanitize=False) == "HELLO ? ? ? ?"
    assert command_text(()) == ""


def test_clients_pools_and_pipelines(key, traced):
    tracer, exporter = traced
    with tracer.start_as_current_span("request") as parent:
        client = redis.Redis.from_url(REDIS_URL)
        client.set(key, "secret-value")
        assert redis.StrictRedis(host="127.0.0.1", port=6379, db=0).get(key) == b"secret-value"
        pool = redis.ConnectionPool(host="127.0.0.1", port=6379, db=5)
        redis.Redis(connection_pool=pool).exists(key)
        with client.pipeline() as pipe:
            pipe.set(key + ":2", "v").incr(key + ":n").get(key + ":2")
            assert pipe.execute() == [True, 1, b"v"]
        with client.pipeline(transaction=False) as pipe:
            pipe.get(key).get(key)
            assert pipe.execute() == [b"secret-value"] * 2
        with client.pipeline() as pipe:
            pipe.watch(key)
            assert pipe.get(key) == b"secret-value"
            pipe.multi()
            pipe.set(key, "new")
            pipe.execute()
        assert client.pipeline().execute() == []  # nothing to do, no span
    spans = _spans(exporter)
    assert [(s.name, s.attributes["db.query.text"]) for s in spans] == [
        ("SET", "SET ? ?"), ("GET", "GET ?"), ("EXISTS", "EXISTS ?"),
        ("SET INCRBY GET", "MULTI\nSET ? ?\nINCRBY ? ?\nGET ?\nEXEC"),
        ("GET", "GET ?\nGET ?"),
        ("WATCH", "WATCH ?"), ("GET", "GET ?"), ("SET", "MULTI\nSET ? ?\nEXEC"),
    ]
    assert spans[3].attributes["db.operation.batch.size"] == 3
    assert spans[4].attributes["db.operation.batch.size"] == 2
    assert "db.operation.batch.size" not in spans[7].attributes
    assert [s.attributes["db.namespace"] for s in spans[:3]] == ["0", "0", "5"]
    for s in spans:
        assert s.parent.span_id == parent.get_span_context().span_id
        assert s.attributes["db.system.name"] == "redis"
        assert s.attributes["server.address"] == "127.0.0.1" and s.attributes["server.port"] == 6379
        assert "secret" not in str(s.to_json())


def test_asyncio_client_and_pipeline(key, traced):
    tracer, exporter = traced

    async def main():
        with tracer.start_as_current_span("request") as parent:
            client = redis.asyncio.Redis.from_url(REDIS_URL)
            await client.set(key, "v")
            async with client.pipeline() as pipe:
                pipe.get(key).incr(key + ":n")
                assert await pipe.execute() == [b"v", 1]
            with pytest.raises(redis.ResponseError):
                await client.lpush(key, "x")
            await client.aclose()
            return parent

    parent = asyncio.run(main())
    spans = _spans(exporter)
    assert [s.name for s in spans] == ["SET", "GET INCRBY", "LPUSH"]
    assert spans[2].attributes["db.response.status_code"] == "WRONGTYPE"
    assert all(s.parent.span_id == parent.get_span_context().span_id for s in spans)


def test_errors_are_unchanged_and_recorded(key, traced):
    tracer, exporter = traced
    client = redis.Redis.from_url(REDIS_URL)
    client.set(key, "v")
    with pytest.raises(redis.ResponseError) as wrongtype:
        client.lpush(key, "x")
    assert type(wrongtype.value) is redis.ResponseError and str(wrongtype.value).startswith("WRONGTYPE")
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=2).get(key)
    with pytest.raises(redis.AuthenticationError):
        client.execute_command("AUTH", "someone", "hunter2-password")
    spans = _spans(exporter)
    failed = [(s.name, s.attributes["error.type"], s.attributes.get("db.response.status_code"),
               s.attributes["db.query.text"]) for s in spans if s.status.status_code.name == "ERROR"]
    assert failed[:2] == [("LPUSH", "redis.exceptions.ResponseError", "WRONGTYPE", "LPUSH ? ?"),
                          ("GET", "redis.exceptions.ConnectionError", None, "GET ?")]
    assert failed[2][0] == "AUTH" and failed[2][3] == "AUTH ? ?"
    assert not any("hunter2" in str(s.to_json()) for s in spans)


def test_sanitize_off_shows_arguments_but_never_credentials(key, traced, monkeypatch):
    tracer, exporter = traced
    monkeypatch.setenv("OTEL_TRACE_RUN_DB_SANITIZE", "false")
    config.reset()
    client = redis.Redis.from_url(REDIS_URL)
    client.set(key, "shown")
    with pytest.raises(redis.AuthenticationError):
        client.execute_command("AUTH", "hunter2-password")
    texts = [s.attributes["db.query.text"] for s in _spans(exporter)]
    assert texts == ["SET %s shown" % key, "AUTH ?"]


def test_kept_command_spans_follow_the_settings_the_pool_and_the_command(key, traced, monkeypatch):
    """A sanitized command's span name and text are kept by command name and argument count for the settings
    read now: a setting changed and config.reset(), another pool, another command or argument count each get
    their own, and every span has the attributes, in the order, it had when nothing was kept."""
    tracer, exporter = traced
    client = redis.Redis.from_url(REDIS_URL)
    other = redis.Redis(connection_pool=redis.ConnectionPool(host="127.0.0.1", port=6379, db=5))
    many = (key,) * 8  # `MGET` and 8 `?`: 20 characters
    client.get(key)
    client.get(key)
    other.get(key)
    client.delete(key)
    client.delete(key, key + ":2")
    client.execute_command("MGET", *many)
    monkeypatch.setenv("OTEL_TRACE_RUN_MAX_VALUE_LENGTH", "16")
    config.reset()
    client.execute_command("MGET", *many)
    client.execute_command("MGET", *many)
    monkeypatch.delenv("OTEL_TRACE_RUN_MAX_VALUE_LENGTH")
    config.reset()
    client.execute_command("MGET", *many)
    monkeypatch.setenv("OTEL_TRACE_RUN_DB_SANITIZE", "false")
    config.reset()
    client.get(key)
    spans = _spans(exporter)
    assert [(s.name, s.attributes["db.query.text"], s.attributes["db.namespace"],
             s.attributes.get("trace_run.truncated")) for s in spans] == [
        ("GET", "GET ?", "0", None), ("GET", "GET ?", "0", None), ("GET", "GET ?", "5", None),
        ("DEL", "DEL ?", "0", None), ("DEL", "DEL ? ?", "0", None),
        ("MGET", "MGET" + " ?" * 8, "0", None),
        ("MGET", "MGET ? ? ? ? ...", "0", ("db.query.text",)),
        ("MGET", "MGET ? ? ? ? ...", "0", ("db.query.text",)),
        ("MGET", "MGET" + " ?" * 8, "0", None),
        ("GET", "GET " + key, "0", None),
    ]
    assert {tuple(s.attributes) for s in spans if "trace_run.truncated" not in s.attributes} == {(
        "db.system.name", "db.namespace", "server.address", "server.port", "db.operation.name", "db.query.text")}
