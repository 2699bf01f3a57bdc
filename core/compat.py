"""Every private name of OpenTelemetry (and of CPython's C API) that trace-run uses, in one module.

Each is reached through a feature check with a defined fallback: a release that renames or drops one
costs trace-run that one feature (said at debug level, or as a warning where a user would notice) and
never breaks the program. pyproject's dependency floor is the oldest set of releases this is tested
with (the floor leg in .ci/run). Only `opentelemetry.context` is imported here up front: instrumentors
import this module, the agent's start-up path does not.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any, Callable, Optional

from opentelemetry import context as _context


def _context_key(name: str, fallback: str) -> str:
    """The API's own key if it has it; else one of ours (trace-run's instrumentors still agree with each other)."""
    key = getattr(_context, name, None)
    return key if isinstance(key, str) else _context.create_key(fallback)


# The keys opentelemetry-instrumentation's suppress_instrumentation / suppress_http_instrumentation set.
SUPPRESS_INSTRUMENTATION_KEY = _context_key("_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation")
SUPPRESS_HTTP_INSTRUMENTATION_KEY = _context_key("_SUPPRESS_HTTP_INSTRUMENTATION_KEY",
                                                 "suppress_http_instrumentation")


# -- the global TracerProvider ---------------------------------------------------------------


def otlp_endpoint_of(processor: Any) -> Optional[str]:
    """The OTLP endpoint a Batch/SimpleSpanProcessor sends to (the SDK's `_batch_processor._exporter`
    or `span_exporter`, the exporter's `_endpoint`); None when it cannot be told (fallback: the
    processor is added as asked)."""
    exporter = getattr(getattr(processor, "_batch_processor", None), "_exporter", None)
    if exporter is None:
        exporter = getattr(processor, "span_exporter", None)
    endpoint = getattr(exporter, "_endpoint", None)
    if not isinstance(endpoint, str) or "otlp" not in type(exporter).__module__:
        return None
    return endpoint


def batch_emit(processor: Any) -> Optional[Any]:
    """What the SDK's BatchSpanProcessor's on_end calls for a sampled span (its `_batch_processor.emit`,
    SDK 1.34 and later): a caller that has checked the flag already queues with one call less. None:
    call on_end."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if type(processor) is not BatchSpanProcessor:
        return None
    emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
    return emit if callable(emit) else None


# the names BatchProcessor.emit's code uses (SDK 1.34-1.45, read there): where they are these, agent/_otlp_native.c
# does its common case itself (not shut down, not forked, queue not full), and calls it for the rest
_EMIT_NAMES = ("_shutdown", "_logger", "info", "_exporting", "_metrics", "drop_items", "_pid", "os", "getpid",
               "_bsp_reset_once", "do_once", "_at_fork_reinit", "len", "_queue", "_max_queue_size", "warning",
               "appendleft", "_max_export_batch_size", "_worker_awaken", "is_set", "set")


def known_batch_emit() -> Optional[Any]:
    """The SDK's BatchProcessor.emit where its code reads and does what this was written against (its names, in
    order; threading.Event.is_set returning its `_flag`); None elsewhere."""
    try:
        from opentelemetry.sdk._shared_internal import BatchProcessor
    except ImportError:
        return None
    emit = getattr(BatchProcessor, "emit", None)
    code = getattr(emit, "__code__", None)
    is_set = getattr(getattr(threading.Event, "is_set", None), "__code__", None)
    if code is None or code.co_names != _EMIT_NAMES or code.co_argcount != 2 or is_set is None \
            or is_set.co_names != ("_flag",):
        return None
    return emit


# the names BatchProcessor._export's code uses (SDK 1.45, read there): where they are these, quiet_batch_export's
# _export runs its steps instead
_EXPORT_NAMES = ("_export_lock", "_should_export_batch", "attach", "set_value", "_SUPPRESS_INSTRUMENTATION_KEY", "min",
                 "_max_export_batch_size", "len", "_queue", "range", "_metrics", "finish_items", "_exporter", "export",
                 "Exception", "_logger", "exception", "_exporting", "detach")


def _popped(queue: Any, count: int) -> tuple:
    """The `count` oldest records (at the back), as a tuple; nothing else of this is left once it returns."""
    pop = queue.pop
    return tuple([pop() for _ in range(count)])


