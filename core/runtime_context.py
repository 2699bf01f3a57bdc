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
from opentelemetry.context.context import Context

__all__ = ["attach", "detach", "get_current", "span_in", "current_span", "with_span", "unsampled_in"]


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


def _tuple_layout() -> bool:
    """SpanContext is the tuple (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid)
    (opentelemetry-api 1.x); checked once against its properties."""
    try:
        ctx = trace_api.SpanContext(3, 5, True, trace_api.TraceFlags(1), trace_api.TraceState([("k", "v")]))
        trace_id, span_id, remote, flags, state, valid = ctx
        return (trace_id, span_id, remote, state) == (ctx.trace_id, ctx.span_id, ctx.is_remote, ctx.trace_state) \
            and flags is ctx.trace_flags and valid is ctx.is_valid is True
    except Exception:
        return False


# API Span classes whose get_span_context() is `return self._context` (its code checked): read as that field
CONTEXT_FIELD_TYPES: set = set()


def _returns_context_field(self):
    return self._context


def read_context_field(kind: type) -> bool:
    """Remember `kind` (an API Span class) in CONTEXT_FIELD_TYPES if its get_span_context returns its `_context`."""
    code = getattr(getattr(kind, "get_span_context", None), "__code__", None)
    reference = _returns_context_field.__code__
    # (no issubclass check against the API's Span: fastspan calls this while this module may be mid-import)
    if code is not None and (code.co_code, code.co_names, code.co_argcount) == (
            reference.co_code, reference.co_names, reference.co_argcount):
        CONTEXT_FIELD_TYPES.add(kind)
        return True
    return False


def unsampled_in(context: Context) -> bool:
    """Is the span in `context` one of a trace that is not sampled (a valid context without the sampled
    flag)? Client spans are not made there: nothing of the trace is recorded."""
    span = context.get(_SPAN_KEY)
    if span is None:
        return False
    kind = type(span)
    if kind in CONTEXT_FIELD_TYPES:
        ctx = span._context
    else:
        if kind not in SPAN_TYPES:
            span = checked_span(span)
        ctx = span.get_span_context()
    if CONTEXT_IS_TUPLE and type(ctx) is _SpanContext:  # its fields as the tuple holds them, not by property
        return ctx[5] and not ctx[3] & 0x01
    return ctx.is_valid and not ctx.trace_flags.sampled


_dict_set = dict.__setitem__
# the API's Context is a dict that refuses changes: a copy made as a dict, then set as one, is set_value's
DICT_CONTEXT = issubclass(Context, dict) and Context.__init__ is dict.__init__ and Context.__new__ is dict.__new__

if DICT_CONTEXT:
    def with_span(span: trace_api.Span, context: Context = None, key: str = None, value: object = None) -> Context:
        """`trace.set_span_in_context(span, context)`: a copy of `context` (default: the current one) with
        `span`; and with `key` set to `value` too, when a key is given (one copy, not two)."""
        new = Context(get_current() if context is None else context)
        _dict_set(new, _SPAN_KEY, span)
        if key is not None:
            _dict_set(new, key, value)
        return new
else:
    def with_span(span: trace_api.Span, context: Context = None, key: str = None, value: object = None) -> Context:
        new = trace_api.set_span_in_context(span, context)
        return new if key is None else context_api.set_value(key, value, new)


# Imported last, the names above already defined: importing opentelemetry.trace runs the agent's import hooks,
# and the modules they import use this one.
from opentelemetry import trace as trace_api  # noqa: E402

_SPAN_KEY = trace_api._SPAN_KEY
_INVALID_SPAN = trace_api.INVALID_SPAN
_Span = trace_api.Span
_SpanContext = trace_api.SpanContext
CONTEXT_IS_TUPLE = _tuple_layout()  # (read by name: other modules may import this one mid-import)
read_context_field(trace_api.NonRecordingSpan)
