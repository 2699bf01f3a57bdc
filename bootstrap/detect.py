"""Read the installed distributions of the running interpreter.

Standard library only, and runnable on its own (`python -c SOURCE` prints
JSON on stdout), so that trace-bootstrap can inspect another interpreter that
has no trace_run installed. It reads metadata files and imports nothing it
inspects, so it is fast and cannot run any library's import-time code.
Kept to syntax Python 3.6+ understands (it runs on whatever --python names).
"""

import json
import re
import sys

_CANON = re.compile(r"[-_.]+")
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_INSTRUMENTS_EXTRA = re.compile(r"""extra\s*==\s*['"]instruments(-any)?['"]""")
GROUP = "opentelemetry_instrumentor"


def canonical(name):
    """PEP 503 normalized name: `Jinja2` and `jinja_2` both become `jinja2`/`jinja-2`."""
    return _CANON.sub("-", name).lower()


def _metadata_module():
    try:
        import importlib.metadata as metadata
    except ImportError:  # Python < 3.8: the backport, if the environment has it
        import importlib_metadata as metadata
    return metadata


def _instrumentor_names(text):
    """Entry point names in the opentelemetry_instrumentor section of entry_points.txt."""
    names = []
    in_group = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            in_group = line == "[" + GROUP + "]"
        elif in_group and "=" in line:
            names.append(line.split("=", 1)[0].strip())
    return names


def instruments(requires_dist):
    """Libraries an instrumentor declares in its `instruments` extra: {canonical name: version specifier}."""
    out = {}
    for req in requires_dist:
        spec, _, marker = req.partition(";")
        if marker and _INSTRUMENTS_EXTRA.search(marker):
            m = _NAME.match(spec)
            if m:
                out[canonical(m.group(1))] = _specifier(spec[m.end():])
    return out


def _specifier(rest):
    """`>=1,<2` from what follows a requirement's name (`[extra] (>=1,<2)`, `>=1, <2`)."""
    rest = re.sub(r"^\s*\[[^]]*\]", "", rest).strip()
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1]
    return ",".join(part.replace(" ", "") for part in rest.split(",") if part.strip())


def _requires(md):
    """Distributions this one always needs (canonical names; requirements of extras left out)."""
    out = []
    for req in md.get_all("Requires-Dist") or ():
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        m = _NAME.match(spec)
        if m and canonical(m.group(1)) not in out:
            out.append(canonical(m.group(1)))
    return out


def detect():
    """The interpreter, whether it has pip, and every installed distribution (first on sys.path wins)."""
    import importlib.util

    metadata = _metadata_module()
    seen = set()
    dists = []
    for dist in metadata.distributions():
        md = dist.metadata
        name = md["Name"] if md is not None else None
        if not name:
            continue
        key = canonical(name)
        if key in seen:
            continue
        seen.add(key)
        row = {"name": name, "version": md["Version"] or "", "requires": _requires(md),
               "requested": dist.read_text("REQUESTED") is not None}
        text = dist.read_text("entry_points.txt")
        if text and GROUP in text:
            eps = _instrumentor_names(text)
            if eps:
                row["instrumentors"] = eps
                ranges = instruments(md.get_all("Requires-Dist") or ())
                row["instruments"] = sorted(ranges)
                row["instrument_ranges"] = ranges
        dists.append(row)
    return {
        "executable": sys.executable,
        "python_version": "%d.%d.%d" % sys.version_info[:3],
        "prefix": sys.prefix,
        "pip": importlib.util.find_spec("pip") is not None,
        "distributions": dists,
    }


if __name__ == "__main__":
    sys.stdout.write(json.dumps(detect()))
    sys.stdout.write("\n")