def quiet_batch_export(processor: Any, keep_suppressed: bool, seal: Callable[[tuple], Any],
                       before: Callable[[], Any], awaken: Callable[[], Any]) -> bool:
    """Give the SDK's BatchProcessor behind `processor` (a BatchSpanProcessor) an `_export` of the same steps that
    holds nothing the garbage collector tracks while its exporter works and waits to retry (agent/otlp_retry.py
    says why): the batch a tuple given to `seal` (which leaves it untracked where its items are), its lock taken
    without a `with` block (whose bound __exit__ lives as long as the block), and on its worker thread the
    suppressing context attached once for good (`keep_suppressed`) rather than per batch (a Context and a Token),
    `before()` called there before a batch is taken and the event it waits on made by `awaken()` (with the Event's
    set, clear, is_set and wait; also in a forked child: agent/quiet_wait.py). False where BatchProcessor._export's
    code is not what this was written against (SDK 1.45, names for names): its own runs."""
    import types

    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        from opentelemetry.sdk import _shared_internal
    except ImportError:
        return False
    batching = getattr(processor, "_batch_processor", None)
    code = getattr(getattr(_shared_internal.BatchProcessor, "_export", None), "__code__", None)
    if type(processor) is not BatchSpanProcessor or type(batching) is not _shared_internal.BatchProcessor \
            or code is None or code.co_names != _EXPORT_NAMES or code.co_argcount != 2 or "_export" in vars(batching):
        return False
    logger, attach, detach, set_value = _shared_internal._logger, _context.attach, _context.detach, _context.set_value
    on_worker = threading.local()  # its worker thread has the suppressing context attached

    def _export(self, batch_strategy) -> None:
        if self._queue and threading.current_thread() is self._worker_thread:
            before()
        self._export_lock.acquire()
        try:
            iteration = 0
            while self._should_export_batch(batch_strategy, iteration):
                iteration += 1
                token = None
                if not getattr(on_worker, "suppressed", False):
                    token = attach(set_value(SUPPRESS_INSTRUMENTATION_KEY, True))
                    if keep_suppressed and threading.current_thread() is self._worker_thread:
                        on_worker.suppressed, token = True, None  # (a forked child's new worker attaches its own)
                count = min(self._max_export_batch_size, len(self._queue))
                batch = _popped(self._queue, count)
                seal(batch)
                self._metrics.finish_items(count)
                try:
                    self._exporter.export(batch)
                except Exception:
                    logger.exception("Exception while exporting %s.", self._exporting)
                batch = None
                if token is not None:
                    detach(token)
        finally:
            self._export_lock.release()

    batching._export = types.MethodType(_export, batching)
    _swap_awaken(batching, awaken)
    ref = weakref.ref(batching)
    os.register_at_fork(after_in_child=lambda: ref() is not None and _swap_awaken(ref(), awaken))  # after the SDK's
    return True


def _swap_awaken(batching: Any, awaken: Callable[[], Any]) -> None:
    """The worker's event made by `awaken()`; the one it may be waiting on now is set, so it comes round to the new."""
    old, batching._worker_awaken = batching._worker_awaken, awaken()
    old.set()


def noop_tracer_metrics() -> tuple:
    """(the SDK's no-op tracer-metrics class, the function it hands every span to call at its end) for
    SDK 1.40 and later, whose metrics are off by default: a span of that class may leave the call out.
    (None, None) where this SDK has none (`_tracer_metrics`)."""
    try:
        from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
    except ImportError:
        return None, None
    end = NoOpTracerMetrics().start_span(None, None)
    return (NoOpTracerMetrics, end) if callable(end) and end is NoOpTracerMetrics().start_span(None, None) \
        else (None, None)


def can_set_tracer_provider_again() -> bool:
    """The API sets its provider once (`_TRACER_PROVIDER_SET_ONCE`, `_TRACER_PROVIDER`). Fallback:
    False, and the agent's provider stays (program_provider warns)."""
    from opentelemetry import trace

    once = getattr(trace, "_TRACER_PROVIDER_SET_ONCE", None)
    return once is not None and hasattr(trace, "_TRACER_PROVIDER") and callable(type(once))


def allow_setting_tracer_provider_again() -> None:
    """Let the next `trace.set_tracer_provider` replace the current provider (after the check above)."""
    from opentelemetry import trace

    trace._TRACER_PROVIDER_SET_ONCE = type(trace._TRACER_PROVIDER_SET_ONCE)()


