"""trace_run.core: what every other part depends on: the configuration registry (config), trace-run's
messages (log), the guard, the import hooks, the version, the runtime's narrow interface for
instrumentors (lifecycle), the one place that touches OpenTelemetry's private names (compat) and
wrapt's C FunctionWrapper loaded without wrapt's top level (wrapping).

It imports nothing of trace_run's other packages, so importing it never doubles back.
"""
