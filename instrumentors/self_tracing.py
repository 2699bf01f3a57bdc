"""Libraries that trace themselves: trace-run detects their own instrumentation and steps aside.

The rule: exactly one SERVER span per request, whoever makes it. Before a
built-in instrumentor starts a request's span it asks this module whether the
request is traced already, and if so it makes none; where trace-run can, its
exclusions, query redaction and header capture still apply to the other span
(propagation does by itself: they extract with the global propagators, which
are trace-run's). Detectors read what the library sets (a scope key, a class
in the middleware stack, the current span); they import nothing of the library
and cost a few lookups per request.

What is detected (README "Libraries that trace themselves" says the same):

- FastAPI 0.142.0+: `fastapi.telemetry` makes a SERVER span and `fastapi.*`
  spans whenever a tracer provider is set. Detected: FastAPI's request
  telemetry in the scope holds a span. trace-run makes no ASGI span; its
  excluded URLs (`OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`, else the ASGI list) go
  in as FastAPI's `telemetry={"exclude": ...}`, and `url.query` redaction and
  header capture are done on FastAPI's span.
- FastAPI before 0.142.0, or with `telemetry={"tracing": False}`: no span in
  FastAPI's request telemetry, so trace-run's ASGI span (`starlette`) takes over.
- Starlette's `starlette.middleware.opentelemetry.OpenTelemetryMiddleware`
  (opt in). Detected: the class in the app's middleware stack, or the scope
  mark it sets when it wraps the app from outside. No ASGI span; in a FastAPI
  app that traces itself, the middleware is handed its own mark (the request
  is traced) so that FastAPI's span stays the one.
- `opentelemetry.instrumentation.asgi.OpenTelemetryMiddleware`, which the
  upstream -asgi, -fastapi and -starlette instrumentors put in the app's stack
  (`instrument()`, `instrument_app()`). Detected: the class in the stack
  (FastAPI then turns its own tracing off), or, wrapped around the app by
  hand, its SERVER span being the current one (`ASGI_OUTER_SCOPES`). No ASGI
  span.
- Django with opentelemetry-instrumentation-django: `DJANGO` below lists the
  detector (instrumentors/django.py); no Django span of ours.

trace-run never applies the upstream instrumentor of a library it builds in,
FastAPI included (agent/thirdparty.py, registry.COVERED_NAMES); the rows above
are for programs that apply one themselves.

Adding a library:
1. Tell how to see the library's own instrumentation from what it sets, and
   declare it here: for an ASGI app a middleware class in the app's built
   stack (`ASGI_STACK`, `(module, class name)`), a key the library puts in the
   scope while it traces a request (`ASGI_SCOPE`), the instrumentation scope of
   a SERVER span current when the app is called (`ASGI_OUTER_SCOPES`), or, for
   a check of its own, a branch in `asgi_owner`; for Django a `(name,
   detector)` in `DJANGO`. Another server kind gets an `<kind>_owner` function
   its instrumentor calls before starting a span.
2. Add its item to the list above and to the README's "Libraries that trace
   themselves".
3. If the library traces itself out of the box, give it a `SelfTraced` entry
   in registry.py (the release it starts at): trace-bootstrap then recommends
   no instrumentor for it, the README's libraries table lists it, and the
   agent skips its upstream instrumentor.
4. Test it with the real library under `trace-run`: one SERVER span.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Optional

from trace_run.core.guard import Guard

__all__ = ["asgi_owner", "django_owner", "FASTAPI", "ASGI_STACK", "ASGI_SCOPE", "ASGI_OUTER_SCOPES", "DJANGO",
           "django_upstream_middleware", "django_settings_have_upstream_middleware", "DJANGO_UPSTREAM_MARK",
           "stack_owner"]

FASTAPI = "fastapi"  # FastAPI's own telemetry traces the request
FASTAPI_EXCLUDED = "fastapi-excluded"  # FastAPI's telemetry was told to leave the request out

# Tracing ASGI middleware found in an app's built middleware stack: (module, class) -> name.
ASGI_STACK: dict = {
    ("starlette.middleware.opentelemetry", "OpenTelemetryMiddleware"): "starlette",
    ("opentelemetry.instrumentation.asgi", "OpenTelemetryMiddleware"): "opentelemetry-instrumentation-asgi",
}
# Keys a tracing middleware puts in the scope while its span is open (it wraps the app from outside).
ASGI_SCOPE: dict = {"starlette.opentelemetry": "starlette"}
# Instrumentation scopes of tracing ASGI middleware that may wrap the app from outside (`app =
# OpenTelemetryMiddleware(app)`) without marking the scope: their SERVER span is the current span.
ASGI_OUTER_SCOPES = frozenset(("opentelemetry.instrumentation.asgi", "opentelemetry.instrumentation.fastapi",
                               "opentelemetry.instrumentation.starlette"))


DJANGO_UPSTREAM_PREFIX = "opentelemetry.instrumentation.django."
DJANGO_UPSTREAM_MARK = "_trace_run_upstream"  # on a handler: whether its loaded middleware includes upstream's


def django_upstream_middleware(middleware: Iterable[Any]) -> bool:
    """True when a MIDDLEWARE list holds the upstream Django instrumentor's middleware: the program
    traces Django itself (opentelemetry-instrumentation-django), so trace-run steps aside."""
    try:
        return any(isinstance(path, str) and path.startswith(DJANGO_UPSTREAM_PREFIX) for path in middleware)
    except TypeError:
        return False


def django_settings_have_upstream_middleware() -> bool:
    from django.conf import settings

    return django_upstream_middleware(getattr(settings, "MIDDLEWARE", None) or ())


def _upstream_django(handler: Any) -> bool:
    """True when this Django handler's middleware includes the upstream instrumentor's: its requests
    get upstream's SERVER span, and trace-run makes none (decided once per handler, from the MIDDLEWARE
    its load_middleware() read)."""
    # (getattr, not the handler's __dict__: on 3.11 and 3.12 reading it turns the handler's inline attribute
    # values into a dict for good, and Django's own reads of them, every request, take the slow path)
    upstream = getattr(handler, DJANGO_UPSTREAM_MARK, None)
    if upstream is None:  # a handler made before the instrumentor was applied
        upstream = django_settings_have_upstream_middleware()
        setattr(handler, DJANGO_UPSTREAM_MARK, upstream)
    return upstream


# Detectors for Django, `(name, detector(handler) -> bool)`, asked once per request with the Django
# handler (WSGIHandler/ASGIHandler) serving it; a detector may decide once per handler.
DJANGO: list = [("opentelemetry-instrumentation-django", _upstream_django)]

_FASTAPI_SCOPE = "fastapi.telemetry"  # FastAPI's request telemetry (None: excluded), while it handles a request
_STARLETTE_MARK = "starlette.opentelemetry"
_MAX_DEPTH = 64
_guard = Guard("self_tracing")
_stacks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # app -> (id of its stack, owner or None)
_fastapi_classes: dict = {}  # app class -> whether it is FastAPI's


def is_fastapi(cls: type) -> bool:
    """Whether an app class is FastAPI or a subclass (read from its MRO, fastapi is not imported)."""
    known = _fastapi_classes.get(cls)
    if known is None:
        known = _fastapi_classes[cls] = any(k.__module__.split(".")[0] == "fastapi" for k in cls.__mro__)
    return known


def stack_owner(stack: Any) -> Optional[str]:
    """The name of a tracing middleware in a built ASGI stack (each layer's `.app` is the next), or None."""
    seen = 0
    while stack is not None and seen < _MAX_DEPTH:
        cls = type(stack)
        name = ASGI_STACK.get((cls.__module__, cls.__name__))
        if name is not None:
            return name
        stack = getattr(stack, "app", None)
        seen += 1
    return None


def _app_stack_owner(app: Any) -> Optional[str]:
    """stack_owner of a Starlette app's middleware stack, built as Starlette.__call__ would build it."""
    stack = getattr(app, "middleware_stack", None)
    if stack is None and callable(getattr(app, "build_middleware_stack", None)):
        stack = app.middleware_stack = app.build_middleware_stack()
    try:
        known = _stacks.get(app)
    except TypeError:  # not weakly referable: asked each time
        return stack_owner(stack)
    if known is not None and known[0] == id(stack):  # the id, not the stack: it may refer to the app
        return known[1]
    owner = stack_owner(stack)
    try:
        _stacks[app] = (id(stack), owner)
    except TypeError:
        pass
    return owner


def fastapi_span(scope: dict) -> Any:
    """FastAPI's SERVER span for this request (None: FastAPI does not trace it)."""
    telemetry = scope.get(_FASTAPI_SCOPE)
    return getattr(telemetry, "span", None) if telemetry is not None else None


def asgi_owner(app: Any, scope: dict) -> Optional[str]:
    """Who traces this ASGI request already (a name of the list above), or None: trace-run makes the span.

    `app` is the Starlette (or FastAPI) app about to handle `scope`. FastAPI's key is in the scope only while
    FastAPI handles the request, so it also tells an app mounted in a FastAPI app that the request is traced."""
    for key, name in ASGI_SCOPE.items():
        if scope.get(key):
            return name
    if _FASTAPI_SCOPE in scope:  # FastAPI handles this request: `app` is it, or an app mounted in it
        if scope[_FASTAPI_SCOPE] is None:
            return FASTAPI_EXCLUDED
        if fastapi_span(scope) is not None:
            return FASTAPI
    return _app_stack_owner(app) or _outer_owner()


def _outer_owner() -> Optional[str]:
    """The name of the instrumentation whose SERVER span is current when the app is called (one of
    ASGI_OUTER_SCOPES: an upstream ASGI middleware wrapped around the app), or None."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if getattr(span, "kind", None) is not trace.SpanKind.SERVER or not span.is_recording():
        return None
    scope = getattr(span, "instrumentation_scope", None)
    name = getattr(scope, "name", None)
    return name if name in ASGI_OUTER_SCOPES else None


def django_owner(handler: Any) -> Optional[str]:
    """Who traces the requests of this Django handler already (a name from DJANGO), or None."""
    for name, detector in DJANGO:
        with _guard:
            if detector(handler):
                return name
    return None


# -- what trace-run still applies to FastAPI's own spans ---------------------------------------


def fastapi_exclude(user: Optional[Callable], excluded: Any, url_of: Callable) -> Optional[Callable]:
    """FastAPI's `telemetry={"exclude": ...}` callable: the program's own, or a URL trace-run excludes."""
    if excluded is None:
        return user

    def exclude(scope) -> bool:
        if user is not None and user(scope):
            return True
        with _guard:
            if scope.get("type") in ("http", "websocket") and excluded.search(url_of(scope)):
                return True
        return False

    exclude.trace_run = True  # type: ignore[attr-defined]
    return exclude


def starlette_mark_off(app: Any, scope: dict) -> bool:
    """In a FastAPI app that traces itself, Starlette's OpenTelemetryMiddleware in its stack would make a
    second SERVER span: mark the scope as that middleware marks a request it already traces. True if marked."""
    if scope.get(_STARLETTE_MARK) or _app_stack_owner(app) != "starlette":
        return False
    scope[_STARLETTE_MARK] = True
    return True


def unmark(scope: dict) -> None:
    scope.pop(_STARLETTE_MARK, None)


def fastapi_has_telemetry(module: Any) -> bool:
    """Whether this FastAPI takes `telemetry=` (0.142.0 and later)."""
    import inspect

    try:
        return "telemetry" in inspect.signature(module.FastAPI.__init__).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def adjust_request(span: Any, scope: dict) -> None:
    """trace-run's query redaction and request-header capture on another library's SERVER span.

    The query is replaced only where trace-run's redaction changes it, so a value the library redacted
    itself stays redacted when `OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS=none`."""
    from . import bounds, http_common

    if span is None or not span.is_recording():
        return
    query = scope.get("query_string")
    if query:
        raw = query.decode("latin-1") if isinstance(query, bytes) else str(query)
        redacted, _ = http_common.bounded_query(raw)
        if redacted != raw:
            span.set_attribute("url.query", redacted)
    cap = http_common.capture("SERVER_REQUEST")
    if cap is not None:
        bounds.set_on_span(span, cap.attributes(scope.get("headers") or ()))


def capturing_send(span: Any, send: Callable) -> Callable:
    """`send` recording the response headers trace-run captures on another library's SERVER span."""
    from . import bounds, http_common

    cap = http_common.capture("SERVER_RESPONSE")
    if cap is None or span is None:
        return send

    async def traced_send(message):
        with _guard:
            if message.get("type") == "http.response.start" and span.is_recording():
                bounds.set_on_span(span, cap.attributes(message.get("headers") or ()))
        return await send(message)

    return traced_send
