"""The live SDK of this process: set up once, on first need; flushed at exit and
on SIGTERM with a bounded timeout; re-armed after fork by the SDK itself.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading

from . import config, log

_lock = threading.RLock()
_state: dict = {}  # provider, propagator, processors, plan
_exit_done = False
_flushing = False
_term_pending = False


def provider_ready() -> bool:
    return "provider" in _state


def ensure_sdk() -> None:
    """Build and install the TracerProvider and propagator, once per process."""
    if "provider" in _state or _state.get("failed"):
        return
    with _lock:
        # Re-entry from this thread: setting up imports libraries whose hooks
        # call us again (the exporter imports requests, urllib3, http.client).
        if "provider" in _state or _state.get("failed") or _state.get("building"):
            return
        _state["building"] = True
        try:
            _setup()
        except Exception:
            _state["failed"] = True
            raise
        finally:
            _state.pop("building", None)


# Modules the OTLP exporters import. When the program is in the middle of
# importing one of them (say `import requests` fired our urllib3 hook), building
# the exporter would meet a half-initialised module: the build waits.
_EXPORTER_DEPS = ("requests", "urllib3", "http.client", "grpc", "google.protobuf")


def imports_in_progress() -> bool:
    import sys

    for name in _EXPORTER_DEPS:
        module = sys.modules.get(name)
        if module is None:
            continue
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            return True
        parent, _, child = name.rpartition(".")
        # A submodule is bound on its package only once its import returns.
        if parent and getattr(sys.modules.get(parent), child, None) is not module:
            return True
    return False


def _setup() -> None:
    from opentelemetry import trace

    from . import sdk

    _quiet_sdk_loggers()
    plan = sdk.resolve()
    saved = _environ_for_sdk(plan["propagators"])
    try:
        from opentelemetry import propagate

        provider, propagator, processors = sdk.build(plan)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(propagator)
    _state.update(provider=provider, propagator=propagator, processors=processors, plan=plan)
    atexit.register(flush_at_exit)
    _install_sigterm()
    os.register_at_fork(after_in_child=_child_pid)


def _child_pid() -> None:
    """A forked child is another process: its spans carry its own process.pid.
    (TracerProvider._update_resource is the SDK's own at-fork path; left alone
    if a future SDK drops it.)"""
    try:
        from opentelemetry.sdk.resources import Resource

        update = getattr(_state["provider"], "_update_resource", None)
        if update is not None:
            update(Resource({"process.pid": os.getpid(), "process.parent_pid": os.getppid()}))
    except Exception:
        pass


def _environ_for_sdk(propagators: list) -> dict:
    """The SDK reads some variables itself and raises on garbage: opentelemetry.sdk.trace at
    import (e.g. OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=lots), opentelemetry.propagate on an unknown
    OTEL_PROPAGATORS name. We warned about those already; while the SDK is set up they leave the
    environment and OTEL_PROPAGATORS holds the names that resolved. Returns what to put back."""
    bad = {w.split("=", 1)[0] for w in config.WARNINGS if "=" in w.split(" ", 1)[0]}
    saved = {name: os.environ.get(name) for name in bad | {"OTEL_PROPAGATORS"}}
    for name in bad:
        os.environ.pop(name, None)
    os.environ["OTEL_PROPAGATORS"] = ",".join(propagators) or "none"
    return saved


def _quiet_sdk_loggers() -> None:
    """The SDK logs every failed batch and every full queue; we say it once, ourselves."""
    import logging

    # Its warnings quote OTEL_EXPORTER_OTLP_HEADERS entries (API keys), even at debug; we report them masked.
    logging.getLogger("opentelemetry.util.re").disabled = True
    if config.get("OTEL_LOG_LEVEL") == "debug":
        return

    for name in (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.exporter.otlp.proto.grpc.exporter",
        "opentelemetry.exporter.otlp.common",
        "opentelemetry.exporter.otlp.common.http",
        "opentelemetry.exporter.otlp.proto.http._common",
        "opentelemetry.sdk._shared_internal",
        "opentelemetry.sdk.trace.export",
        "opentelemetry.baggage.propagation",  # quotes whole oversized baggage headers from the network, per request
    ):
        logging.getLogger(name).disabled = True  # per logger: children are listed too


def _install_sigterm() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the program (or its server) owns SIGTERM
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        pass


def _on_sigterm(signum, frame) -> None:
    """Flush, then die of SIGTERM exactly as the program would have.

    Further SIGTERMs are ignored while the (bounded) flush runs: a supervisor
    that signals twice (multiprocessing.Pool does) would otherwise kill the
    process in the middle of the flush."""
    global _term_pending
    if _flushing:
        # We interrupted a flush already under way (multiprocessing's exit
        # finalizers, atexit): let it finish, then die of this signal.
        _term_pending = True
        return
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    flush_at_exit()
    _die_of_sigterm()


def _die_of_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def flush_at_exit() -> None:
    """Shut the pipeline down within OTEL_TRACE_RUN_EXIT_TIMEOUT; report drops."""
    global _exit_done, _flushing
    if _exit_done or "provider" not in _state:
        return
    _exit_done = True
    _flushing = True
    try:
        _flush_at_exit()
    finally:
        _flushing = False
        if _term_pending:
            _die_of_sigterm()


def _flush_at_exit() -> None:
    timeout = config.get("OTEL_TRACE_RUN_EXIT_TIMEOUT") / 1000.0
    provider = _state["provider"]
    done = threading.Event()
    for _processor, health in _state.get("processors", ()):
        if health.failing:
            # The collector is unreachable now: do not make the program wait
            # out retries at exit. Shutting the exporter down ends its retry
            # loop; what is left is counted as lost.
            try:
                health.shutdown()
            except Exception:
                pass

    def shutdown() -> None:
        try:
            provider.shutdown()
        except Exception:
            pass
        done.set()

    try:
        worker = threading.Thread(target=shutdown, name="trace-run-exit-flush", daemon=True)
        worker.start()
    except RuntimeError:  # 3.12+: no new threads at interpreter shutdown
        shutdown()
    if not done.wait(timeout / 2):
        # Half the time is gone and an export is still running: it is retrying
        # against a collector that does not answer. End the retries.
        for _processor, health in _state.get("processors", ()):
            if health.exporting:
                try:
                    health.shutdown()
                except Exception:
                    pass
    if not done.wait(timeout / 2):
        log.warning("flushing spans at exit took longer than %d ms; the rest are dropped"
                    % config.get("OTEL_TRACE_RUN_EXIT_TIMEOUT"))
    report_drops()


def stats() -> list:
    """Per exporter: target, spans ended, exported, failed, dropped."""
    out = []
    for processor, health in _state.get("processors", ()):
        out.append({
            "target": health.target,
            "ended": processor.ended,
            "exported": health.exported,
            "failed": health.failed,
            "dropped": processor.dropped(),
        })
    return out


def report_drops() -> None:
    for s in stats():
        lost = max(0, s["ended"] - s["exported"])
        if lost:
            log.warning("%d of %d spans were not exported to %s (%d dropped from the queue or unsent at exit, "
                        "%d failed to send)" % (lost, s["ended"], s["target"], max(0, lost - s["failed"]), s["failed"]))


def force_flush(timeout_millis: int = 5000) -> None:
    provider = _state.get("provider")
    if provider is not None:
        provider.force_flush(timeout_millis)


def reset_after_fork_for_tests() -> None:
    global _exit_done
    _exit_done = False


def state() -> dict:
    return _state
