"""Numbers the reports show beside a result: pass@k intervals, coverage, the best of a column.

pass@k's 95% interval is a normal approximation over the per-problem estimates that
`codediff evaluate` stores: mean ± 1.96 · s / √P, where s is the sample standard deviation of
the P per-problem pass@k values, clipped to [0, 1]. It measures how much the score would move on
another draw of problems like these (the usual benchmark question), not sampling noise alone.
"""

from __future__ import annotations

import math

Z95 = 1.959964
CI_METHOD = ("95% interval: normal approximation over per-problem pass@k estimates, "
             "mean ± 1.96·s/√P (P problems judged), clipped to [0, 100]%")


def mean_ci(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of `values` with a 95% normal-approximation interval."""
    if not values:
        return None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, m, m
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    half = Z95 * math.sqrt(var / len(values))
    return m, max(0.0, m - half), min(1.0, m + half)


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
