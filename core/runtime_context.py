"""The OpenTelemetry context's attach, detach and get_current, a layer shorter.

The API's `context.attach(ctx)` calls the runtime context's `attach`, which
sets a ContextVar; `detach` and `get_current` likewise. With the API's own
ContextVarsRuntimeContext (the default, and the only one the API ships), these
are that ContextVar's `set`, `reset` and `get`: the same effect, two Python
calls fewer each, and a request's server span attaches its context 2-4 times.
With any other runtime context (OTEL_PYTHON_CONTEXT), the API's functions.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Callable

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.context.context import Context

__all__ = ["attach", "detach", "get_current", "span_in", "current_span", "with_span"]


def _context_var():
    """The runtime context's ContextVar, where it is the API's ContextVarsRuntimeContext; else None."""
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

        runtime = context_api._RUNTIME_CONTEXT
        var = runtime._current_context
    except (ImportError, AttributeError):
        return None
    return var if type(runtime) is ContextVarsRuntimeContext and type(var) is ContextVar else None


_VAR = _context_var()


def _detach(token: Token) -> None:
    try:
        _reset(token)
    except Exception:  # a token of another context, or used twice: the API's answer (it logs why)
        context_api.detach(token)


if _VAR is not None:
    attach: Callable[[Context], Token] = _VAR.set
    get_current: Callable[[], Context] = _VAR.get
    _reset = _VAR.reset
    detach: Callable[[Token], None] = _detach
else:
    attach, detach, get_current = context_api.attach, context_api.detach, context_api.get_current


# -- the span in a context: trace.get_current_span and set_span_in_context, without their layers ----------

_SPAN_KEY = trace_api._SPAN_KEY
_INVALID_SPAN = trace_api.INVALID_SPAN
_Span = trace_api.Span
SPAN_TYPES: set = set()  # classes seen to be API Spans: isinstance against the ABC runs Python code each time
_MAX_SPAN_TYPES = 64


def checked_span(span) -> trace_api.Span:
    """`span` if it is an API Span (its class remembered in SPAN_TYPES), else INVALID_SPAN."""
    if isinstance(span, _Span):
        kind = type(span)
        if kind is span.__class__ and len(SPAN_TYPES) < _MAX_SPAN_TYPES:  # not a proxy posing as its target
            SPAN_TYPES.add(kind)
        return span
    return _INVALID_SPAN


def span_in(context: Context) -> trace_api.Span:
    """`trace.get_current_span(context)` for a context at hand."""
    span = context.get(_SPAN_KEY)
    if type(span) in SPAN_TYPES:
        return span
    return _INVALID_SPAN if span is None else checked_span(span)


def current_span() -> trace_api.Span:
    """`trace.get_current_span()`."""
    span = get_current().get(_SPAN_KEY)
    if type(span) in SPAN_TYPES:
        return span
    return _INVALID_SPAN if span is None else checked_span(span)


_dict_set = dict.__setitem__
# the API's Context is a dict that refuses changes: a copy made as a dict, then set as one, is set_value's
DICT_CONTEXT = issubclass(Context, dict) and Context.__init__ is dict.__init__ and Context.__new__ is dict.__new__

if DICT_CONTEXT:
    def with_span(span: trace_api.Span, context: Context = None) -> Context:
        """`trace.set_span_in_context(span, context)`: a copy of `context` (default: the current one) with `span`."""
        new = Context(get_current() if context is None else context)
        _dict_set(new, _SPAN_KEY, span)
        return new
else:
    with_span = trace_api.set_span_in_context
