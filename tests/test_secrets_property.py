"""Property: whatever secret a program puts in a request, a query, a key or a message, no exported
byte contains it.

One program (tests/apps/fault_secrets_app.py) runs under trace-run for the whole module
with header capture on for every credential header; hypothesis feeds it fresh secrets
per example; after each example the raw OTLP bytes received so far are searched.
"""

from __future__ import annotations

import json
import os
import select
import string
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import AMQP_URL, HERE, PG_DSN, REDIS_URL, TRACE_RUN, clean_env
from support.otlp_receiver import Receiver

APP = os.path.join(HERE, "apps", "fault_secrets_app.py")
CAPTURED = "authorization,cookie,x-api-key,x-request-id"
# The prefix keeps a secret from being a word the exported bytes hold anyway: hypothesis also draws
# strings it finds in the code (it once drew `delivery_tag`, part of an attribute name).
SECRET = st.text(string.ascii_letters + string.digits + "-_.~", min_size=12, max_size=32).map(lambda s: "Zx7" + s)


class App:
    def __init__(self, receiver: Receiver):
        env = clean_env(**receiver.env(),
                        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=CAPTURED,
                        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST=CAPTURED,
                        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE="set-cookie,content-type",
                        OTEL_SERVICE_NAME="secrets-app")
        self.proc = subprocess.Popen([TRACE_RUN, "python", APP, PG_DSN, REDIS_URL, AMQP_URL], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.count = 0

    def run(self, secrets: list) -> str:
        self.count += 1
        tag = "t%d" % self.count
        self.proc.stdin.write(json.dumps({"tag": tag, "s": secrets}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if line != "ok %s\n" % tag:
            self.proc.kill()
            raise AssertionError("app answered %r\nstderr:\n%s" % (line, self.proc.stderr.read()))
        return tag

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.returncode, self.proc.stderr.read()


@pytest.fixture(scope="module")
def traced_app():
    receiver = Receiver().start()
    app = App(receiver)
    yield receiver, app
    app.close()
    receiver.stop()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secrets=st.lists(SECRET, min_size=19, max_size=19, unique=True))
def test_no_exported_byte_contains_a_secret(traced_app, secrets):
    receiver, app = traced_app
    tag = app.run(secrets)
    raw = receiver.raw_bytes()
    leaked = [(i, s) for i, s in enumerate(secrets) if s.encode() in raw]
    assert not leaked, "exported: %r" % leaked
    # The example really was traced: its first server span, with the captured harmless header, arrived.
    servers = [s for s in receiver.spans if s.kind == "SERVER"
               and s.attributes.get("http.request.header.x-request-id") == ["req-" + tag]]
    assert servers, "no server span for %s" % tag


def test_every_place_was_traced_so_the_property_means_something(traced_app):
    receiver, app = traced_app
    app.run(["control-%02d-abcdefgh" % i for i in range(19)])
    scopes = {s.scope.rsplit(".", 1)[-1] for s in receiver.spans}
    assert {"flask", "requests", "httpx", "psycopg", "redis", "pika", "urllib", "sqlite3"} <= scopes, scopes
    kinds = {(s.scope.rsplit(".", 1)[-1], s.kind) for s in receiver.spans}
    assert ("pika", "PRODUCER") in kinds and ("psycopg", "CLIENT") in kinds, kinds
    captured = [s for s in receiver.spans if "http.request.header.authorization" in s.attributes]
    assert captured and all(s.attributes["http.request.header.authorization"] == ["[REDACTED]"] for s in captured)
    errors = [s for s in receiver.spans if s.scope.endswith("psycopg") and s.status == "ERROR"]
    assert errors, "the failing SQL statement made an error span"
    # The error paths ran: the escaping DB and Redis errors and the refused request were recorded.
    escaped = {s.attributes.get("error.type") for s in receiver.spans if s.kind == "SERVER" and s.status == "ERROR"}
    assert {"psycopg.errors.UniqueViolation", "redis.exceptions.ResponseError"} <= escaped, escaped
    refused = [s for s in receiver.spans if s.kind == "CLIENT" and s.scope.endswith("requests")
               and s.status == "ERROR" and s.events]
    assert refused and "X-Amz-Signature=REDACTED" in refused[0].events[0][1]["exception.message"]
