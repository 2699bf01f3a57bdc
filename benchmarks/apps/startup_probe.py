"""Prints, as JSON, what an agent had set up once the start-up app was imported.

So that an agent that failed to start (and so started fast) shows in the report.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flask  # noqa: E402
import startup_app  # noqa: E402,F401

ours = ("trace_run", "opentelemetry.sdk")
out = {"agent_modules": sorted(m for m in sys.modules if m.startswith(ours))[:3]}
try:
    from opentelemetry import trace

    out["provider"] = type(trace.get_tracer_provider()).__name__
except ImportError:
    out["provider"] = None
flask_cls = flask.Flask
out["flask_patched"] = bool(
    flask_cls.__module__ != "flask.app"
    or hasattr(flask_cls.wsgi_app, "__wrapped__")
    or hasattr(flask_cls.__call__, "__wrapped__")
)
print(json.dumps(out))