def update_resource(provider: Any, attributes: dict) -> bool:
    """Merge `attributes` into the provider's resource (the SDK's own at-fork path, `_update_resource`).
    Fallback: False, nothing changes (a forked child's spans keep the parent's process.pid)."""
    update = getattr(provider, "_update_resource", None)
    if update is None:
        return False
    from opentelemetry.sdk.resources import Resource

    update(Resource(attributes))
    return True


# -- OTLP exporters ----------------------------------------------------------------------------


def otlp_http_client() -> tuple:
    """(`_OTLPHTTPClient`, its Compression enum, the stock exporter's default headers) of the SDK.
    Raises ImportError where the SDK has no such client: the stock OTLP/HTTP exporter is used instead."""
    import importlib

    common_http = importlib.import_module("opentelemetry.exporter.otlp.common.http")
    proto_http = importlib.import_module("opentelemetry.exporter.otlp.proto.http")
    client = getattr(common_http, "_OTLPHTTPClient", None)
    headers = getattr(proto_http, "_OTLP_HTTP_HEADERS", None)
    if client is None or headers is None:
        raise ImportError("this SDK's OTLP/HTTP package has no _OTLPHTTPClient or _OTLP_HTTP_HEADERS")
    return client, common_http.Compression, dict(headers)


class HTTPRetry:
    """The parts of the SDK's `_OTLPHTTPClient.export` (1.45's) its retry loop is made of, read from one
    client, for agent/otlp_retry.py to run that loop itself; `of(client)` is None where this SDK lacks one
    (fallback: the client's own export)."""

    __slots__ = ("compress", "submit", "backoff", "is_retryable", "retry_after", "max_retries",
                 "is_connection_error", "shutdown_event", "logger", "kind", "timeout")

    @classmethod
    def of(cls, client: Any) -> Optional[HTTPRetry]:
        module = sys.modules.get(type(client).__module__)
        parts = cls()
        try:
            parts.compress, parts.submit, parts.backoff = client._compress, client._submit, client._compute_backoff
            parts.is_retryable, parts.retry_after = module._is_retryable, module._extract_retry_after
            parts.max_retries = int(module._MAX_RETRIES)
            parts.is_connection_error = client._transport.is_connection_error
            parts.shutdown_event, parts.logger = client._shutdown_event, client._logger
            parts.kind, parts.timeout = client._kind, float(client._timeout)
        except (AttributeError, TypeError, ValueError):
            return None
        return parts


def http_transport(library: str) -> tuple:
    """(transport class, result class) of the SDK's HTTP transport on `library` ("urllib3" or "requests").
    Raises ImportError where the SDK has none: trace-run's exporter and the capped answer are not used."""
    import importlib

    module = importlib.import_module("opentelemetry.exporter.http.transport._" + library)
    prefix = {"urllib3": "Urllib3", "requests": "Requests"}[library]
    transport = getattr(module, prefix + "HTTPTransport", None)
    result = getattr(module, prefix + "HTTPResult", None)
    if transport is None or result is None:
        raise ImportError("opentelemetry.exporter.http.transport._%s lacks %sHTTPTransport/Result" % (library, prefix))
    return transport, result


def transport_pool(transport: Any) -> Any:
    """The urllib3 PoolManager of the SDK's urllib3 transport (`_pool`), or None (then: its own request)."""
    return getattr(transport, "_pool", None)


def transport_session(transport: Any) -> Any:
    """The requests Session of the SDK's requests transport (`_session`), or None (then: its own request)."""
    return getattr(transport, "_session", None)


def exporter_transport(exporter: Any) -> Any:
    """The HTTP transport behind an OTLP/HTTP exporter (trace-run's: `_client._transport`), or None."""
    return getattr(getattr(exporter, "_client", None), "_transport", None)


def exporter_session(exporter: Any) -> Any:
    """The requests Session of the SDK's stock OTLP/HTTP exporter (`_session`), or None."""
    return getattr(exporter, "_session", None)


# The stock gRPC exporter's parts trace-run swaps its stub into (agent/otlp_grpc.py; an SDK that
# reconnects builds its new client from `_stub` too), and the method it overrides to hand over bytes
# already encoded.
GRPC_EXPORTER_NEEDS = ("_stub", "_client", "_channel")
GRPC_EXPORTER_OVERRIDES = ("_translate_data",)


def grpc_exporter_missing(exporter: Any, stock: type) -> list:
    """Which of those this exporter (built on the SDK's class `stock`) lacks. Fallback when any: it
    keeps the official encoder."""
    return ([name for name in GRPC_EXPORTER_NEEDS if not hasattr(exporter, name)]
            + [name for name in GRPC_EXPORTER_OVERRIDES if not hasattr(stock, name)])


