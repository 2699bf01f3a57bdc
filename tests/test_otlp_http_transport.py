"""Which transport the fast OTLP/HTTP exporter sends with: urllib3 only where requests (the stock
exporter's) would send the same request; proxies, .netrc credentials and TLS keep requests."""

from __future__ import annotations

import base64

import pytest
from apps.fault_servers import free_port
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import clean_env, run_traced, write_script
from trace_run.agent.http_transport import urllib3_sends_the_same
from trace_run.agent.otlp_http import OTLPHTTPSpanExporter


@pytest.fixture
def plain_env(monkeypatch, tmp_path):
    """No proxy variable and no .netrc, whatever the machine running the tests has."""
    import os

    for key in list(os.environ):
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def _spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent", attributes={"k": 1}):
        with tracer.start_as_current_span("child"):
            pass
    return exporter.get_finished_spans()


def _exporter(endpoint: str) -> OTLPHTTPSpanExporter:
    return OTLPHTTPSpanExporter(endpoint, {"x-tenant": "t1"}, 2.0, "none")


def test_plain_http_without_proxy_or_netrc_goes_through_urllib3(receiver, plain_env):
    spans = _spans()
    exporter = _exporter(receiver.http_endpoint + "/v1/traces")
    assert exporter.transport == "urllib3"
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert receiver.requests == [official_encode(spans).SerializePartialToString()]
    child, parent = receiver.spans
    assert (child.name, parent.name) == ("child", "parent") and child.parent_id == parent.span_id
    headers = {k.lower(): v for k, v in receiver.headers_seen[0].items()}
    assert headers["x-tenant"] == "t1" and headers["content-type"] == "application/x-protobuf"
    assert headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    exporter.shutdown()


def test_a_proxy_variable_keeps_requests_and_the_batch_goes_through_the_proxy(receiver, plain_env):
    # the endpoint answers nothing; the receiver stands in for the proxy (it takes the absolute-form
    # request line), so spans arrive only if the proxy variable was honoured
    plain_env.setenv("http_proxy", receiver.http_endpoint)
    plain_env.setenv("no_proxy", "")
    exporter = _exporter("http://127.0.0.1:%d/v1/traces" % free_port())
    assert exporter.transport == "requests"
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS
    assert sorted(s.name for s in receiver.spans) == ["child", "parent"]


def test_a_netrc_keeps_requests_and_its_credentials_are_sent(receiver, plain_env, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login collector password s3cret\n")
    netrc.chmod(0o600)
    plain_env.setenv("NETRC", str(netrc))
    exporter = _exporter(receiver.http_endpoint + "/v1/traces")
    assert exporter.transport == "requests"
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS
    sent = {k.lower(): v for k, v in receiver.headers_seen[0].items()}["authorization"]
    assert sent == "Basic " + base64.b64encode(b"collector:s3cret").decode()


@pytest.mark.parametrize("endpoint, env, same", [
    ("http://collector:4318/v1/traces", {}, True),
    ("HTTP://collector:4318/v1/traces", {}, True),
    ("https://collector:4318/v1/traces", {}, False),  # requests verifies with certifi's CA bundle
    ("http://collector:4318/v1/traces", {"HTTPS_PROXY": "http://p:3128"}, False),
    ("http://collector:4318/v1/traces", {"ALL_PROXY": "socks5://p:1080"}, False),
    ("http://collector:4318/v1/traces", {"no_proxy": "*"}, True),
    ("http://collector:4318/v1/traces", {"http_proxy": ""}, True),  # empty: requests ignores it too
])
def test_when_urllib3_sends_the_same(plain_env, endpoint, env, same):
    for key, value in env.items():
        plain_env.setenv(key, value)
    assert urllib3_sends_the_same(endpoint) is same


def test_a_session_given_by_the_caller_is_used(receiver, plain_env):
    import requests

    session = requests.Session()
    exporter = OTLPHTTPSpanExporter(receiver.http_endpoint + "/v1/traces", {}, 2.0, "none", session=session)
    assert exporter.transport == "requests"
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS
    assert len(receiver.spans) == 2


PROGRAM = """
    import os
    import sqlite3
    import sys

    from opentelemetry import trace

    pid = os.fork()  # the agent imports what its exporter needs before a fork (once, in the parent)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    sqlite3.connect(":memory:").execute("SELECT 1").fetchall()
    assert trace.get_tracer_provider().force_flush(10000)
    print("requests" in sys.modules, "urllib3" in sys.modules)
"""


@pytest.mark.parametrize("proxy, loaded", [(None, "False True"), ("http_proxy", "True True")])
def test_a_program_without_requests_does_not_get_it_from_the_exporter(tmp_path, receiver, proxy, loaded):
    env = clean_env(**receiver.env(NETRC=str(tmp_path / "no-netrc")))
    for key in [k for k in env if k.lower().endswith("_proxy")]:
        del env[key]
    if proxy:  # the receiver as the proxy: spans arrive through it
        env.update({proxy: receiver.http_endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % free_port()})
    proc = run_traced(["python", write_script(tmp_path, PROGRAM)], env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == loaded
    spans = receiver.wait_for(count=1)
    assert [(s.name, s.kind) for s in spans] == [("SELECT", "CLIENT")]


def test_info_names_the_transport_and_why(tmp_path):
    env = clean_env(NETRC=str(tmp_path / "no-netrc"))
    for key in [k for k in env if k.lower().endswith("_proxy")]:
        del env[key]
    line = [x for x in run_traced(["--info"], env=env).stdout.splitlines() if x.strip().startswith("otlp")]
    assert line and "fast encoder, urllib3 transport," in line[0]
    proxied = run_traced(["--info"], env=dict(env, HTTPS_PROXY="http://proxy.example:3128")).stdout
    assert "requests transport (https, a CA file, a proxy variable, a .netrc or credentials in the endpoint)" in proxied
