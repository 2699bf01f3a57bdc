"""A program that sets up its own TracerProvider: the agent follows it.

The agent installs its provider as soon as the program imports
opentelemetry.trace or a traced library, so the program's own
`trace.set_tracer_provider(...)` would be refused by the API ("Overriding of
current TracerProvider is not allowed") and its exporter would see nothing.
Instead the program's provider becomes the global one; every tracer the
agent's provider handed out (to our instrumentors, to third-party ones, to the
program's own early `get_tracer` calls) moves to it, once; and the agent's
pipeline sends what it holds and shuts down (runtime.follow_program).
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any, Callable, Iterable, Optional

from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider
from trace_run.core import compat, log
from trace_run.core.urlmask import masked

_lock = threading.Lock()
_tracers: weakref.WeakSet = weakref.WeakSet()
_ours: Optional[TracerProvider] = None
_program: Optional[trace.TracerProvider] = None
_api_set: Optional[Callable[[trace.TracerProvider], None]] = None
_endpoints: frozenset = frozenset()
_on_follow: Optional[Callable[[trace.TracerProvider], None]] = None  # the runtime: ours sends what it holds, stops


def _new_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a fork while another thread held it must not leave it held


os.register_at_fork(after_in_child=_new_lock_in_child)


class FollowingTracer(trace.ProxyTracer):
    """A tracer of the agent's provider that moves to the program's provider when it is set.

    `start_span` is the real tracer's bound method stored on the instance, so
    the per-span path is the SDK tracer's own; the move swaps it once.
    `start_as_current_span` (ProxyTracer's) looks the real tracer up at each
    use, so a function decorated with it before the move follows too.
    """

    def __init__(self, real: trace.Tracer, *key: Any) -> None:
        super().__init__(*key)
        self.key = key
        self.follow(real)

    def follow(self, real: trace.Tracer) -> None:
        self._real_tracer = real
        self.start_span = real.start_span
        deferred = getattr(real, "start_span_deferred", None)  # trace-run's span class only
        if deferred is not None:
            self.start_span_deferred = deferred
        else:
            self.__dict__.pop("start_span_deferred", None)
        # trace-run's span class: its context manager, made around this tracer (it starts spans with the
        # start_span above, so one made before the move follows too)
        fast = sys.modules.get("trace_run.agent.fastspan")
        self._current_span = fast.CurrentSpan if fast is not None and type(real) is fast.Tracer else None

    def start_as_current_span(self, name: str, context: Any = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
                              attributes: Any = None, links: Any = None, start_time: Optional[int] = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Any:
        """The real tracer's, looked up at each use: a function decorated before the move follows too.
        One small object, not ProxyTracer's generator around the real tracer's."""
        current_span = self._current_span
        if current_span is not None:
            return current_span(self, (name, context, kind, attributes, links, start_time, record_exception,
                                       set_status_on_exception), end_on_exit)
        return _Following(self, (name, context, kind, attributes, links, start_time, record_exception,
                                 set_status_on_exception, end_on_exit))

    def __getattr__(self, name: str) -> Any:
        # the SDK tracer's other attributes (sampler, resource, ...) for code that reads them
        if name.startswith("__") or name == "_real_tracer":
            raise AttributeError(name)
        return getattr(self._real_tracer, name)


class _Following:
    """FollowingTracer.start_as_current_span: the current real tracer's context manager, made on entry."""

    __slots__ = ("_tracer", "_args", "_cm")

    def __init__(self, tracer: FollowingTracer, args: tuple) -> None:
        self._tracer, self._args = tracer, args

    def __enter__(self) -> Any:
        self._cm = self._tracer._real_tracer.start_as_current_span(*self._args)
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)

    def __call__(self, function: Callable) -> Callable:
        from .fastspan import span_each_call

        return span_each_call(self._tracer, self._args, function)


