"""The installed third-party instrumentors (entry point group `opentelemetry_instrumentor`), cached.

Reading entry points needs package metadata (~30 ms), so the list is cached per environment,
keyed on the modification times of the sys.path folders (an install or uninstall changes them).
Read at every start, apart from thirdparty: where the list is empty (trace-run's own instrumentors
cover everything), thirdparty is not imported at all.
"""

import os
import sys


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


def load() -> list:
    """(entry point name, value, distribution) of each installed instrumentor: from the cache, or read and cached."""
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
