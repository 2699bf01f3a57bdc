"""Small statistics and table helpers shared by the benchmarks (stdlib only)."""

from __future__ import annotations

import statistics


def pct(values, p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty sequence."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values) -> str:
    """`p25..p75` as text, the spread reported next to each median."""
    return f"{fmt(pct(values, 25))}..{fmt(pct(values, 75))}"


def fmt(x: float, digits: int = 1) -> str:
    if x != x:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def table(headers, rows) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)
