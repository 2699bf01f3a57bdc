"""trace-run's instrumentors: one module per library, plus a small shared core
(hooks, guard, registry, base). Nothing here imports an instrumented library."""