def accepts_keyword(function: Any, name: str) -> bool:
    """Does `function` take the keyword `name`? (Public arguments that older SDKs lack, such as the gRPC
    exporter's `channel_options`: without it the channel's default 4 MiB limit caps the answer.)"""
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def set_grpc_stub(exporter: Any, stub_class: type) -> None:
    exporter._stub = stub_class  # also used when the SDK reconnects
    exporter._client = stub_class(exporter._channel)


def grpc_client(exporter: Any) -> Any:
    return getattr(exporter, "_client", None)


# -- the environment the SDK reads itself --------------------------------------------------------


class sdk_environ:
    """While the SDK is built: the variables in `drop` leave os.environ, those in `put` are set; all
    put back after. The SDK reads some variables itself and raises on garbage (opentelemetry.sdk.trace
    at import, opentelemetry.propagate on an unknown OTEL_PROPAGATORS name), which the registry has
    already reported. No feature check: it works with any SDK (one that reads less needs none of it)."""

    def __init__(self, drop, put: dict):
        self._drop, self._put = set(drop), dict(put)
        self._saved: dict = {}

    def __enter__(self):
        self._saved = {name: os.environ.get(name) for name in self._drop | set(self._put)}
        for name in self._drop:
            os.environ.pop(name, None)
        os.environ.update(self._put)
        return self

    def __exit__(self, *exc):
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return False


def parent_based_delegates(sampler: Any) -> Optional[list]:
    """The samplers a ParentBased sampler hands each decision to (its private `_root`,
    `_remote_parent_sampled`, ...). Fallback: None (the caller treats the sampler as unknown)."""
    names = ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled",
             "_local_parent_not_sampled")
    delegates = [getattr(sampler, name, None) for name in names]
    return None if any(d is None for d in delegates) else delegates


# -- CPython ---------------------------------------------------------------------------------------


def default_signal_from_any_thread(signum: int) -> bool:
    """Give `signum` its default disposition from a thread that is not the main one (signal.signal
    cannot): CPython's C API PyOS_setsig through ctypes. Fallback: False (the caller ends the process
    itself)."""
    try:
        import ctypes

        setsig: Optional[Any] = getattr(ctypes.pythonapi, "PyOS_setsig", None)
        if setsig is None:
            return False
        setsig.restype, setsig.argtypes = ctypes.c_void_p, (ctypes.c_int, ctypes.c_void_p)
        setsig(signum, None)  # SIG_DFL
        return True
    except Exception:
        return False


def before_threads_stop(callback: Any) -> bool:
    """Call callback() on the main thread when it ends, before `concurrent.futures` refuses new work
    (CPython's threading._register_atexit: its hooks run in reverse order of registration, so one
    registered after concurrent.futures was imported runs first). Fallback: False (not called)."""
    import threading

    register = getattr(threading, "_register_atexit", None)
    if register is None:
        return False
    try:
        register(callback)
    except RuntimeError:  # the interpreter is already shutting down
        return False
    return True


def importing_here() -> bool:
    """Is this thread inside an import: does it own one of importlib's module locks (`_bootstrap`'s
    `_module_locks`, each lock's `owner`, 3.9 to 3.13)? Fallback: False (no import is known of)."""
    try:
        from importlib import _bootstrap

        refs = list(_bootstrap._module_locks.values())  # a copy made in C: other threads may import meanwhile
    except Exception:
        return False
    me = threading.get_ident()
    for ref in refs:
        lock = ref()
        if lock is not None and getattr(lock, "owner", None) == me:
            return True
    return False


def on_event_loop() -> bool:
    """Is an asyncio event loop running on this thread (asyncio's `_get_running_loop`, exported since
    3.7)? Fallback: False."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        return asyncio._get_running_loop() is not None
    except Exception:
        return False


def in_thread(work: Callable[[], Any], name: str) -> threading.Event:
    """Run work() on a daemon thread; the event is set when it returns (or raised). Where no thread can
    start (3.12+, at interpreter shutdown), work() runs here."""
    done = threading.Event()

    def run() -> None:
        try:
            work()
        except Exception:
            pass
        done.set()

    try:
        threading.Thread(target=run, name=name, daemon=True).start()
    except RuntimeError:  # 3.12+: no new threads at interpreter shutdown
        run()
    return done
