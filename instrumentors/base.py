"""The base every trace-run instrumentor subclasses.

It has `BaseInstrumentor`'s interface (opentelemetry-instrumentation), so
programs can call `FlaskInstrumentor().instrument()` themselves, and counts as
one: it is registered as a virtual subclass the moment
`opentelemetry.instrumentation.instrumentor` is imported, so `isinstance` and
`issubclass` agree. It does not import that module itself: it pulls in
`packaging` and the instrumentation's `_semconv` (~30 ms on every traced
process start) for a dependency check the agent skips; a program calling
`instrument()` without `skip_dep_check` gets the check, imported then.
It remembers every attribute it wraps so that `uninstrument()` puts back the
exact original objects. Wrappers that run a call inside a span are built by
spans.py; the wrapper object is a plain function for a plain method, else wrapt's C
FunctionWrapper (core.wrapping).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Collection

from opentelemetry import trace
from trace_run.core import hooks, runtime_context, wrapping
from trace_run.core.compat import SUPPRESS_HTTP_INSTRUMENTATION_KEY, SUPPRESS_INSTRUMENTATION_KEY
from trace_run.core.guard import Guard
from trace_run.core.runtime_context import get_current
from trace_run.core.version import SCHEMA_URL, VERSION

from . import registry

__all__ = ["TraceRunInstrumentor", "is_instrumentation_enabled", "instrumentation_enabled_in",
           "is_http_instrumentation_enabled"]

_MISSING = object()
_SUPPRESS_PLAIN = runtime_context.SUPPRESS_PLAIN  # the old spelling opentelemetry-instrumentation also reads
_UPSTREAM = "opentelemetry.instrumentation.instrumentor"


def is_instrumentation_enabled() -> bool:
    """opentelemetry-instrumentation's `is_instrumentation_enabled`, without importing its utils
    (which import all of wrapt): False inside `suppress_instrumentation()`."""
    return instrumentation_enabled_in(get_current())


def instrumentation_enabled_in(ctx) -> bool:
    """`is_instrumentation_enabled()` for a context already read (a caller that reads more of it)."""
    return not (ctx.get(SUPPRESS_INSTRUMENTATION_KEY) or ctx.get(_SUPPRESS_PLAIN))


def is_http_instrumentation_enabled() -> bool:
    """False inside `suppress_instrumentation()` or `suppress_http_instrumentation()`."""
    ctx = get_current()
    return instrumentation_enabled_in(ctx) and not ctx.get(SUPPRESS_HTTP_INSTRUMENTATION_KEY)


if runtime_context.NATIVE is not None:  # the same checks in C (core/_call_native.c)
    instrumentation_enabled_in = runtime_context.NATIVE.enabled_in  # noqa: F811
    is_http_instrumentation_enabled = runtime_context.NATIVE.http_enabled  # noqa: F811


def _upstream_log(level: str, message: str) -> None:
    """Said where BaseInstrumentor says it: its logger (imported only on these rare paths)."""
    import logging

    getattr(logging.getLogger(_UPSTREAM), level)(message)


class TraceRunInstrumentor:
    """Subclasses set `library` (a registry name) and implement `_patch()`."""

    library: str = ""
    _instance = None
    _is_instrumented_by_opentelemetry = False

    def __new__(cls, *args: Any, **kwargs: Any) -> TraceRunInstrumentor:
        # BaseInstrumentor's: one instance per class (looked up through the MRO, as there).
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __init__(self) -> None:
        # A per-class singleton: __init__ may run again.
        if not hasattr(self, "_patched"):
            self._patched: list = []
            self.guard = Guard(self.library or type(self).__name__)
            self._tracer = None
            self._tracer_provider = None
            self.applied_by_agent = False  # set by the agent (boot) when it instruments the library

    # -- BaseInstrumentor interface --------------------------------------------
    def instrument(self, **kwargs: Any) -> Any:
        """BaseInstrumentor's, except when the agent instrumented the library already and the program
        asks again (as programs written for opentelemetry-instrument do): no "already instrumented"
        warning, and a `tracer_provider` it passes is the one the spans go to from then on."""
        if self.applied_by_agent and self.is_instrumented_by_opentelemetry:
            provider = kwargs.get("tracer_provider")
            if provider is not None:
                self._tracer_provider, self._tracer = provider, None
            return None
        if self._is_instrumented_by_opentelemetry:
            _upstream_log("warning", "Attempting to instrument while already instrumented")
            return None
        skip_dep_check = kwargs.pop("skip_dep_check", False)
        raise_exception_on_conflict = kwargs.pop("raise_exception_on_conflict", False)
        if not skip_dep_check:
            conflict = self._check_dependency_conflicts()
            if conflict:
                if raise_exception_on_conflict:
                    from opentelemetry.instrumentation.dependencies import DependencyConflictError

                    raise DependencyConflictError(conflict)
                _upstream_log("error", _conflict_text(conflict, type(self).__name__))
                return None
        result = self._instrument(**kwargs)
        self._is_instrumented_by_opentelemetry = True
        return result

    def uninstrument(self, **kwargs: Any) -> Any:
        """BaseInstrumentor's: put every original back."""
        if self._is_instrumented_by_opentelemetry:
            result = self._uninstrument(**kwargs)
            self._is_instrumented_by_opentelemetry = False
            return result
        _upstream_log("warning", "Attempting to uninstrument while already uninstrumented")
        return None

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return self._is_instrumented_by_opentelemetry

    def _check_dependency_conflicts(self) -> Any:
        """BaseInstrumentor's: the first missing or conflicting dependency, or None."""
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

        return get_dependency_conflicts(self.instrumentation_dependencies())

    def instrumentation_dependencies(self) -> Collection[str]:
        entry = registry.BUILTIN.get(self.library)
        if entry is None or entry.distribution is None:
            return ()
        # psycopg2 ships as psycopg2 or psycopg2-binary: name the one installed.
        name = entry.distribution
        for candidate in entry.distributions:
            try:
                from importlib.metadata import version

                version(candidate)
            except Exception:
                continue
            name = candidate
            break
        return ("%s %s" % (name, entry.supported),)

    def _instrument(self, **kwargs: Any) -> None:
        self._tracer_provider = kwargs.get("tracer_provider")
        self._tracer = None
        self._patch(**kwargs)
        entry = registry.BUILTIN.get(self.library)
        if entry is not None and entry.submodules and not self.applied_by_agent:  # the agent armed these at start
            self._instrumenting = True  # instrument() marks us instrumented only after this returns
            try:
                for module, method in entry.submodules:
                    hooks.when_imported(module, partial(self.patch_submodule, method))
            finally:
                self._instrumenting = False

    def patch_submodule(self, method: str, module: Any) -> None:
        """A later part of the library (registry `submodules`) was imported: `method` patches it."""
        if self.is_instrumented_by_opentelemetry or getattr(self, "_instrumenting", False):
            with self.guard:
                getattr(self, method)(module)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.applied_by_agent = False
        while self._patched:
            owner, attr, original = self._patched.pop()
            if original is _MISSING:
                try:
                    delattr(owner, attr)
                except AttributeError:
                    pass
            else:
                setattr(owner, attr, original)
        self._unpatch(**kwargs)

    # -- for subclasses ------------------------------------------------------------
    def _patch(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def _unpatch(self, **kwargs: Any) -> None:
        """Undo anything not done through wrap()."""

    @property
    def tracer(self) -> trace.Tracer:
        tracer = self._tracer
        if tracer is None:
            tracer = self._tracer = trace.get_tracer(
                "trace_run.instrumentors." + (self.library or "custom"),
                VERSION,
                tracer_provider=self._tracer_provider,
                schema_url=SCHEMA_URL,
            )
        return tracer

    def wrap(self, owner: Any, attr: str, wrapper: Callable) -> None:
        """Wrap owner.attr (core.wrapping: a plain function for a plain method, else wrapt's FunctionWrapper),
        remembering the exact original for uninstrument()."""
        original = owner.__dict__.get(attr, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        if wrapping.is_wrapper(original) and getattr(original, "_self_trace_run", False):
            return  # ours already (through another path); someone else's wrapper is wrapped again
        new = wrapping.wrap_function_wrapper(owner, attr, wrapper)
        try:
            new._self_trace_run = True
        except Exception:
            pass
        self._patched.append((owner, attr, original))


def _conflict_text(conflict: Any, name: str) -> str:
    """The message BaseInstrumentor logs for a dependency conflict (`_format_message` where the
    installed release has it)."""
    format_message = getattr(conflict, "_format_message", None)
    return format_message(name) if callable(format_message) else str(conflict)


def _register_as_base_instrumentor(module: Any) -> None:
    """`isinstance(FlaskInstrumentor(), BaseInstrumentor)`: once the program can name it, it is true."""
    base = getattr(module, "BaseInstrumentor", None)
    if base is not None and hasattr(base, "register"):
        base.register(TraceRunInstrumentor)


hooks.when_imported(_UPSTREAM, _register_as_base_instrumentor)
