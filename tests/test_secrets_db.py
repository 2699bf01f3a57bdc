"""Credentials in database calls: Redis CONFIG SET / ACL SETUSER with sanitizing off, SQLite URI keys.

Redis runs as a private `redis-server` made by the test: setting `requirepass`
on the shared one would lock every other test out.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
import uuid

import pytest
from support import clean_env, run_traced, write_script

REDIS_CONFIG = r"""
import sys
import redis

port, p1, p2, p3, p4, p5 = int(sys.argv[1]), *sys.argv[2:]
r = redis.Redis(port=port)
r.acl_setuser("alice", enabled=True, passwords=["+" + p1], hashed_passwords=["+" + p2], keys=["~*"],
              commands=["+get"])
r.acl_setuser("alice", passwords=["-" + p1], hashed_passwords=["-" + p2])
r.execute_command("acl", "setuser", "bob", "on", ">" + p3)
r.config_set("masterauth", p4, "maxmemory-policy", "noeviction")
r.execute_command("CONFIG", "SET", "RequirePass", p5)  # last: the connection stays authenticated
r.execute_command("AUTH", p5)
r.set("visible-key", "visible-value")
"""


@pytest.fixture
def private_redis():
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (the tests' Redis service)"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_config_set_and_acl_setuser_passwords_are_masked_with_sanitize_off(tmp_path, receiver, private_redis):
    secrets = ["s%d%s" % (i, uuid.uuid4().hex) for i in range(5)]
    secrets[1] = hashlib.sha256(secrets[1].encode()).hexdigest()  # ACL's #<hash> form takes a SHA-256
    app = write_script(tmp_path, REDIS_CONFIG)
    proc = run_traced(["python", app, str(private_redis)] + secrets,
                      env=clean_env(**receiver.env(), OTEL_TRACE_RUN_DB_SANITIZE="false"))
    assert proc.returncode == 0, proc.stderr
    spans = receiver.wait_for(count=7)
    assert [s for s in secrets if s.encode() in receiver.raw_bytes()] == []
    assert [s.attributes["db.query.text"] for s in spans] == [
        "ACL SETUSER alice on ? ? +get ~*",
        "ACL SETUSER alice off ? ?",
        "ACL setuser bob on ?",
        "CONFIG SET masterauth ? maxmemory-policy noeviction",
        "CONFIG SET RequirePass ?",
        "AUTH ?",
        "SET visible-key visible-value",
    ]


SQLITE_URI = r"""
import os, sqlite3, sys

folder, key = sys.argv[1:3]
path = os.path.join(folder, "app.db")
conn = sqlite3.connect("file:%s?psk=%s&mode=rwc" % (path, key), uri=True)
conn.execute("CREATE TABLE t (x)")
conn.close()
conn = sqlite3.connect("file::memory:?cache=shared&key=" + key, uri=True)
conn.execute("SELECT 1")
conn.close()
"""


def test_sqlite_uri_query_stays_out_of_db_namespace(tmp_path, receiver):
    key = "k" + uuid.uuid4().hex
    app = write_script(tmp_path, SQLITE_URI)
    proc = run_traced(["python", app, str(tmp_path), key], env=clean_env(**receiver.env()))
    assert proc.returncode == 0, proc.stderr
    spans = receiver.wait_for(count=2)
    assert [s.attributes["db.namespace"] for s in spans] == [str(tmp_path / "app.db"), ":memory:"]
    assert key.encode() not in receiver.raw_bytes()
