"""trace_run.agent: launcher, start-up, configuration and SDK set-up.

Kept empty on purpose: sitecustomize imports `trace_run.agent.boot` on every
process start, and this package must cost nothing to import.
"""
