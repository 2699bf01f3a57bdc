"""OTLP endpoint credentials (`http://user:pw@host:4318/?token=...`) are never printed.

Real programs under trace-run with such an endpoint: down (the export warning,
the exit line, the SDK's own logs at debug), misconfigured (the port notices,
the bad-port warning), `--info`; and up, to show the credentials still reach the
collector and the query string stays where it belongs.
"""

from __future__ import annotations

import base64
import socket

import pytest
from support import clean_env, run_traced, write_script

PASSWORD = "pw-s3cret"
TOKEN = "tok-s3cret"

APP = """
    from opentelemetry import trace
    with trace.get_tracer("app").start_as_current_span("op"):
        pass
    print("done")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and TOKEN not in text, text


@pytest.mark.parametrize("protocol, encoder, level", [
    ("http/protobuf", "fast", "info"),
    ("http/protobuf", "sdk", "debug"),  # the SDK's own exporter logs quote the URL
    ("grpc", "fast", "debug"),  # gRPC's errors quote the target, userinfo included
])
def test_down_endpoint_credentials_masked_in_warning_and_exit_line(tmp_path, protocol, encoder, level):
    port = free_port()
    endpoint = "http://otlp-user:%s@127.0.0.1:%d/base?token=%s&tenant=acme" % (PASSWORD, port, TOKEN)
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                    OTEL_TRACE_RUN_OTLP_ENCODER=encoder, OTEL_LOG_LEVEL=level, OTEL_TRACE_RUN_EXIT_TIMEOUT="3000")
    proc = run_traced(["python", write_script(tmp_path, APP)], env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    _assert_no_secret(proc.stdout, proc.stderr)
    if protocol == "grpc":
        shown = "http://127.0.0.1:%d/base?token=***&tenant=*** (grpc)" % port  # no userinfo: see below
    else:  # the traces path goes before the query
        shown = "http://otlp-user:***@127.0.0.1:%d/base/v1/traces?token=***&tenant=*** (http/protobuf)" % port
    assert "trace-run: warning: exporting spans to %s failed" % shown in proc.stderr, proc.stderr
    assert "1 of 1 spans were not exported to %s" % shown in proc.stderr, proc.stderr


@pytest.mark.parametrize("endpoint, protocol, shown", [
    ("http://otlp-user:{pw}@collector:4318/v1?token={tok}", "http/protobuf",
     "otlp http/protobuf -> http://otlp-user:***@collector:4318/v1/v1/traces?token=*** ("),
    ("http://{tok}@collector:4317", "http/protobuf",  # a lone token before '@', and the gRPC-port notice
     "OTLP endpoint http://***@collector:4317/v1/traces looks like a gRPC port"),
    ("http://otlp-user:{pw}@collector:4317", "grpc",  # gRPC cannot send them: left out, with a warning
     "OTEL_EXPORTER_OTLP_ENDPOINT='http://otlp-user:***@collector:4317' is invalid (gRPC sends no user:password "
     "from the address; put credentials in OTEL_EXPORTER_OTLP_HEADERS, e.g. authorization=Basic ...); "
     "using http://collector:4317"),
    ("http://otlp-user:{pw}@collector:port?token={tok}", "http/protobuf",
     "OTEL_EXPORTER_OTLP_ENDPOINT='http://otlp-user:***@collector:port/v1/traces?token=***' is invalid (bad port)"),
    ("ftp://otlp-user:{pw}@collector", "http/protobuf",
     "OTEL_EXPORTER_OTLP_ENDPOINT='ftp://otlp-user:***@collector' is invalid (not an http(s) URL)"),
])
def test_info_and_config_warnings_mask_endpoint_credentials(tmp_path, endpoint, protocol, shown):
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint.format(pw=PASSWORD, tok=TOKEN),
                    OTEL_EXPORTER_OTLP_PROTOCOL=protocol)
    info = run_traced(["--info"], env=env, timeout=60)
    assert info.returncode == 0, info.stderr
    assert shown in info.stdout, info.stdout
    _assert_no_secret(info.stdout, info.stderr)
    # the same lines as warnings of a traced program
    proc = run_traced(["python", write_script(tmp_path, APP)], env=dict(env, OTEL_TRACE_RUN_EXIT_TIMEOUT="1000"))
    assert proc.stdout == "done\n", proc.stderr
    _assert_no_secret(proc.stdout, proc.stderr)
    if "->" not in shown:
        assert shown in proc.stderr, proc.stderr


def test_grpc_endpoint_with_credentials_still_delivers(tmp_path, receiver):
    host = receiver.grpc_endpoint.split("//", 1)[1]
    endpoint = "http://otlp-user:%s@%s" % (PASSWORD, host)
    env = clean_env(**dict(receiver.env("grpc"), OTEL_EXPORTER_OTLP_ENDPOINT=endpoint))
    proc = run_traced(["python", write_script(tmp_path, APP)], env=env, check=True)
    _assert_no_secret(proc.stdout, proc.stderr)
    assert [s.name for s in receiver.wait_for(count=1)] == ["op"] and receiver.grpc_calls == 1
    assert len([x for x in proc.stderr.splitlines() if "gRPC sends no user:password" in x]) == 1, proc.stderr


def test_endpoint_credentials_and_query_reach_the_collector(tmp_path, receiver):
    host = receiver.http_endpoint.split("//", 1)[1]
    env = clean_env(**dict(receiver.env(), OTEL_EXPORTER_OTLP_ENDPOINT="http://otlp-user:%s@%s/?tenant=%s"
                           % (PASSWORD, host, TOKEN)))
    proc = run_traced(["python", write_script(tmp_path, APP)], env=env, check=True)
    _assert_no_secret(proc.stdout, proc.stderr)
    assert [s.name for s in receiver.wait_for(count=1)] == ["op"]
    assert receiver.paths_seen == ["/v1/traces?tenant=" + TOKEN]  # the path before the query, not after it
    sent = {k.lower(): v for k, v in receiver.headers_seen[0].items()}["authorization"]
    assert sent == "Basic " + base64.b64encode(("otlp-user:" + PASSWORD).encode()).decode()


@pytest.mark.parametrize("url, shown", [
    ("http://u:p@h:1/x?a=1&b=&c#f", "http://u:***@h:1/x?a=***&b=&***#f"),
    ("https://tok@h", "https://***@h"),
    ("http://:p@h/", "http://***@h/"),
    ("http://h:4318/v1/traces", "http://h:4318/v1/traces"),
    ("http://h/a@b?k=v@w", "http://h/a@b?k=***"),  # '@' after the authority is no userinfo
    ("grpc://u:p%40ss@h:4317", "grpc://u:***@h:4317"),
])
def test_masked_keeps_the_shape(url, shown):
    from trace_run.core import urlmask

    assert urlmask.masked(url) == shown


def test_scrubber_hides_raw_and_decoded_secrets():
    from trace_run.core import urlmask

    scrub = urlmask.scrubber("http://u:p%40ss-word@h:1/x?token=t0k%2Ben")
    text = "failed for u:p%40ss-word@h (p@ss-word) with /x?token=t0k%2Ben and t0k+en"
    assert scrub(text) == "failed for u:***@h (***) with /x?token=*** and ***"


def test_credentials_in_the_endpoint_keep_requests_which_sends_them():
    from trace_run.agent.http_transport import urllib3_sends_the_same

    assert urllib3_sends_the_same("http://collector:4318/v1/traces")
    assert not urllib3_sends_the_same("http://u:p@collector:4318/v1/traces")
