"""`trace-run --info`: the resolved configuration, for when no spans arrive."""

from __future__ import annotations

import sys

from trace_run.core import config
from trace_run.core.urlmask import masked
from trace_run.core.version import VERSION
from trace_run.instrumentors import registry


def _transport(exporter: dict) -> str:
    """Which HTTP transport trace-run's OTLP/HTTP exporter will use, and why (proxies: requests)."""
    if exporter["protocol"] == "grpc":
        if exporter.get("encoder") == "fast" and exporter.get("grpc_client", "trace-run") == "trace-run":
            return ", trace-run's gRPC client"
        return ", grpcio"
    if exporter.get("encoder") != "fast":
        return ""
    from .http_transport import urllib3_sends_the_same

    if not exporter["certificate"] and urllib3_sends_the_same(exporter["endpoint"]):
        return ", urllib3 transport"
    return ", requests transport (https, a CA file, a proxy variable, a .netrc or credentials in the endpoint)"


def _masked_headers(headers: dict) -> str:
    return ", ".join("%s=***" % k for k in headers) or "(none)"


def render(active: dict = None) -> str:
    """`active`: library name -> instrumentor or error text (boot's); the launcher has none yet."""
    from . import sdk

    plan = sdk.resolve()
    out = ["trace-run %s configuration (python %s, %s)" % (VERSION, sys.version.split()[0], sys.executable)]
    if config.get("OTEL_SDK_DISABLED"):
        out.append("  OTEL_SDK_DISABLED=true: nothing is patched and nothing exported")
    out.append("service name:  %s" % plan["service_name"])
    out.append("resource:")
    for k, v in sorted(plan["resource"].items()):
        out.append("  %s = %s" % (k, v))
    out.append("exporters:")
    if not plan["exporters"]:
        out.append("  (none: spans are not exported)")
    for e in plan["exporters"]:
        if e["name"] == "otlp":
            out.append("  otlp %s -> %s (%s encoder%s, timeout %gs, compression %s, headers: %s%s)" % (
                e["protocol"], masked(e["endpoint"]), e.get("encoder", "sdk"), _transport(e), e["timeout_s"],
                e["compression"], _masked_headers(e["headers"]),
                ", CA %s" % e["certificate"] if e["certificate"] else ""))
        else:
            out.append("  %s%s" % (e["name"], (" (" + e["entry_point"] + ")") if "entry_point" in e else ""))
    s = plan["sampler"]
    arg = s.get("ratio", s.get("per_second"))
    out.append("sampler:       %s%s" % (s["name"], "" if arg is None else " (%g)" % arg))
    out.append("propagators:   %s" % (", ".join(plan["propagators"]) or "(none)"))
    b = plan["batch"]
    out.append("batching:      queue %d, batch %d, every %d ms, export timeout %d ms" % (
        b["max_queue_size"], b["max_export_batch_size"], b["schedule_delay_millis"], b["export_timeout_millis"]))
    disabled = {n.lower() for n in config.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")}
    out.append("built-in instrumentors:")
    active = active or {}
    for name, entry in registry.BUILTIN.items():
        off = "*" in disabled or name in disabled or bool(disabled.intersection(entry.aliases))
        state = "disabled" if off else "armed (on import of %s)" % ", ".join(entry.modules)
        if name in active:
            state = "active" if not isinstance(active[name], str) else "failed: " + active[name]
        out.append("  %-10s %s" % (name, state))
    out.append("third-party instrumentors:")
    from . import thirdparty

    try:
        rows = thirdparty.found or thirdparty.classify(disabled)
    except Exception as exc:
        rows = [("?", "", "", "", "could not read entry points: %s" % exc)]
    if not rows:
        out.append("  (none found)")
    for name, _module, _value, dist, status in rows:
        out.append("  %-16s %-24s %s" % (name, dist, status))
    out.append("log correlation: %s" % ("on" if config.get("OTEL_PYTHON_LOG_CORRELATION") else "off"))
    out.append("children inherit the agent: %s" % ("yes" if config.get("OTEL_TRACE_RUN_INHERIT") else "no"))
    out.append("warnings:")
    out.extend("  " + w for w in config.WARNINGS) if config.WARNINGS else out.append("  (none)")
    return "\n".join(out) + "\n"


def print_info(stream=None, active: dict = None) -> None:
    stream = stream or sys.stdout
    from trace_run.core import log

    # Warnings go into the listing; do not print them twice.
    level = log._threshold
    log.set_level("error")
    try:
        text = render(active)
    finally:
        log._threshold = level
    stream.write(text)
    stream.flush()
