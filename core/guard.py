"""Error isolation: instrumentation code may fail, the host program must not.

`with guard:` around instrumentation code (never around the wrapped call)
swallows and reports the error once per place. OTEL_TRACE_RUN_RAISE_ERRORS
(test only) makes it raise instead, so tests see our bugs.
"""

from __future__ import annotations

from . import config

RAISE = bool(config.get("OTEL_TRACE_RUN_RAISE_ERRORS"))
_reported: set = set()


def report(where: str, exc: BaseException) -> None:
    """Log an instrumentation failure once per place; raise it in test mode."""
    if where not in _reported:
        _reported.add(where)
        from . import log

        log.warning("instrumentation error in %s (left as is, the program runs on): %s: %s"
                    % (where, type(exc).__name__, exc))
    if RAISE:
        raise exc


class Guard:
    """Reusable, stateless context manager: one per instrumentor."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or RAISE or not isinstance(exc, Exception):
            return False
        self.failed(exc)
        return True

    def failed(self, exc: Exception) -> None:
        """What `with guard:` does with an error; `except Exception as exc: guard.failed(exc)` is the same
        for the shared span wrappers (spans.py), which run around every traced call: a try costs nothing
        until it fails, a `with` two Python calls each time."""
        report(self.name, exc)


# -- test-only fault injection (OTEL_TRACE_RUN_TEST_FAULT) ----------------------------


class SimulatedFault(RuntimeError):
    """The bug OTEL_TRACE_RUN_TEST_FAULT plants in an instrumentor."""


class _FaultyTracer:
    """Every call raises: the instrumentor's guarded code fails where it starts its spans."""

    def __init__(self, library: str):
        self.library = library

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise SimulatedFault("OTEL_TRACE_RUN_TEST_FAULT: simulated bug in the %s instrumentor" % self.library)

        return fail


def inject_faults(provider, libraries) -> None:
    """Give the named instrumentors (registry names) a tracer that raises; the others are untouched."""
    prefix = "trace_run.instrumentors."
    broken = {name.strip().lower() for name in libraries}
    real = provider.get_tracer

    def get_tracer(name, *args, **kwargs):
        if name.startswith(prefix) and name[len(prefix):] in broken:
            return _FaultyTracer(name[len(prefix):])
        return real(name, *args, **kwargs)

    provider.get_tracer = get_tracer
