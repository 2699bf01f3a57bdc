"""How each installed library is (or can be) traced: detection data + catalogue -> report.

Pure data in, data out (no printing, no subprocess), so the rules are easy to
test on a made-up environment.
"""

from __future__ import annotations

from typing import List, Optional

from trace_run.instrumentors import registry

from . import catalogue
from .detect import canonical

BUILT_IN = "built-in"
THIRD_PARTY = "third-party"
COVERABLE = "coverable"
UNAVAILABLE = "unavailable"  # in the catalogue, but no package exists for this opentelemetry-instrumentation
UNSUPPORTED = "unsupported"  # the upstream instrumentor does not support the installed version
SELF_TRACED = "self-traced"  # the library makes its own spans: no instrumentor is needed
AGENT_ONLY = "agent-only"  # only trace-run or OpenTelemetry itself needs it: not the program's to trace
NONE = "none"


class Row:
    """One library of the environment and how it is covered."""

    def __init__(self, library: str, name: str, version: str, coverage: str, detail: str, **extra):
        self.library = library  # as the distribution spells itself (or a label for the stdlib)
        self.name = name  # canonical distribution name ("" for the standard library)
        self.version = version
        self.coverage = coverage
        self.detail = detail  # the human sentence of the table
        self.instrumentor: Optional[str] = extra.get("instrumentor")  # built-in name
        self.supported: Optional[str] = extra.get("supported")  # built-in tested range
        self.in_range: Optional[bool] = extra.get("in_range")
        self.covered_by: List[str] = extra.get("covered_by", [])  # installed instrumentor distributions
        self.requirements: List[str] = extra.get("requirements", [])  # what would cover it

    def as_dict(self) -> dict:
        return {
            "library": self.library, "distribution": self.name or None, "version": self.version,
            "coverage": self.coverage, "detail": self.detail, "instrumentor": self.instrumentor,
            "supported": self.supported, "in_range": self.in_range, "covered_by": self.covered_by,
            "requirements": self.requirements,
        }


class Report:
    def __init__(self, detected: dict, rows: List[Row], untraceable: List[Row]):
        self.detected = detected
        self.rows = rows
        self.untraceable = untraceable
        self.installed = {canonical(d["name"]): d for d in detected["distributions"]}
        self.trace_run = _version_of(self.installed, "trace-run")
        self.otel_instrumentation = _version_of(self.installed, "opentelemetry-instrumentation")

    @property
    def requirements(self) -> List[str]:
        out: List[str] = []
        for row in self.rows:
            for req in row.requirements:
                if row.coverage == COVERABLE and req not in out:
                    out.append(req)
        return out

    def left_out(self, absent: dict, unsupported: dict) -> None:
        """Mark the rows -a install could not cover: requirement -> releases the index has / why."""
        for row in self.rows:
            if row.coverage != COVERABLE:
                continue
            for req in row.requirements:
                if req in absent:
                    row.coverage = UNAVAILABLE
                    row.detail = "no %s on the package index (it has up to %s)" % (req, absent[req])
                elif req in unsupported:
                    row.coverage = UNSUPPORTED
                    row.detail = "no upstream instrumentor supports %s (%s)" % (row.version, unsupported[req])

    def as_dict(self, include_all: bool = False) -> dict:
        rows = self.rows + (self.untraceable if include_all else [])
        return {
            "python": self.detected["executable"], "python_version": self.detected["python_version"],
            "prefix": self.detected["prefix"], "pip": self.detected["pip"], "trace_run": self.trace_run,
            "opentelemetry_instrumentation": self.otel_instrumentation,
            "libraries": [r.as_dict() for r in sorted(rows, key=_sort_key)],
            "requirements": self.requirements,
        }


def _version_of(installed: dict, name: str) -> Optional[str]:
    d = installed.get(name)
    return d["version"] if d else None


def _sort_key(row: Row):
    return row.library.lower()


