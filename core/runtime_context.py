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

__all__ = ["attach", "detach", "get_current", "span_in", "current_span", "with_span", "unsampled_in", "use_native"]


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
NATIVE = None  # the C module (core/_call_native.c) while its functions below are in use: see use_native
SUPPRESS_PLAIN = "suppress_instrumentation"  # the old spelling opentelemetry-instrumentation also reads


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


# -- the same in C (core/_call_native.c), where the extension was built and OTEL_TRACE_RUN_NATIVE_CALLS is on --

PYTHON = {"unsampled_in": unsampled_in, "with_span": with_span, "span_in": span_in, "current_span": current_span,
          "detach": detach}


def use_native(on: bool) -> bool:
    """This module's unsampled_in, with_span, span_in, current_span and detach in C (`on`, where the extension
    was built) or in Python; whether the C ones are in use. Callers read them through the module, at each call."""
    global NATIVE
    globals().update(PYTHON)
    NATIVE = None
    if not on:
        return False
    try:
        from trace_run.core import _call_native
    except ImportError:  # not built here (a pure-Python install): the Python functions, as they are
        return False
    from trace_run.core.compat import SUPPRESS_HTTP_INSTRUMENTATION_KEY, SUPPRESS_INSTRUMENTATION_KEY

    try:
        _call_native.configure({
            "var": _VAR, "get_current": get_current, "api_detach": context_api.detach, "span_key": _SPAN_KEY,
            "suppress_key": SUPPRESS_INSTRUMENTATION_KEY, "suppress_plain": SUPPRESS_PLAIN,
            "http_key": SUPPRESS_HTTP_INSTRUMENTATION_KEY, "context": Context if DICT_CONTEXT else None,
            "span_context": _SpanContext, "context_is_tuple": CONTEXT_IS_TUPLE,
            "context_field_types": CONTEXT_FIELD_TYPES, "span_types": SPAN_TYPES, "invalid_span": _INVALID_SPAN,
            "checked_span": checked_span, "py_unsampled_in": PYTHON["unsampled_in"],
            "py_with_span": PYTHON["with_span"]})
    except Exception as exc:  # an API not as this was written for: the Python functions
        from trace_run.core import log

        log.debug("the C call path is not used (%s: %s)" % (type(exc).__name__, exc))
        return False
    globals().update(unsampled_in=_call_native.unsampled_in, with_span=_call_native.with_span,
                     span_in=_call_native.span_in, current_span=_call_native.current_span,
                     detach=_call_native.detach if _VAR is not None else context_api.detach)
    NATIVE = _call_native
    return True


def native_switch(name: str = "OTEL_TRACE_RUN_NATIVE_CALLS") -> bool:
    """A switch of the C extensions (OTEL_TRACE_RUN_NATIVE_CALLS, _SPAN): true where it cannot be read."""
    try:
        from trace_run.core import config

        return bool(config.get(name))
    except Exception:
        return True


use_native(native_switch())
