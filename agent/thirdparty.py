"""Third-party instrumentors (entry point group `opentelemetry_instrumentor`).

Applied lazily, keyed on the library they instrument, and only for libraries
we do not cover. Reading entry points needs package metadata (~30 ms), so the
list is cached per environment, keyed on the modification times of the
sys.path folders (an install or uninstall changes them).
"""

import os
import sys

from trace_run.instrumentors import hooks, registry

from . import log

# Entry point names whose import name differs (None: nothing to hook on).
_MODULE_FOR = {
    "aiohttp-client": "aiohttp", "aiohttp-server": "aiohttp", "aiohttp_client": "aiohttp",
    "aiohttp_server": "aiohttp", "grpc_client": "grpc", "grpc_server": "grpc",
    "grpc_aio_client": "grpc", "grpc_aio_server": "grpc", "mysql": "mysql.connector",
    "mysqlclient": "MySQLdb", "pymysql": "pymysql", "kafka": "kafka", "boto3sqs": "boto3",
    "tortoiseorm": "tortoise", "system_metrics": None, "asgi": None, "aws-lambda": None,
    "aws_lambda": None, "openai-v2": "openai", "confluent_kafka": "confluent_kafka",
}

found: list = []  # (name, module, value, distribution, status)


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = 0
    for ch in sys.prefix:  # a stable name per environment (hash() is salted per process)
        digest = (digest * 31 + ord(ch)) & 0xFFFFFFFF
    return os.path.join(base, "trace-run", "instrumentors-%08x.txt" % digest)


def _key() -> str:
    parts = [sys.version.split()[0], sys.prefix]
    for p in sys.path:
        try:
            parts.append("%s:%d" % (p, os.stat(p or ".").st_mtime_ns))
        except OSError:
            continue
    return "|".join(parts)


def _discover() -> list:
    from .sdk import _entry_points

    eps = _entry_points("opentelemetry_instrumentor")
    out = []
    for name, ep in sorted(eps.items()):
        dist = getattr(getattr(ep, "dist", None), "name", "") or ""
        out.append((name, ep.value, dist))
    return out


def _load_cached() -> list:
    path = _cache_path()
    key = _key()
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[0] == key:
            return [tuple(line.split("\t")) for line in lines[1:] if line.count("\t") == 2]
    except OSError:
        pass
    eps = _discover()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = "%s.%d" % (path, os.getpid())
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(key + "\n" + "\n".join("\t".join(e) for e in eps))
        os.replace(tmp, path)
    except OSError:
        pass
    return eps


def module_for(ep_name: str):
    if ep_name in _MODULE_FOR:
        return _MODULE_FOR[ep_name]
    name = ep_name
    for suffix in ("-client", "-server", "_client", "_server"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def classify(disabled: set) -> list:
    """(name, module, value, distribution, status) for each installed instrumentor."""
    rows = []
    for name, value, dist in _load_cached():
        module = module_for(name)
        if name in registry.COVERED_NAMES or (module and registry.lookup(module)) or name == "logging":
            status = "skipped: trace-run covers it"
        elif name in disabled:
            status = "disabled"
        elif module is None:
            status = "skipped: no library to hook"
        else:
            status = "armed (on import of %s)" % module
        rows.append((name, module, value, dist, status))
    return rows


def arm(disabled: set) -> None:
    rows = classify(disabled)
    found[:] = rows
    for name, module, value, _dist, status in rows:
        if status.startswith("armed"):
            hooks.when_imported(module, _applier(name, value))


def _applier(name: str, value: str):
    def apply(_module) -> None:
        try:
            import importlib

            from . import runtime

            runtime.ensure_sdk()
            mod_name, _, attr = value.partition(":")
            obj = importlib.import_module(mod_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            instrumentor = obj()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument()
        except Exception as exc:
            log.warning("third-party instrumentor %s not applied (%s: %s)" % (name, type(exc).__name__, exc))

    return apply