def _parse_version(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def in_range(version: str, supported: str) -> Optional[bool]:
    """Whether `version` is in the specifier `supported` (None when either does not parse)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    v = _parse_version(version)
    try:
        spec = SpecifierSet(supported)
    except InvalidSpecifier:
        return None
    return None if v is None else spec.contains(v, prereleases=True)


def _covering(installed: dict) -> dict:
    """library (canonical) -> ["dist version", ...] of installed instrumentors that declare it."""
    out: dict = {}
    for key, d in installed.items():
        if not d.get("instrumentors"):
            continue
        label = "%s %s" % (d["name"], d["version"])
        libs = list(d.get("instruments") or ())
        for entry in catalogue.THIRD_PARTY:  # catalogue packages count even without the extra
            if key in (canonical(p) for p in entry.packages):
                libs.extend(entry.distributions)
        ranges = d.get("instrument_ranges") or {}
        libs = [lib for lib in libs if _supports(ranges.get(lib), installed.get(lib)) is not False]
        for lib in libs:
            if label not in out.setdefault(lib, []):
                out[lib].append(label)
    return out


def _supports(spec: Optional[str], d: Optional[dict]) -> Optional[bool]:
    """Whether an instrumentor declaring `spec` supports the installed distribution `d` (None: unknown)."""
    if not spec or not d:
        return None
    return in_range(d["version"], spec)


def _unsupported_ranges(installed: dict, library: str) -> List[str]:
    """"dist version instruments spec" of installed instrumentors whose range leaves the library out."""
    out = []
    for d in installed.values():
        spec = (d.get("instrument_ranges") or {}).get(library)
        if d.get("instrumentors") and _supports(spec, installed.get(library)) is False:
            out.append("%s %s instruments %s%s" % (d["name"], d["version"], library, spec))
    return out


def agent_only(installed: dict) -> dict:
    """Distributions that only trace-run or OpenTelemetry need -> the agent distributions that need them.

    A distribution is the program's when it was asked for by name (REQUESTED) or when
    anything other than the agent, and other than what only the agent needs, requires it.
    """
    def is_agent(name: str) -> bool:
        return name in catalogue.AGENT_NAMES or name.startswith(catalogue.AGENT_PREFIXES)

    requirers: dict = {}
    for name, d in installed.items():
        for req in d.get("requires") or ():
            requirers.setdefault(req, []).append(name)
    reach: list = [n for n in installed if is_agent(n)]
    seen = set(reach)
    while reach:
        for req in installed.get(reach.pop(), {}).get("requires") or ():
            if req in installed and req not in seen:
                seen.add(req)
                reach.append(req)
    only = {n for n in seen if not is_agent(n) and not installed[n].get("requested")}
    changed = True
    while changed:
        changed = False
        for n in list(only):
            if any(not is_agent(r) and r not in only for r in requirers.get(n, ())):
                only.discard(n)
                changed = True
    return {n: sorted(r for r in requirers.get(n, ()) if is_agent(r)) for n in only}


def _built_in_row(entry: catalogue.BuiltIn, library: str, name: str, version: str, installed: dict) -> Row:
    supported = registry.BUILTIN[entry.instrumentor].supported
    ok = True if not name else in_range(version, supported)
    if not name:
        detail = "built in (%s)" % entry.instrumentor
    elif ok is False:
        detail = "built in (%s), but %s is outside the tested range %s" % (entry.instrumentor, version, supported)
    else:
        detail = "built in (%s), tested %s" % (entry.instrumentor, supported)
    unused = "opentelemetry-instrumentation-" + entry.instrumentor
    if unused in installed:
        detail += "; %s is installed but unused" % unused
    return Row(library, name, version, BUILT_IN, detail, instrumentor=entry.instrumentor,
               supported=supported, in_range=ok)


def _self_traced_row(entry: catalogue.SelfTraced, library: str, name: str, version: str, installed: dict) -> Row:
    """A library that traces itself from `entry.since` on; before that trace-run's `entry.via` traces it."""
    itself = in_range(version, ">=" + entry.since)
    if itself is not False:
        detail = "traces itself (since %s %s): no instrumentor needed" % (library, entry.since)
        coverage, instrumentor = SELF_TRACED, None
    else:
        detail = "built in (%s): trace-run's spans until %s %s traces itself" % (entry.via, library, entry.since)
        coverage, instrumentor = BUILT_IN, entry.via
    if entry.package in installed:
        detail += "; %s is installed but unused" % entry.package
    return Row(library, name, version, coverage, detail, instrumentor=instrumentor, in_range=True)


def _third_party_row(entry, d: dict, name: str, installed: dict, covered: List[str], otel: Optional[str],
                     needed_by: Optional[List[str]] = None) -> Row:
    library, version = d["name"], d["version"]
    if needed_by is not None and not covered:
        detail = "needed only by %s, not by the program: nothing to trace" % ", ".join(needed_by or ["trace-run"])
        return Row(library, name, version, AGENT_ONLY, detail)
    outside = _unsupported_ranges(installed, name)
    if not covered and (outside or _catalogue_excludes(entry, version, otel)):
        why = outside or ["%s %s instruments %s%s" % (" ".join(entry.packages), otel or catalogue.RANGES_RELEASE,
                                                       name, entry.supports)]
        detail = "no upstream instrumentor supports %s (%s)" % (version, "; ".join(why))
        return Row(library, name, version, UNSUPPORTED, detail)
    missing = [p for p in entry.packages if canonical(p) not in installed]
    ours = set(canonical(p) for p in entry.packages)
    foreign = [c for c in covered if canonical(c.rsplit(" ", 1)[0]) not in ours]  # e.g. a vendor's fork
    if not missing or foreign:
        return Row(library, name, version, THIRD_PARTY, "covered by " + ", ".join(covered), covered_by=covered)
    if entry.pinned and otel and entry.last:
        v, last = _parse_version(otel), _parse_version(entry.last)
        if v is not None and last is not None and v > last:
            detail = "no upstream package for opentelemetry-instrumentation %s (last release %s)" % (
                otel, entry.last)
            return Row(library, name, version, UNAVAILABLE, detail, covered_by=covered)
    reqs = [p + "==" + otel if entry.pinned and otel else p for p in missing]
    detail = "coverable: " + " ".join(reqs)
    if covered:
        detail = "partly covered by %s; %s" % (", ".join(covered), detail)
    return Row(library, name, version, COVERABLE, detail, covered_by=covered, requirements=reqs)


def _catalogue_excludes(entry, version: str, otel: Optional[str]) -> bool:
    """The range the catalogue read from upstream leaves `version` out (for releases up to the one read)."""
    if not entry.supports:
        return False
    release, read = _parse_version(otel or catalogue.RANGES_RELEASE), _parse_version(catalogue.RANGES_RELEASE)
    if release is None or read is None or release > read:
        return False
    return in_range(version, entry.supports) is False


def build(detected: dict) -> Report:
    """The report for one environment, from detect.detect()'s data."""
    installed = {canonical(d["name"]): d for d in detected["distributions"]}
    otel = _version_of(installed, "opentelemetry-instrumentation")
    covering = _covering(installed)
    only_agent = agent_only(installed)
    rows: List[Row] = []
    untraceable: List[Row] = []
    for entry in catalogue.BUILT_IN:
        if not entry.distributions:
            rows.append(_built_in_row(entry, entry.label, "", detected["python_version"], installed))
    for name, d in installed.items():
        entry = catalogue.BY_DISTRIBUTION.get(name)
        covered = covering.get(name, [])
        if isinstance(entry, catalogue.BuiltIn):
            rows.append(_built_in_row(entry, d["name"], name, d["version"], installed))
        elif isinstance(entry, catalogue.SelfTraced):
            rows.append(_self_traced_row(entry, d["name"], name, d["version"], installed))
        elif entry is not None:
            rows.append(_third_party_row(entry, d, name, installed, covered, otel, only_agent.get(name)))
        elif covered:
            rows.append(Row(d["name"], name, d["version"], THIRD_PARTY, "covered by " + ", ".join(covered),
                            covered_by=covered))
        else:
            untraceable.append(Row(d["name"], name, d["version"], NONE, "not traceable"))
    rows.sort(key=_sort_key)
    untraceable.sort(key=_sort_key)
    return Report(detected, rows, untraceable)
