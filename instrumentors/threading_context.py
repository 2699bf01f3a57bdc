"""Threads keep the trace: work a request hands to a `threading.Thread` or a
`ThreadPoolExecutor` (and so `loop.run_in_executor`) runs in the request's context.

Context variables do not follow work into another thread. Only the
OpenTelemetry context is carried, captured at `Thread.start` / `submit` and
attached around the work; the program's own context variables (decimal
contexts, its own ContextVars) stay as they were. Activated with the tracing
SDK, not on `import threading`, which every program does at start.
"""

from __future__ import annotations

from typing import Any

from .base import TraceRunInstrumentor


class ThreadingContextInstrumentor(TraceRunInstrumentor):
    library = "threading"

    def _patch(self, **kwargs: Any) -> None:
        import threading
        from concurrent.futures import thread as cf_thread

        from opentelemetry import context

        get_current, attach, detach = context.get_current, context.attach, context.detach
        executor_worker = getattr(cf_thread, "_worker", None)
        guard = self.guard

        def start(wrapped, instance, args, kwargs):
            with guard:
                ctx = get_current()
                # Executor worker threads outlive the submit that made them: each work item carries its own.
                if ctx and getattr(instance, "_target", None) is not executor_worker:
                    run = instance.run

                    def run_in_context():
                        token = attach(ctx)
                        try:
                            return run()
                        finally:
                            detach(token)

                    instance.run = run_in_context
            return wrapped(*args, **kwargs)

        def submit(wrapped, instance, args, kwargs):
            if not args:
                return wrapped(*args, **kwargs)
            with guard:
                ctx = get_current()
                if ctx:
                    fn = args[0]

                    def in_context(*a, **k):
                        token = attach(ctx)
                        try:
                            return fn(*a, **k)
                        finally:
                            detach(token)

                    args = (in_context,) + tuple(args[1:])
            return wrapped(*args, **kwargs)

        self.wrap(threading.Thread, "start", start)
        self.wrap(cf_thread.ThreadPoolExecutor, "submit", submit)
