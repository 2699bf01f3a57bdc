"""The one way a wrapped call runs inside a span, sync or async.

A library supplies what is particular to it: `start` (make the span, the
context token, and the arguments to call with), `end` (finish the span from
the result) and `fail` (finish it from the exception; errors.py holds the
policies). `wrapper` builds the wrapt wrapper from them: `start`, `end` and
`fail` run under the instrumentor's guard, the wrapped call outside it, so
the program's own exception propagates unchanged (same object). Where
core/_call_native.c was built, `wrapper` and `call_in_span` are its C versions
of the functions below (the same calls in the same order).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from trace_run.core import runtime_context
from trace_run.core.guard import Guard

__all__ = ["wrapper", "call_in_span", "Start"]

# start(instance, args, kwargs) -> None (call through, no span) or (span, token, args, kwargs);
# span or token may be None (nothing to end, or nothing made current).
Start = Callable[[Any, tuple, dict], Optional[tuple]]


def _after(guard: Guard, span: Any, token: Any, finish: Optional[Callable[[Any, Any], None]], outcome: Any) -> None:
    """Detach `token`, then under the guard finish(span, outcome), or end the span when `finish` is None."""
    if token is not None:
        runtime_context.detach(token)
    if span is not None:
        try:  # `with guard:` (guard.failed says why not)
            if finish is None:
                span.end()
            else:
                finish(span, outcome)
        except Exception as exc:
            guard.failed(exc)


def wrapper(guard: Guard, start: Start, fail: Callable[[Any, BaseException], None],
            end: Optional[Callable[[Any, Any], None]] = None, enabled: Optional[Callable[[], bool]] = None,
            is_async: bool = False) -> Callable:
    """A wrapt wrapper `(wrapped, instance, args, kwargs)`, a coroutine function when `is_async`.

    `enabled()` is the cheap check made first (False: a plain call); `end` defaults to `span.end()`.
    """
    if is_async:
        async def wrapper_async(wrapped, instance, args, kwargs):
            started = None
            if enabled is None or enabled():
                try:  # `with guard:` (guard.failed says why not)
                    started = start(instance, args, kwargs)
                except Exception as exc:
                    guard.failed(exc)
            if started is None:
                return await wrapped(*args, **kwargs)
            span, token, args, kwargs = started
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                _after(guard, span, token, fail, exc)
                raise
            _after(guard, span, token, end, result)
            return result

        return wrapper_async

    native = runtime_context.NATIVE
    if native is not None:  # the same steps in C (core/_call_native.c)
        return native.Runner(guard, start, fail, end, enabled)

    def wrapper_sync(wrapped, instance, args, kwargs):
        started = None
        if enabled is None or enabled():
            try:  # `with guard:` (guard.failed says why not)
                started = start(instance, args, kwargs)
            except Exception as exc:
                guard.failed(exc)
        if started is None:
            return wrapped(*args, **kwargs)
        span, token, args, kwargs = started
        return call_in_span(guard, span, token, wrapped, args, kwargs, fail, end)

    return wrapper_sync


def call_in_span(guard: Guard, span: Any, token: Any, wrapped: Callable, args: tuple, kwargs: dict,
                 fail: Callable[[Any, BaseException], None], end: Optional[Callable[[Any, Any], None]] = None) -> Any:
    """wrapped(*args, **kwargs) as the work of an already started `span` (for calls that are not wrapt
    wrappers: a message callback). The same rules as `wrapper`."""
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _after(guard, span, token, fail, exc)
        raise
    _after(guard, span, token, end, result)
    return result


python_call_in_span = call_in_span  # (kept beside the C one: the tests compare the two)
if runtime_context.NATIVE is not None:  # the same steps in C (core/_call_native.c)
    call_in_span = runtime_context.NATIVE.call_in_span  # noqa: F811