class AgentTracerProvider(TracerProvider):
    """The agent's provider: the tracers it hands out follow the program's provider. Its tracers make
    trace-run's span class (agent/fastspan.py) unless `fast_spans` is False (OTEL_TRACE_RUN_SPAN_CLASS=sdk)."""

    fast_spans = False

    def add_span_processor(self, span_processor) -> None:
        """A second OTLP exporter to the endpoint trace-run already exports to is not added: a library
        that configures export from the same OTEL_* variables (FastAPI's telemetry does, onto whatever
        provider is set) would otherwise send every span twice."""
        if self is _ours:
            endpoint = None
            try:
                endpoint = compat.otlp_endpoint_of(span_processor)
            except Exception:
                pass
            if endpoint is not None and endpoint.rstrip("/") in _endpoints:
                log.info("a span processor exporting to %s was added to trace-run's provider, which already "
                         "exports there; it is left out (each span is sent once)" % masked(endpoint))
                return
        super().add_span_processor(span_processor)

    def get_tracer(self, instrumenting_module_name: str, instrumenting_library_version: Optional[str] = None,
                   schema_url: Optional[str] = None, attributes: Any = None) -> trace.Tracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        with _lock:
            if _program is not None:
                return _program.get_tracer(*key)
            real = super().get_tracer(*key)
            if not isinstance(real, SdkTracer):  # OTEL_SDK_DISABLED: the SDK's no-op tracer
                return real
            if self.fast_spans:
                from . import fastspan

                real = fastspan.adopt(real)
            tracer = FollowingTracer(real, *key)
            _tracers.add(tracer)
            return tracer


def arm(provider: AgentTracerProvider, on_follow: Callable[[trace.TracerProvider], None],
        endpoints: Iterable[str] = ()) -> None:
    """`provider` is now the global one: the program's set_tracer_provider hands over from it (then
    on_follow); `endpoints`: the OTLP endpoints it exports to."""
    global _ours, _api_set, _on_follow, _endpoints
    _ours, _on_follow = provider, on_follow
    _endpoints = frozenset(e.rstrip("/") for e in endpoints)
    if _api_set is None:
        _api_set = trace.set_tracer_provider
        trace.set_tracer_provider = set_tracer_provider


def set_tracer_provider(tracer_provider: trace.TracerProvider) -> None:
    """The API's set_tracer_provider, except that a provider of the program's replaces the agent's."""
    if _program is not None or tracer_provider is _ours or trace.get_tracer_provider() is not _ours:
        _api_set(tracer_provider)  # not ours to replace: the API's own rules (and warning)
        return
    from trace_run.core.guard import Guard

    followed = False
    with Guard("set_tracer_provider"):
        followed = _follow(tracer_provider)
    if not followed and trace.get_tracer_provider() is not tracer_provider:
        _api_set(tracer_provider)


def _follow(tracer_provider: trace.TracerProvider) -> bool:
    global _program
    if not compat.can_set_tracer_provider_again():
        log.warning("the program set its own TracerProvider, but this opentelemetry-api (%s) cannot hand over "
                    "to it; the agent's provider stays in use" % _api_version())
        return False
    with _lock:
        if _program is not None or trace.get_tracer_provider() is not _ours:
            return False  # another thread was first
        # The API sets its provider once; let it set the program's in place of ours.
        compat.allow_setting_tracer_provider_again()
        _api_set(tracer_provider)
        _program = tracer_provider
        moved = [(t, tracer_provider.get_tracer(*t.key)) for t in list(_tracers)]
        for tracer, real in moved:
            tracer.follow(real)
        _tracers.clear()
    log.info("the program set up its own TracerProvider; trace-run follows it: from now on every span goes to "
             "the program's sampler, processors and exporters (trace-run's exporter sends what it holds, then stops)")
    from trace_run.core import config

    if config.get("OTEL_TRACE_RUN_REDACT_ATTRIBUTES") or config.get("OTEL_TRACE_RUN_HASH_ATTRIBUTES"):
        log.warning("OTEL_TRACE_RUN_REDACT_ATTRIBUTES and OTEL_TRACE_RUN_HASH_ATTRIBUTES act in trace-run's "
                    "exporters only: the program's own exporters get spans without them")
    if _on_follow is not None:
        _on_follow(tracer_provider)
    return True


def _api_version() -> str:
    try:
        from importlib.metadata import version

        return version("opentelemetry-api")
    except Exception:
        return "unknown version"

