"""Secrets of the export itself: OTLP header values never printed; OTLP over TLS and mutual TLS
against a collector whose certificates come from a CA this test makes."""

from __future__ import annotations

import os
from concurrent import futures

import grpc
import pytest
from apps.fault_servers import FaultServer, free_port, make_ca, server_tls_context
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from support import HERE, clean_env, run_traced

APP = os.path.join(HERE, "apps", "fault_app.py")
ARGS = ["--spans", "3", "--requests", "0"]
KEY = "sk-live-7f3a9c1e55d04b2f"  # the API key that must never be printed


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


def _env(endpoint, protocol="http/protobuf", **extra):
    return clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                     OTEL_BSP_SCHEDULE_DELAY="100", OTEL_TRACE_RUN_EXIT_TIMEOUT="1000", **extra)


# -- header values -------------------------------------------------------------------


HEADER_CASES = {
    "delivered": dict(script=["ok"]),
    "collector_says_401": dict(script=["status:401"]),
    "collector_not_listening": dict(script=None),
    "debug_log_level": dict(script=["status:503"], extra={"OTEL_LOG_LEVEL": "debug"}),
    "traces_specific_variable": dict(script=["status:400"], variable="OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
    "malformed_entry": dict(script=["ok"], value="api-key=%s,garbage-%s" % (KEY, KEY)),
    "grpc_invalid_metadata_key": dict(script=None, protocol="grpc", value="X-Api-Key=%s" % KEY),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_otlp_header_values_never_printed(case):
    c = HEADER_CASES[case]
    server = FaultServer(c["script"]) if c["script"] else None
    endpoint = server.endpoint if server else "http://127.0.0.1:%d" % free_port()
    env = _env(endpoint, c.get("protocol", "http/protobuf"), **c.get("extra", {}))
    value = c.get("value", "api-key=%s,x-tenant=acme" % KEY)
    env[c.get("variable", "OTEL_EXPORTER_OTLP_HEADERS")] = value
    try:
        proc = run_traced(["python", APP, *ARGS], env=env, timeout=60)
        info = run_traced(["--info"], env=env, timeout=60)
    finally:
        if server:
            server.stop()
    assert proc.returncode == 0 and proc.stdout.endswith("done\n"), proc.stderr
    assert "%s=***" % value.split("=", 1)[0] in info.stdout, info.stdout  # the key is shown, its value masked
    for text in (proc.stdout, proc.stderr, info.stdout, info.stderr):
        assert KEY not in text, text
    if case == "delivered":
        assert len(server.span_ids) == 3


def test_header_reaches_the_collector_so_the_checks_above_mean_something():
    server = FaultServer(["ok"])
    seen = []
    real = server._accept
    server._accept = lambda body: (seen.append(body), real(body))
    env = _env(server.endpoint, OTEL_EXPORTER_OTLP_HEADERS="api-key=%s" % KEY)
    try:
        proc = run_traced(["python", APP, *ARGS], env=env, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 0 and len(server.span_ids) == 3 and seen


# -- TLS -------------------------------------------------------------------------------


def test_otlp_http_over_tls_with_test_ca(ca):
    server = FaultServer(["ok"], tls=server_tls_context(ca))
    try:
        proc = run_traced(["python", APP, *ARGS], env=_env(server.endpoint, OTEL_EXPORTER_OTLP_CERTIFICATE=ca["ca"]))
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(server.span_ids) == 3 == len(set(server.span_ids))


@pytest.mark.parametrize("with_client_cert", [True, False])
def test_otlp_http_mutual_tls(ca, with_client_cert):
    server = FaultServer(["ok"], tls=server_tls_context(ca, require_client_cert=True))
    extra = {"OTEL_EXPORTER_OTLP_CERTIFICATE": ca["ca"]}
    if with_client_cert:
        extra.update(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=ca["client_cert"],
                     OTEL_EXPORTER_OTLP_CLIENT_KEY=ca["client_key"])
    try:
        proc = run_traced(["python", APP, *ARGS], env=_env(server.endpoint, **extra))
    finally:
        server.stop()
    assert proc.returncode == 0 and proc.stdout.endswith("done\n")
    if with_client_cert:
        assert proc.stderr == "" and len(server.span_ids) == 3, proc.stderr
    else:  # the collector refuses us: nothing delivered, the loss reported, the program unchanged
        assert server.span_ids == [] and "3 of 3 spans were not exported" in proc.stderr, proc.stderr


class _GrpcCollector:
    def __init__(self, ca, require_client_cert: bool):
        self.span_ids = []
        collector = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                collector.span_ids.extend(s.span_id.hex() for rs in request.resource_spans
                                          for ss in rs.scope_spans for s in ss.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        creds = grpc.ssl_server_credentials([(read(ca["server_key"]), read(ca["server_cert"]))],
                                            root_certificates=read(ca["ca"]),
                                            require_client_auth=require_client_cert)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()


@pytest.mark.parametrize("client", ["trace-run", "grpcio"])
@pytest.mark.parametrize("mutual", [False, True])
def test_otlp_grpc_over_tls_with_test_ca(ca, mutual, client):
    collector = _GrpcCollector(ca, require_client_cert=mutual)
    extra = {"OTEL_EXPORTER_OTLP_CERTIFICATE": ca["ca"], "OTEL_TRACE_RUN_GRPC_CLIENT": client}
    if mutual:
        extra.update(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=ca["client_cert"],
                     OTEL_EXPORTER_OTLP_CLIENT_KEY=ca["client_key"])
    try:
        env = _env("https://127.0.0.1:%d" % collector.port, "grpc", **extra)
        proc = run_traced(["python", APP, *ARGS], env=env)
    finally:
        collector.server.stop(0)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(collector.span_ids) == 3 == len(set(collector.span_ids))
