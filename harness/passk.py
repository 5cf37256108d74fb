"""Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), defined only for k <= n."""

from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct)
    passes. Computed as a running product, which stays exact-ish where the binomials overflow."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over tasks given (n, c) per task."""
    vals = [pass_at_k(n, c, k) for n, c in counts]
    return sum(vals) / len(vals) if vals else 0.0


def reportable_ks(ns: Iterable[int], wanted: Iterable[int]) -> list[int]:
    """The requested k that every task has enough samples for."""
    n_min = min(ns, default=0)
    return sorted(k for k in set(wanted) if 1 <= k <= n_min)
