"""The virtualenvs the benchmarks compare, made on demand under benchmarks/.venvs/.

- bare:     the sample apps' libraries only (the baseline): Flask, FastAPI/Starlette, Django,
            their servers (gunicorn, uvicorn) and the clients the apps call;
- tracerun: the same plus trace-run from this checkout, installed NON-editable
            (an editable install adds a setuptools finder to every start-up);
- otel:     the same plus `opentelemetry-instrument` from PyPI (opentelemetry-distro,
            the OTLP exporters and the matching instrumentations);
- ddtrace:  the same plus `ddtrace-run` from PyPI (Datadog's agent, a peer that is not OpenTelemetry);
- sink:     grpcio only: runs the OTLP/gRPC receiver (servers.py grpc-sink), so that the
            harness itself needs nothing but the standard library.

`python benchmarks/venvs.py [NAME...]` makes (or refreshes) them and prints their versions.
A venv is refilled when its package list below changes (the stamp holds a hash of it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENVS = os.path.join(HERE, ".venvs")

APP_DEPS = ["flask", "gunicorn", "psycopg[binary]", "redis", "requests",
            "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "django"]
OTEL_DEPS = [
    "opentelemetry-distro",
    "opentelemetry-exporter-otlp",
    "opentelemetry-instrumentation-flask",
    "opentelemetry-instrumentation-requests",
    "opentelemetry-instrumentation-psycopg",
    "opentelemetry-instrumentation-redis",
    "opentelemetry-instrumentation-fastapi",
    "opentelemetry-instrumentation-starlette",
    "opentelemetry-instrumentation-django",
]
EXTRA_DEPS = {"otel": OTEL_DEPS, "ddtrace": ["ddtrace"]}
SINK_DEPS = ["grpcio"]
NAMES = ("bare", "tracerun", "otel", "ddtrace")


def path(name: str) -> str:
    return os.path.join(VENVS, name)


def bin_path(name: str, exe: str = "python") -> str:
    return os.path.join(path(name), "bin", exe)


def _log(msg: str) -> None:
    sys.stderr.write(f"[venvs] {msg}\n")
    sys.stderr.flush()


def _pip(name: str, *args: str) -> None:
    cmd = [bin_path(name), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    _log(" ".join(cmd[3:]))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"pip failed in {path(name)} (exit {res.returncode})")


def _create(name: str) -> bool:
    """Create the venv if missing; True if it was created now."""
    if os.path.exists(bin_path(name)):
        return False
    os.makedirs(VENVS, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _log(f"creating {path(name)} with {base}")
    subprocess.run([base, "-m", "venv", path(name)], check=True)
    return True


def _checkout_digest() -> str:
    """Hash of the files that make the installed trace-run, to reinstall when they change."""
    h = hashlib.sha256()
    for top in ("pyproject.toml", "core", "agent", "instrumentors", "bootstrap", "viewer", "scripts"):
        full = os.path.join(ROOT, top)
        files = [full] if os.path.isfile(full) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(full) for f in fs
            if (top == "scripts" or f.endswith((".py", ".toml", ".txt", ".cfg", ".c"))) and "__pycache__" not in d
        )
        for f in files:
            h.update(os.path.relpath(f, ROOT).encode())
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def ensure(name: str) -> str:
    """Make sure venv `name` exists with its packages; return its directory."""
    stamp = os.path.join(path(name), ".bench-stamp")
    created = _create(name)
    deps = SINK_DEPS if name == "sink" else APP_DEPS + EXTRA_DEPS.get(name, [])
    want = hashlib.sha256(" ".join(deps).encode()).hexdigest()
    have = open(stamp).read().strip() if os.path.exists(stamp) else ""
    if created or have != want:
        if created:
            _pip(name, "--upgrade", "pip")
        _pip(name, *deps)
        with open(stamp, "w") as f:
            f.write(want + "\n")
    if name == "tracerun":
        digest_file = os.path.join(path(name), ".trace-run-digest")
        digest = _checkout_digest()
        old = open(digest_file).read().strip() if os.path.exists(digest_file) else ""
        if old != digest:
            # Non-editable, so that start-up is measured as users get it from a wheel.
            _pip(name, ROOT)  # with its dependencies, if new ones appeared
            _pip(name, "--force-reinstall", "--no-deps", ROOT)
            with open(digest_file, "w") as f:
                f.write(digest + "\n")
    return path(name)


def ensure_all(names=NAMES) -> None:
    for name in names:
        ensure(name)


def versions(name: str, wanted=("flask", "gunicorn", "opentelemetry-sdk", "opentelemetry-instrumentation",
                                "opentelemetry-distro", "trace-run", "protobuf", "psycopg", "redis",
                                "requests", "wrapt", "fastapi", "starlette", "uvicorn", "django", "ddtrace",
                                "opentelemetry-instrumentation-fastapi",
                                "opentelemetry-instrumentation-django")) -> dict:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except Exception: pass\n"
        "print(json.dumps(out))\n"
    )
    import json

    # Not from the checkout: its trace_run.egg-info would be found through '' on sys.path.
    res = subprocess.run([bin_path(name), "-c", code, *wanted], capture_output=True, text=True, check=True,
                         cwd=VENVS)
    return json.loads(res.stdout)


if __name__ == "__main__":
    ensure_all(sys.argv[1:] or NAMES)
    for n in sys.argv[1:] or NAMES:
        print(n, versions(n))
