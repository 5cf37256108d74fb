"""Where masked diffusion (`mdm`) first beats autoregression (`ar`) at equal training tokens.

Pure functions over measured curves (torch-free; the reports import them):

- `detect(ar, mdm, higher_is_better=...)`: the first token count at which `mdm` is ahead,
  interpolated in log tokens between the two measured points around it, with an interval from
  the checkpoint spacing widened by the metric's standard errors; or "none within the budget".
- `best(points, ...)`: an objective's best value and where it occurs.
- `trend(...)`: whether crossover epochs rise or fall along an axis (U, model size), the form of
  the paper's two claims.
- `load_sweep(dir)` / `summarize(loaded)`: a sweep dir's curves and every comparison in it.

Conventions: a curve is a list of `Point(tokens, value, stderr)`; "ahead" is strictly better
(lower for a loss, higher for an accuracy); both curves are compared at the union of their token
counts inside the range both measured, each interpolated linearly in log tokens between its own
points (exact at its points).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codediff.formats import read_json_or_none

Z95 = 1.959964  # two-sided 95% normal quantile
LOWER_IS_BETTER = ("val_loss",)
# values closer than this (relative, at least absolute for values near 0) count as equal: a
# pass@1 that never left 0 is a constant, not a curve whose best is its first point
FLAT_TOL = 1e-9


@dataclass(frozen=True)
class Point:
    tokens: float
    value: float
    stderr: float | None = None


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def _flat(values: list[float]) -> bool:
    """Every value the same (the series never moved)."""
    return bool(values) and max(values) - min(values) <= FLAT_TOL * max(1.0, *map(abs, values))


def _clean(points: list[Point]) -> list[Point]:
    by_t: dict[float, Point] = {}
    for p in points:
        if p.tokens and p.tokens > 0 and p.value is not None and math.isfinite(p.value):
            by_t[float(p.tokens)] = p  # a repeated token count: the last measurement
    return [by_t[t] for t in sorted(by_t)]


def _interp(points: list[Point], x: float) -> tuple[float, float]:
    """(value, stderr) of a curve at x (inside its range), linear in log tokens."""
    lx = math.log(x)
    for a, b in zip(points, points[1:], strict=False):
        if a.tokens <= x <= b.tokens:
            if x == a.tokens:
                return a.value, a.stderr or 0.0
            if x == b.tokens:
                return b.value, b.stderr or 0.0
            w = (lx - math.log(a.tokens)) / (math.log(b.tokens) - math.log(a.tokens))
            return (a.value + w * (b.value - a.value),
                    (a.stderr or 0.0) + w * ((b.stderr or 0.0) - (a.stderr or 0.0)))
    p = points[0] if x <= points[0].tokens else points[-1]
    return p.value, p.stderr or 0.0


def _zero(xs: list[float], ds: list[float], i: int) -> float:
    """Where d crosses 0 between xs[i-1] (d <= 0) and xs[i] (d > 0), linear in log tokens."""
    d0, d1 = ds[i - 1], ds[i]
    w = (0.0 - d0) / (d1 - d0) if d1 != d0 else 1.0
    return math.exp(math.log(xs[i - 1]) + w * (math.log(xs[i]) - math.log(xs[i - 1])))


def _first_positive(xs: list[float], ds: list[float]) -> tuple[int | None, float | None]:
    """(index, interpolated crossing) of the first d > 0; the crossing is xs[0] at index 0."""
    for i, d in enumerate(ds):
        if d > 0:
            return i, (xs[0] if i == 0 else _zero(xs, ds, i))
    return None, None


def detect(ar: list[Point], mdm: list[Point], *, higher_is_better: bool,
           epoch_tokens: float | None = None, z: float = Z95) -> dict[str, Any]:
    """Where `mdm` first beats `ar` at equal training tokens.

    Returns {"status", "tokens", "epochs", "between", "interval", "interval_epochs",
    "significant", "stays_ahead_from", "budget", "points"}; status is one of
      "crossed"     mdm behind (or level) at the first shared point, ahead later: `tokens` is the
                    log-interpolated zero of the difference between the two points around it
                    (`between`);
      "from_start"  mdm already ahead at the first shared point (`tokens` is that point, an upper
                    bound; the interval opens at 0);
      "none"        mdm never ahead within the shared budget (`tokens` None);
      "no_data"     the curves share no token range.
    `interval`: [earliest, latest] token count of the crossing: the checkpoint spacing
    (`between`) widened to where mdm's lead plus or minus z standard errors crosses zero; its
    upper end is None when mdm is never ahead by more than z standard errors (`significant`
    False). `stays_ahead_from`: where mdm's final lead (ahead at every later point) begins, None
    when it is not ahead at the end.
    `flat`: the curves that do not move over the compared points, each with its constant value
    ({"ar": 0.0, "mdm": 0.0} for two pass@1 curves that never left 0; {} when both move).
    `signal`: False when the two curves are equal at every compared point (status "none" then
    means there was nothing to detect, not that mdm stayed behind)."""
    a, m = _clean(ar), _clean(mdm)
    out: dict[str, Any] = {"status": "no_data", "tokens": None, "epochs": None, "between": None,
                           "interval": None, "interval_epochs": None, "significant": False,
                           "stays_ahead_from": None, "budget": None, "points": 0, "z": z,
                           "flat": {}, "signal": False}
    if not a or not m:
        return out
    lo, hi = max(a[0].tokens, m[0].tokens), min(a[-1].tokens, m[-1].tokens)
    xs = sorted({p.tokens for p in a + m if lo <= p.tokens <= hi})
    if not xs:
        return out
    sign = 1.0 if higher_is_better else -1.0
    ds, ses, vas, vms = [], [], [], []
    for x in xs:
        va, sa = _interp(a, x)
        vm, sm = _interp(m, x)
        ds.append(sign * (vm - va))
        ses.append(math.hypot(sa, sm))
        vas.append(va)
        vms.append(vm)
    out.update(budget=xs[-1], points=len(xs),
               flat={k: v[0] for k, v in (("ar", vas), ("mdm", vms)) if _flat(v)},
               signal=not _flat([0.0, *ds]))
    i, t = _first_positive(xs, ds)
    if i is None:
        out["status"] = "none"
    else:
        out["status"] = "from_start" if i == 0 else "crossed"
        out["tokens"] = t
        between = [None if i == 0 else xs[i - 1], xs[i]]
        j, early = _first_positive(xs, [d + z * s for d, s in zip(ds, ses, strict=True)])
        k, late = _first_positive(xs, [d - z * s for d, s in zip(ds, ses, strict=True)])
        lo_t = None if (between[0] is None or j == 0) else min(between[0], early)
        hi_t = None if k is None else max(between[1], late)
        out.update(between=between, interval=[lo_t, hi_t], significant=k is not None)
    if ds[-1] > 0:
        r = len(ds) - 1
        while r > 0 and ds[r - 1] > 0:
            r -= 1
        out["stays_ahead_from"] = xs[0] if r == 0 else _zero(xs, ds, r)
    if epoch_tokens:
        def ep(v):
            return None if v is None else v / epoch_tokens
        out["epochs"] = ep(out["tokens"])
        out["interval_epochs"] = (None if out["interval"] is None
                                  else [ep(v) for v in out["interval"]])
        out["stays_ahead_from_epochs"] = ep(out["stays_ahead_from"])
        out["budget_epochs"] = ep(out["budget"])
    return out


def flat_note(r: dict[str, Any], ar_name: str = "ar", fmt=lambda v: f"{v:.4g}") -> str:
    """Plain words for a detect() result whose curves do not move ("" when both do): two
    curves that never left 0 say "flat at 0 for both: no signal", not "none within the budget".
    `fmt` formats a value (a percentage in the report)."""
    flat = r.get("flat") or {}
    if r.get("status") == "no_data":
        return ""
    if r.get("signal") is False:
        if "ar" in flat and "mdm" in flat:
            return f"flat at {fmt(flat['mdm'])} for both: no signal"
        return "equal at every point: no signal"
    if "ar" in flat and "mdm" in flat:
        return (f"both flat ({ar_name} at {fmt(flat['ar'])}, mdm at {fmt(flat['mdm'])}): a "
                "constant gap, no trend")
    if flat:
        k, v = next(iter(flat.items()))
        return f"{ar_name if k == 'ar' else k} flat at {fmt(v)} throughout"
    return ""


def best(points: list[Point], *, higher_is_better: bool,
         epoch_tokens: float | None = None) -> dict[str, Any] | None:
    """The best value of a curve and where it occurs (the earliest point on a tie). `flat`:
    every point has that value, so "where" says nothing (a pass@1 that never left 0)."""
    pts = _clean(points)
    if not pts:
        return None
    key = (lambda p: -p.value) if higher_is_better else (lambda p: p.value)
    b = min(pts, key=key)
    return {"value": b.value, "stderr": b.stderr, "tokens": b.tokens,
            "epochs": b.tokens / epoch_tokens if epoch_tokens else None,
            "last": pts[-1].tokens == b.tokens,
            "flat": len(pts) > 1 and _flat([p.value for p in pts])}


def _lasting(r: dict[str, Any]) -> tuple[float | None, float | None, str] | None:
    """(tokens, epochs, kind) of a level's lasting crossover: where mdm's final lead begins
    ("="), mdm ahead at every compared point ("<": by the first point, an upper bound), or mdm
    behind or level at the end (">": after the budget, a lower bound); None without data."""
    if r.get("status") == "no_data" or r.get("budget") is None:
        return None
    tokens = r.get("stays_ahead_from")
    if tokens is None:
        return r["budget"], r.get("budget_epochs"), ">"
    epochs = r.get("stays_ahead_from_epochs")
    if r.get("status") == "from_start" and tokens == r.get("tokens"):
        return tokens, epochs, "<"
    return tokens, epochs, "="


def _moves(seq: list[tuple[float, float | None, str]]) -> list[str]:
    """The direction of each consecutive pair of (x, value, kind) levels, "unknown" where a bound
    can be read either way."""
    moves = []
    for (_, e1, k1), (_, e2, k2) in zip(seq, seq[1:], strict=False):
        if e1 is None or e2 is None:
            moves.append("unknown")
        elif k1 == "=" and k2 == "=":
            moves.append("up" if e2 > e1 else "down" if e2 < e1 else "flat")
        elif k2 == ">" and e2 >= e1 and k1 in ("=", "<"):
            moves.append("up")
        elif k1 == ">" and e1 >= e2 and k2 in ("=", "<"):
            moves.append("down")
        elif k2 == "<" and e2 <= e1 and k1 in ("=", ">"):
            moves.append("down")
        elif k1 == "<" and e1 <= e2 and k2 in ("=", ">"):
            moves.append("up")
        else:
            moves.append("unknown")
    return moves


def _verdict(moves: list[str], expect: str) -> str:
    want = "up" if expect == "increasing" else "down"
    other = "down" if want == "up" else "up"
    if not moves or all(mv == "unknown" for mv in moves):
        return "too few"
    if all(mv == want for mv in moves):
        return "consistent"
    if all(mv == other for mv in moves):
        return "opposite"
    return "mixed"


def trend(levels: list[tuple[float, dict[str, Any]]], expect: str) -> dict[str, Any]:
    """Does the crossover come later ("increasing") or earlier ("decreasing") along an axis?

    `levels`: (axis value, detect() result) pairs. Each level's crossover here is the *lasting*
    one (`stays_ahead_from`: where mdm's final lead begins), not the first lead: near the random
    start an `mdm` ELBO or a code-choice score is often ahead for a checkpoint or two, which says
    nothing about learning. A level where mdm is behind or level at the end counts as "after the
    budget" (a lower bound), one where mdm leads at every point as "by the first point" (an upper
    bound); one whose curves are equal throughout (`signal` False, e.g. both flat at 0) says
    nothing and is left out (listed in `no_signal`).
    The verdict is read in training tokens (`verdict`: every cell of a sweep has the same token
    budget, and the paper's "later" is later in training) and in epochs (`verdict_epochs`): along
    U the two differ, since one epoch is U tokens. Each is "consistent" (every consecutive pair
    moves the expected way), "opposite", "mixed", or "too few" (no pair with a direction)."""
    seq, no_signal = [], []
    for x, r in sorted(levels, key=lambda lv: lv[0]):
        if r.get("signal") is False and r.get("status") == "none":
            no_signal.append(x)
            continue
        lasting = _lasting(r)
        if lasting is not None:
            seq.append((x, *lasting))
    by_tokens = _moves([(x, t, k) for x, t, _, k in seq])
    by_epochs = _moves([(x, e, k) for x, _, e, k in seq])
    return {"verdict": _verdict(by_tokens, expect), "verdict_epochs": _verdict(by_epochs, expect),
            "expect": expect, "basis": "lasting",
            "epochs": [{"x": x, "tokens": t, "epochs": e, "kind": k} for x, t, e, k in seq],
            "moves": by_tokens, "moves_epochs": by_epochs, "no_signal": no_signal}


# ----------------------------------------------------------------------------- a sweep dir

def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        data = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return rows
    for line in data.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if isinstance(r, dict):
            rows.append(r)
    return rows


def load_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """A sweep dir's JSON: {"manifest", "cells": [{"id", "cell", "run", "curves", "evals"}]}.

    `curves[metric]` is a list of Points: `val_loss` from the run's metrics.jsonl (every
    validation, denser than the checkpoints), the other metrics from the per-checkpoint eval
    files. Reads files only; a cell not started yet has empty curves."""
    d = Path(sweep_dir)
    manifest = read_json_or_none(d / "sweep.json") or {}
    cells = []
    for cid in manifest.get("cells", []):
        cdir = d / "cells" / cid
        cell = read_json_or_none(cdir / "cell.json") or {"id": cid}
        run = read_json_or_none(cdir / "run" / "run.json") or {}
        curves: dict[str, list[Point]] = {}
        metrics_rows = _read_jsonl(cdir / "run" / "metrics.jsonl")
        val = [Point(r["tokens"], r["val_loss"]) for r in metrics_rows
               if "val_loss" in r and "tokens" in r]
        evals = []
        for f in sorted((cdir / "eval").glob("tokens-*.json"), key=lambda p: p.name):
            e = read_json_or_none(f)
            if e is None or not isinstance(e.get("tokens"), int | float):
                continue
            evals.append(e)
            for name, m in (e.get("metrics") or {}).items():
                if isinstance(m, dict) and m.get("value") is not None:
                    curves.setdefault(name, []).append(
                        Point(e["tokens"], m["value"], m.get("stderr")))
        evals.sort(key=lambda e: e["tokens"])
        if val:
            curves["val_loss"] = val
        speed = sorted(r["tokens_per_s"] for r in metrics_rows if r.get("tokens_per_s"))
        cells.append({"id": cid, "cell": cell, "run": {
            k: run.get(k) for k in ("epoch_tokens", "params", "steps", "total_tokens", "epochs",
                                    "seq_len", "micro_batch", "world_size")},
            "trained_tokens": metrics_rows[-1].get("tokens") if metrics_rows else 0,
            "tokens_per_s": speed[len(speed) // 2] if speed else None,
            "curves": curves, "evals": evals})
    return {"manifest": manifest, "cells": cells}


def _arm(cell: dict) -> str:
    c = cell["cell"]
    return c.get("objective", "?") + (f"+{c['variant']}" if c.get("variant") else "")


def summarize(loaded: dict[str, Any], z: float = Z95) -> dict[str, Any]:
    """Every comparison of a loaded sweep: for each (U, preset, seed), each `ar` arm (the plain
    objective and each ablation) against plain `mdm`, for every metric both measured; each
    arm's best values; and the trends of the plain comparison along U and along model size."""
    groups: dict[tuple, dict[str, dict]] = {}
    for c in loaded["cells"]:
        meta = c["cell"]
        if "unique_tokens" not in meta:
            continue
        key = (meta["unique_tokens"], meta["preset"], meta.get("seed", 0))
        groups.setdefault(key, {})[_arm(c)] = c
    comparisons, bests = [], []
    for (u, preset, seed), arms in sorted(groups.items()):
        for arm, c in sorted(arms.items()):
            et = c["run"].get("epoch_tokens") or u
            for metric, pts in sorted(c["curves"].items()):
                b = best(pts, higher_is_better=higher_is_better(metric), epoch_tokens=et)
                if b:
                    bests.append({"unique_tokens": u, "preset": preset, "seed": seed,
                                  "arm": arm, "cell": c["id"], "metric": metric, **b})
        m = arms.get("mdm")
        if m is None:
            continue
        for arm, c in sorted(arms.items()):
            if not arm.startswith("ar"):
                continue
            et = c["run"].get("epoch_tokens") or m["run"].get("epoch_tokens") or u
            for metric in sorted(set(c["curves"]) & set(m["curves"])):
                r = detect(c["curves"][metric], m["curves"][metric],
                           higher_is_better=higher_is_better(metric), epoch_tokens=et, z=z)
                comparisons.append({"unique_tokens": u, "preset": preset, "seed": seed,
                                    "ar_arm": arm, "ar_cell": c["id"], "mdm_cell": m["id"],
                                    "metric": metric, "params": c["run"].get("params"), **r})
    trends = []
    # the plain comparison first (the paper's), then each ablation measured at two or more
    # levels of an axis; `ar_arm` says which
    for arm in sorted({c["ar_arm"] for c in comparisons}, key=lambda a: (a != "ar", a)):
        of_arm = [c for c in comparisons if c["ar_arm"] == arm]
        for metric in sorted({c["metric"] for c in of_arm}):
            rows = [c for c in of_arm if c["metric"] == metric]
            for (preset, seed) in sorted({(c["preset"], c["seed"]) for c in rows}):
                lv = [(c["unique_tokens"], c) for c in rows if c["preset"] == preset
                      and c["seed"] == seed]
                if len(lv) >= 2:
                    trends.append({"axis": "unique_tokens", "metric": metric, "preset": preset,
                                   "seed": seed, "claim": "the crossover comes later with more "
                                   "unique data", "ar_arm": arm, **trend(lv, "increasing")})
            for (u, seed) in sorted({(c["unique_tokens"], c["seed"]) for c in rows}):
                lv = [(c["params"] or 0, c) for c in rows if c["unique_tokens"] == u
                      and c["seed"] == seed]
                if len({x for x, _ in lv}) >= 2:
                    trends.append({"axis": "params", "metric": metric, "unique_tokens": u,
                                   "seed": seed, "claim": "the crossover comes earlier with "
                                   "larger models", "ar_arm": arm, **trend(lv, "decreasing")})
    return {"comparisons": comparisons, "best": bests, "trends": trends, "z": z}
