"""Issue 10: the agent's own export traffic never makes spans, whatever HTTP client
the exporter uses, and code that suppresses instrumentation is honoured."""

from __future__ import annotations

import time

import pytest
from support import clean_env, run_traced, write_script

PROGRAM = """
    import requests, urllib3, http.client, urllib.request  # every HTTP client instrumented
    from opentelemetry import trace
    from opentelemetry.instrumentation.utils import suppress_instrumentation, suppress_http_instrumentation
    tracer = trace.get_tracer("app")
    for i in range(3):
        with tracer.start_as_current_span("work-%d" % i):
            pass
        time.sleep(0.15)  # several export rounds while the program runs
    # Other projects' code that suppresses instrumentation is honoured by ours.
    with suppress_instrumentation():
        try:
            requests.get("http://127.0.0.1:9/", timeout=0.2)
        except Exception:
            pass
    with suppress_http_instrumentation():
        try:
            urllib.request.urlopen("http://127.0.0.1:9/", timeout=0.2)
        except Exception:
            pass
    print("done")
"""


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_export_traffic_makes_no_spans(tmp_path, receiver, protocol):
    script = write_script(tmp_path, "import time\n" + PROGRAM.replace("\n    ", "\n"))
    env = clean_env(**receiver.env(protocol, OTEL_BSP_SCHEDULE_DELAY="50"))
    proc = run_traced(["python", script], env=env, check=True)
    assert proc.stdout == "done\n"
    receiver.wait_for(count=3)
    time.sleep(0.5)
    names = sorted(s.name for s in receiver.spans)
    assert names == ["work-0", "work-1", "work-2"], names
    calls = receiver.http_calls if protocol != "grpc" else receiver.grpc_calls
    assert calls >= 2  # several exports happened, none of them traced
