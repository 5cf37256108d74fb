"""Numbers the reports show beside a result: pass@k intervals, coverage, the best of a column.

pass@k's 95% interval is a normal approximation over the per-problem estimates that
`codediff evaluate` stores: mean ± 1.96 · s / √P, where s is the sample standard deviation of
the P per-problem pass@k values, clipped to [0, 1] (the Wilson score interval for P when all P
values are equal, where s = 0 would claim certainty). It measures how much the score would move on
another draw of problems like these (the usual benchmark question), not sampling noise alone.
"""

from __future__ import annotations

import math

Z95 = 1.959964
CI_METHOD = ("95% interval: normal approximation over per-problem pass@k estimates, "
             "mean ± 1.96·s/√P (P problems judged), clipped to [0, 100]%; when every problem "
             "scores the same (s = 0), the Wilson score interval for P problems")


def mean_ci(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of `values` (each in [0, 1]) with a 95% normal-approximation interval.

    When every value is the same (all problems solved, or none) the spread is 0 and the normal
    approximation would claim certainty; the interval is then the Wilson score interval for P
    trials, which bounds the mean of any [0, 1] values with that mean."""
    if not values:
        return None
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    if var == 0.0:
        return (m, *wilson(m, n))
    half = Z95 * math.sqrt(var / n)
    return m, max(0.0, m - half), min(1.0, m + half)


def wilson(p: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion p over n trials."""
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k_ci(data: dict, phase: str, k: int) -> dict | None:
    """{"v", "lo", "hi"} for pass@k of one phase of a results.json, or None if not evaluated."""
    overall = (data.get("pass_at_k") or {}).get(phase) or {}
    key = f"pass@{k}"
    if key not in overall:
        return None
    per = [t["pass_at_k"][phase][key] for t in (data.get("per_task") or {}).values()
           if key in ((t.get("pass_at_k") or {}).get(phase) or {})]
    ci = mean_ci(per)
    v = overall[key]
    if ci is None:
        return {"v": v, "lo": None, "hi": None}
    return {"v": v, "lo": ci[1], "hi": ci[2]}


def best_indices(values: list[float | None]) -> set[int]:
    """Rows holding the column's best value; none when the best is 0 or every row ties."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(known) < 2:
        return set()
    top = max(v for _, v in known)
    if top <= 0 or all(v == top for _, v in known):
        return set()
    return {i for i, v in known if v == top}
