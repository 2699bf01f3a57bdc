"""The base every trace-run instrumentor subclasses.

It is a real `BaseInstrumentor`, so programs can call
`FlaskInstrumentor().instrument()` themselves. It remembers every attribute it
wraps so that `uninstrument()` puts back the exact original objects.
`call_in_span` is the one place a wrapped call runs inside a span: the
instrumentation around it guarded, the call and its exception untouched.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Optional

import wrapt
from opentelemetry import context, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled, is_instrumentation_enabled

from . import registry
from .guard import Guard

__all__ = [
    "TraceRunInstrumentor", "is_instrumentation_enabled", "is_http_instrumentation_enabled", "call_in_span",
    "call_in_span_async",
]

_MISSING = object()
VERSION = "0.1.0"


class TraceRunInstrumentor(BaseInstrumentor):
    """Subclasses set `library` (a registry name) and implement `_patch()`."""

    library: str = ""

    def __init__(self) -> None:
        # BaseInstrumentor is a per-class singleton: __init__ may run again.
        if not hasattr(self, "_patched"):
            self._patched: list = []
            self.guard = Guard(self.library or type(self).__name__)
            self._tracer = None
            self._tracer_provider = None

    # -- BaseInstrumentor interface --------------------------------------------
    def instrumentation_dependencies(self) -> Collection[str]:
        entry = registry.BUILTIN.get(self.library)
        if entry is None or entry.distribution is None:
            return ()
        # psycopg2 ships as psycopg2 or psycopg2-binary: name the one installed.
        name = entry.distribution
        for candidate in (entry.distribution,) + tuple(a for a in entry.aliases if "-" in a):
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

    def _uninstrument(self, **kwargs: Any) -> None:
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
                schema_url="https://opentelemetry.io/schemas/1.26.0",
            )
        return tracer

    def wrap(self, owner: Any, attr: str, wrapper: Callable) -> None:
        """wrapt-wrap owner.attr, remembering the exact original for uninstrument()."""
        original = owner.__dict__.get(attr, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        if isinstance(getattr(owner, attr, None), wrapt.ObjectProxy) and original is not _MISSING:
            # Already wrapped (by us through another path, or by someone else): wrap again
            # only if it is not ours.
            if getattr(original, "_self_trace_run", False):
                return
        wrapt.wrap_function_wrapper(owner, attr, wrapper)
        new = owner.__dict__.get(attr) if hasattr(owner, "__dict__") else getattr(owner, attr)
        try:
            new._self_trace_run = True
        except Exception:
            pass
        self._patched.append((owner, attr, original))

    def set_original(self, owner: Any, attr: str, value: Any) -> None:
        """Replace owner.attr with value (not a wrapt wrapper), restored on uninstrument()."""
        original = owner.__dict__.get(attr, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        setattr(owner, attr, value)
        self._patched.append((owner, attr, original))


def call_in_span(guard: Guard, span: Any, token: Any, wrapped: Callable, args: tuple, kwargs: dict,
                 fail: Callable[[Any, BaseException], None], done: Optional[Callable[[Any, Any], None]] = None) -> Any:
    """wrapped(*args, **kwargs) as the work of `span`, which `token` made current.

    Either may be None (starting them failed, or there is nothing to make current).
    After the call the context is detached, then under `guard` the span is finished:
    `fail(span, exc)` if the call raised (the same exception object is re-raised),
    else `done(span, result)` (default: `span.end()`). Both must end the span.
    The call itself runs outside the guard.
    """
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        if token is not None:
            context.detach(token)
        if span is not None:
            with guard:
                fail(span, exc)
        raise
    if token is not None:
        context.detach(token)
    if span is not None:
        with guard:
            if done is None:
                span.end()
            else:
                done(span, result)
    return result


async def call_in_span_async(guard: Guard, span: Any, token: Any, wrapped: Callable, args: tuple, kwargs: dict,
                             fail: Callable[[Any, BaseException], None],
                             done: Optional[Callable[[Any, Any], None]] = None) -> Any:
    """call_in_span for coroutine functions (the same rules; the call is awaited)."""
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        if token is not None:
            context.detach(token)
        if span is not None:
            with guard:
                fail(span, exc)
        raise
    if token is not None:
        context.detach(token)
    if span is not None:
        with guard:
            if done is None:
                span.end()
            else:
                done(span, result)
    return result


def unwrap_all(obj: Any) -> Any:
    """The innermost wrapped callable (for tests and identity checks)."""
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj
