"""The live SDK of this process: set up once, on first need; flushed at exit and
on SIGTERM with a bounded timeout; re-armed after fork by the SDK itself.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from trace_run.core import compat, config, hooks, lifecycle, log

_lock = threading.RLock()
_state: dict = {}  # provider, propagator, processors, plan
_exit_done = False
_flushing = False
_term_pending = False
_exit_lock = threading.RLock()
_flushed = threading.Event()  # set when the exit flush is over
_flusher = None  # the thread running it


def provider_ready() -> bool:
    return "provider" in _state


def ensure_sdk() -> None:
    """Build and install the TracerProvider and propagator, once per process.

    Built with the import hooks held (core.hooks): the hooks its own imports trigger
    (`opentelemetry.trace`, the threading instrumentor) run once it is in place."""
    if "provider" in _state or _state.get("failed") or hooks.building():
        return
    with _lock, hooks.held():
        if "provider" in _state or _state.get("failed"):
            return
        try:
            _setup()
        except Exception:
            _state["failed"] = True
            raise


def _setup() -> None:
    from opentelemetry import trace
    from trace_run.core import urlmask

    from . import sdk

    _quiet_sdk_loggers()
    plan = sdk.resolve()
    urlmask.scrub_logs(_EXPORT_LOGGERS, *(e["endpoint"] for e in plan["exporters"] if "endpoint" in e))
    # The SDK reads some variables itself and raises on garbage: opentelemetry.sdk.trace at import
    # (e.g. OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=lots), opentelemetry.propagate on an unknown OTEL_PROPAGATORS
    # name. We warned about those already; while it is built they are away, and OTEL_PROPAGATORS holds
    # the names that resolved.
    bad = {w.split("=", 1)[0] for w in config.WARNINGS if "=" in w.split(" ", 1)[0]}
    with compat.sdk_environ(bad, {"OTEL_PROPAGATORS": ",".join(plan["propagators"]) or "none"}):
        from opentelemetry import propagate  # noqa: F401 - imported here: it reads OTEL_PROPAGATORS at import

        provider, propagator, processors = sdk.build(plan)
    trace.set_tracer_provider(provider)
    _state.update(provider=provider, propagator=propagator, processors=processors, plan=plan)
    install_textmap()
    if trace.get_tracer_provider() is provider:
        from . import program_provider

        program_provider.arm(provider, follow_program,
                             [e["endpoint"] for e in plan["exporters"] if e.get("name") == "otlp"])
    atexit.register(flush_at_exit)
    lifecycle.on_exit_flush(flush_at_exit)
    os.register_at_fork(after_in_child=_child_pid)  # before sigterm's: a child's SIGTERM finds fresh locks
    _install_sigterm()


def prepare_exporters_for_fork() -> None:
    """Import what each exporter will import, now, in the parent (LazyExporter.prepare_for_fork)."""
    for _processor, health in _state.get("processors", ()):
        health.prepare_for_fork()


def install_textmap() -> None:
    """Make trace-run's propagator the global one, now or at a later call. A program whose first
    OpenTelemetry import is `opentelemetry.propagate` builds the SDK half-way through that module
    (its own propagators import opentelemetry.trace before `set_global_textmap` is defined): then
    it is done when the next library is instrumented."""
    propagator = _state.get("propagator")
    if propagator is None or _state.get("textmap_set"):
        return
    set_textmap = getattr(sys.modules.get("opentelemetry.propagate"), "set_global_textmap", None)
    if set_textmap is not None:
        set_textmap(propagator)
        _state["textmap_set"] = True


def _child_pid() -> None:
    """A forked child is another process: its spans carry its own process.pid.
    (TracerProvider._update_resource is the SDK's own at-fork path; left alone
    if a future SDK drops it.) Its exit-flush locks are its own too."""
    global _exit_lock, _flushed, _flushing
    _exit_lock, _flushed, _flushing = threading.RLock(), threading.Event(), False  # the fork may have caught them held
    if _exit_done:
        _flushed.set()  # the parent's exit flush, done or not, is nothing to wait for here
    try:
        compat.update_resource(_state["provider"], {"process.pid": os.getpid(), "process.parent_pid": os.getppid()})
    except Exception:
        pass


def _silent(_record) -> bool:
    """A logging filter that passes nothing."""
    return False


def _silence(name: str, on: bool = True) -> None:
    """Logger `name` quiet (or speaking again). `disabled` alone is not enough: `logging.config.dictConfig`
    with `disable_existing_loggers: False` (Django's setup, uvicorn's and gunicorn's configs) sets it back to
    False on every logger that exists, and the SDK's lines (and the header warnings' API keys) would reach the
    program's stderr; it leaves a logger's filters alone."""
    import logging

    logger = logging.getLogger(name)
    logger.disabled = on
    if on:
        logger.addFilter(_silent)  # (once: addFilter skips a filter already there)
    else:
        logger.removeFilter(_silent)


def _quiet_sdk_loggers() -> None:
    """The SDK logs every failed batch and every full queue; we say it once, ourselves."""
    # Its warnings quote OTEL_EXPORTER_OTLP_HEADERS entries (API keys), even at debug; we report them masked.
    _silence("opentelemetry.util.re")
    if config.get("OTEL_LOG_LEVEL") == "debug":
        return

    for name in _EXPORT_LOGGERS + ("opentelemetry.baggage.propagation",):  # per logger: children are listed too
        # (baggage.propagation quotes whole oversized baggage headers from the network, per request)
        _silence(name)
    import logging

    from .own_logs import not_ours

    for name in _HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(not_ours)


# The HTTP client under the OTLP/HTTP exporter: its lines during an export of ours are left out (exporthealth).
_HTTP_CLIENT_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry", "urllib3.response")


# The SDK's batching and OTLP exporters: they speak for the program again once it has its own pipeline.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.common",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)


def _install_sigterm() -> None:
    from . import sigterm

    sigterm.install(on_sigterm)


def on_sigterm() -> None:
    """Flush, then die of SIGTERM exactly as the program would have. Called by sigterm's
    Python-level handler (main thread) or its watcher thread, whichever comes first."""
    global _term_pending
    with _exit_lock:
        _term_pending = True
        own = _flushing and _flusher == threading.get_ident()
    if own:
        return  # we interrupted this thread's own flush (atexit, multiprocessing's finalizers): it dies when done
    flush_at_exit()  # dies when done, or waits for another thread's flush
    _die_of_sigterm()


def _die_of_sigterm() -> None:
    from . import sigterm

    sigterm.die()


def flush_at_exit() -> None:
    """Shut the pipeline down within OTEL_TRACE_RUN_EXIT_TIMEOUT; report drops. A later caller
    waits for another thread's flush (the process must not exit under it), then dies of a
    SIGTERM that came meanwhile."""
    global _exit_done, _flushing, _flusher
    with _exit_lock:  # re-entrant: the Python-level SIGTERM handler may run in the middle of this
        if "provider" not in _state:
            return
        first = not _exit_done
        if first:
            _flushing, _exit_done, _flusher = True, True, threading.get_ident()
    if not first:
        if _flusher != threading.get_ident():
            _flushed.wait(config.get("OTEL_TRACE_RUN_EXIT_TIMEOUT") / 1000.0 + 1)
            if _term_pending:
                _die_of_sigterm()
        return
    try:
        _flush_at_exit()
    finally:
        with _exit_lock:
            _flushing = False
        _flushed.set()
        if _term_pending:
            _die_of_sigterm()


def _flush_at_exit() -> None:
    timeout = config.get("OTEL_TRACE_RUN_EXIT_TIMEOUT") / 1000.0
    deadline = time.monotonic() + timeout
    for _processor, health in _state.get("processors", ()):
        if health.failing:
            # The collector is unreachable now: do not make the program wait
            # out retries at exit. Shutting the exporter down ends its retry
            # loop; what is left is counted as lost.
            try:
                health.shutdown()
            except Exception:
                pass
    started = time.monotonic()
    done = _shut_down_ours()
    if not _wait_unless_refused(done, timeout / 2, started):
        # Half the time is gone and an export is still running: it is retrying
        # against a collector that does not answer. Or nobody listens at the
        # collector (agent/unreachable.py): no retry will reach it. End the retries.
        for _processor, health in _state.get("processors", ()):
            if health.exporting:
                try:
                    health.shutdown()
                except Exception:
                    pass
    if not done.wait(timeout / 2):
        log.warning("flushing spans at exit took longer than %d ms; the rest are dropped"
                    % config.get("OTEL_TRACE_RUN_EXIT_TIMEOUT"))
    _flush_program(deadline)
    report_drops()


def _wait_unless_refused(done: threading.Event, seconds: float, started: float) -> bool:
    """`done.wait(seconds)`, given up as soon as an export attempt made since `started` (the exit's flush)
    found nobody listening. An attempt refused before is not enough: the collector may be back by the
    exporter's next attempt (a restart)."""
    from . import unreachable

    end = time.monotonic() + seconds
    while not done.wait(max(0.0, min(0.02, end - time.monotonic()))):
        if time.monotonic() >= end or any(health.exporting and unreachable.since(max(started, health.export_started))
                                          for _processor, health in _state.get("processors", ())):
            return done.is_set()
    return True


def _shut_down_ours() -> threading.Event:
    """Our provider's shutdown (send what it holds, end its threads), started once: at exit, or
    earlier when the program's own provider takes over."""
    with _lock:
        done = _state.get("shut_down")
        if done is None:
            done = _state["shut_down"] = compat.in_thread(_shut_down, "trace-run-exit-flush")
    return done


def _shut_down() -> None:
    _state["provider"].shutdown()
    if "program_provider" in _state:
        for name in _EXPORT_LOGGERS:  # the program's exporters may speak again (ours have stopped)
            _silence(name, on=False)


def follow_program(provider) -> None:
    """The program set up its own provider (program_provider): ours sends what it holds and stops."""
    _state["program_provider"] = provider
    _shut_down_ours()


def _flush_program(deadline: float) -> None:
    """Flush the program's own provider, within what is left of the exit timeout; never shut it
    down (the program's to do). At a normal exit the SDK's own atexit hook has shut it down before
    ours runs, and this returns at once; after SIGTERM, or in a child that leaves through
    os._exit, it is what still sends the program's spans."""
    provider = _state.get("program_provider")
    flush = getattr(provider, "force_flush", None)
    left = deadline - time.monotonic()
    if flush is None or left <= 0:
        return
    compat.in_thread(lambda: flush(int(left * 1000)), "trace-run-exit-flush").wait(left)


def stats() -> list:
    """Per exporter, where each span that ended went: exported (acknowledged), failed (refused or
    unreachable), unanswered (sent, no answer before a timeout or the exit: may have arrived),
    dropped (never sent). These four add up to `ended`."""
    out = []
    for processor, health in _state.get("processors", ()):
        counts = health.counts()  # first: a batch taken from the queue after this is still "not handed"
        ended = processor.ended
        out.append({
            "target": health.target,
            "ended": ended,
            "exported": counts["exported"],
            "failed": counts["failed"],
            "unanswered": counts["unanswered"] + counts["in_flight"],
            "dropped": max(0, ended - counts["handed"]) + counts["unsent"],
        })
    return out


def report_drops() -> None:
    for s in stats():
        lost = s["dropped"] + s["failed"] + s["unanswered"]
        if lost:
            unanswered = (", %d sent without an answer before the exit or a timeout (they may have arrived)"
                          % s["unanswered"]) if s["unanswered"] else ""
            log.warning("%d of %d spans were not exported to %s (%d dropped from the queue or unsent at exit, "
                        "%d failed to send%s)" % (lost, s["ended"], s["target"], s["dropped"], s["failed"], unanswered))


def state() -> dict:
    return _state
