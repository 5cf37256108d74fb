"""`codediff report --sweep DIR`: one self-contained HTML page from a sweep dir's JSON files.

Curves per (preset, U) for every metric, the crossover table, crossover epochs against U and
against model size beside the paper's two trend claims, and validation loss against the
downstream scores for `ar` past its best epoch. Reads files only (codediff.crossover loads and
summarises them); torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codediff.reports.render import _env, _now
from codediff.reports.render import _si as si
from codediff.reports.svg import _good, line_chart

from codediff import __version__
from codediff.crossover import Point, best, flat_note, higher_is_better, load_sweep, summarize
from codediff.errors import UserError

METRIC_TITLES = {"val_loss": "validation loss (nats/token; AR NLL, MDM negative ELBO)",
                 "codechoice": "code choice accuracy (AR exact, MDM coupled ELBO)"}
CLAIMS = {"unique_tokens": "The paper: the crossover comes later in training with more unique "
                           "data.",
          "params": "The paper: the crossover comes earlier in training with larger models."}
VERDICTS = {"consistent": "consistent with the claim", "opposite": "the opposite of the claim",
            "mixed": "mixed (not monotone)", "too few": "too few crossings to tell"}


def metric_title(m: str) -> str:
    return METRIC_TITLES.get(m, f"{m} pass@1 (greedy, execution-judged)")


def _pct_metric(m: str) -> bool:
    return m != "val_loss"


def _epochs(points: list[Point], epoch_tokens: float) -> list[tuple]:
    return [(p.tokens / epoch_tokens, p.value, p.stderr) for p in points]


def _arm(c: dict) -> str:
    meta = c["cell"]
    return meta.get("objective", "?") + (f"+{meta['variant']}" if meta.get("variant") else "")


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if _pct_metric(metric) else f"{v:.4f}"


def _e(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def _skipped(c: dict) -> dict[str, str]:
    """metric -> why this cell was not scored on it (value null with a `skipped` reason, e.g. an
    infill prompt for an ar model trained without fill-in-the-middle)."""
    out: dict[str, str] = {}
    for e in c["evals"]:
        for name, m in (e.get("metrics") or {}).items():
            if isinstance(m, dict) and m.get("value") is None and m.get("skipped"):
                out.setdefault(name, str(m["skipped"]))
    return {k: v for k, v in out.items() if not c["curves"].get(k)}


def _skip_text(reasons: dict[str, str]) -> str:
    """'a, b: skipped (reason)' per distinct reason, for a list of skipped metrics."""
    by: dict[str, list[str]] = {}
    for metric, why in sorted(reasons.items()):
        by.setdefault(why, []).append(metric)
    return "; ".join(f"{', '.join(ms)}: skipped ({why})" for why, ms in by.items())


def _chart(series: list[tuple[str, list[tuple]]], **kw: Any) -> str | None:
    """line_chart, or None when no series has a point: the template then says so in a caption
    (line_chart alone would print a bare "no data points" where a chart should be)."""
    if not any(_good(pts, kw.get("log_x", False)) for _, pts in series):
        return None
    return line_chart(series, **kw)


def _crossover_cell(c: dict) -> dict[str, str]:
    st = c["status"]
    def fmt(v: float) -> str:  # in the metric's own units (a percentage for a score)
        return _fmt(v, c["metric"])

    note = flat_note(c, c.get("ar_arm", "ar"), fmt)
    if st == "none" and c.get("signal") is False:
        # both curves equal throughout (pass@1 stuck at 0): nothing was detected either way
        return {"text": note, "interval": "", "stays": "–"}
    if st == "crossed":
        iv = c.get("interval_epochs") or [None, None]
        text = f"{_e(c['epochs'])} epochs ({si(round(c['tokens']))} tokens)"
        interval = (f"{_e(iv[0])} – " + ("beyond the budget" if iv[1] is None else _e(iv[1])))
    elif st == "from_start":
        text = f"at or before {_e(c['epochs'])} epochs (mdm ahead at the first point)"
        interval = f"0 – {_e((c.get('interval_epochs') or [None, None])[1])}"
    elif st == "none":
        text = f"none within the budget ({_e(c.get('budget_epochs'))} epochs)"
        interval = ""
    else:
        text, interval = "no shared points", ""
    stays = c.get("stays_ahead_from_epochs")
    return {"text": text + (f"; {note}" if note else ""), "interval": interval,
            "stays": "–" if stays is None else f"{_e(stays)} epochs"}


def _skipped_comparisons(loaded: dict, compared: set[tuple]) -> list[dict]:
    """Crossover-table rows for the metrics an arm was not scored on: the row a reader looks
    for (e.g. `ar` on an infill prompt) says "skipped (why)" instead of being absent."""
    groups: dict[tuple, dict[str, dict]] = {}
    for c in loaded["cells"]:
        m = c["cell"]
        if "unique_tokens" in m:
            groups.setdefault((m["unique_tokens"], m["preset"], m.get("seed", 0)), {})[
                _arm(c)] = c
    rows = []
    for (u, preset, seed), arms in sorted(groups.items()):
        mdm = arms.get("mdm")
        if mdm is None:
            continue
        for arm, c in sorted(arms.items()):
            if not arm.startswith("ar"):
                continue
            why = {**{k: f"mdm: {v}" for k, v in _skipped(mdm).items()},
                   **{k: f"{arm}: {v}" for k, v in _skipped(c).items()}}
            for metric, reason in sorted(why.items()):
                if (u, preset, seed, arm, metric) in compared:
                    continue
                rows.append({"unique_tokens": u, "preset": preset, "seed": seed, "ar_arm": arm,
                             "metric": metric, "status": "skipped", "epochs": None,
                             "budget_epochs": None, "text": f"skipped ({reason})",
                             "interval": "", "stays": "–"})
    return rows


def _curves(loaded: dict) -> list[dict]:
    """One group per (preset, U, seed): a chart per metric, every arm a series."""
    groups: dict[tuple, list[dict]] = {}
    for c in loaded["cells"]:
        m = c["cell"]
        if "unique_tokens" in m:
            groups.setdefault((m["preset"], m["unique_tokens"], m.get("seed", 0)), []).append(c)
    out = []
    for (preset, u, seed), cells in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                           kv[0][2])):
        charts = []
        skipped = {_arm(c): _skipped(c) for c in cells}
        metrics = sorted({k for c in cells for k in [*c["curves"], *skipped[_arm(c)]]},
                         key=lambda k: (k != "val_loss", k != "codechoice", k))
        for metric in metrics:
            series, dashed, skips = [], set(), []
            for c in sorted(cells, key=_arm):
                et = c["run"].get("epoch_tokens") or u
                pts = c["curves"].get(metric, [])
                name = _arm(c)
                if not pts and metric in skipped[name]:
                    # kept as an empty series so every arm has the same colour in every chart;
                    # the legend says skipped, the caption says why
                    skips.append(f"{name}: skipped ({skipped[name][metric]})")
                    name = f"{name} (skipped)"
                series.append((name, _epochs(pts, et)))
                if name.startswith("ar"):
                    dashed.add(name)
            charts.append({"title": metric_title(metric), "skipped": skips, "svg": _chart(
                series, x_label="epochs", y_label=metric, log_x=True,
                percent=_pct_metric(metric), dashed=dashed)})
        out.append({"title": f"{preset}, U = {si(u)}" + (f", seed {seed}" if seed else ""),
                    "charts": charts, "cells": sorted(c["id"] for c in cells)})
    return out


def _single_level_arms(summary: dict, axis: str, trends: list[dict]) -> list[str]:
    """The ar arms compared with mdm on this axis's sweep but at one level only (an ablation run
    at one U): no trend for them, said in a line so the table's silence is not a mystery."""
    key = "unique_tokens" if axis == "unique_tokens" else "preset"
    have = {t.get("ar_arm", "ar") for t in trends}
    levels: dict[str, set] = {}
    for c in summary["comparisons"]:
        levels.setdefault(c["ar_arm"], set()).add(c[key])
    return [f"{arm} (measured at " + ("U = " + ", ".join(si(u) for u in sorted(lv))
                                      if axis == "unique_tokens" else ", ".join(sorted(lv)))
            + " only)" for arm, lv in sorted(levels.items()) if arm not in have]


def _trend_charts(summary: dict) -> list[dict]:
    out = []
    for axis, x_label in (("unique_tokens", "unique tokens U"), ("params", "parameters")):
        trends = [t for t in summary["trends"] if t["axis"] == axis]
        if not trends:
            continue
        single = _single_level_arms(summary, axis, trends)

        def level(x: float, axis: str = axis) -> str:
            return si(x) if axis == "unique_tokens" else si(round(x))

        series = []
        for t in trends:
            arm = t.get("ar_arm", "ar")
            name = (t["metric"] + (f" ({t['preset']}" if axis == "unique_tokens"
                                   else f" (U = {si(t['unique_tokens'])}")
                    + ("" if arm == "ar" else f", {arm}") + ")")
            # tokens, the verdict's unit: every cell has the same budget (along U, epochs differ
            # from tokens by the factor U; the table gives both)
            series.append((name, [(e["x"], e.get("tokens")) for e in t["epochs"]
                                  if e["kind"] == "=" and e["x"] and e.get("tokens")]))
        rows = []
        for t in trends:
            where = t.get("preset") if axis == "unique_tokens" else f"U = {si(t['unique_tokens'])}"
            kinds = {"=": "", ">": "after ", "<": "by "}
            parts = []
            for e in t["epochs"]:
                at = f"{_e(e['epochs'])} epochs"
                if e.get("tokens"):
                    at += f" ({si(round(e['tokens']))} tokens)"
                parts.append((e["x"], f"{level(e['x'])}: {kinds.get(e['kind'], '')}{at}"))
            parts += [(x, f"{level(x)}: no signal") for x in t.get("no_signal", [])]
            levels = "; ".join(text for _, text in sorted(parts, key=lambda p: p[0]))
            verdict = VERDICTS.get(t["verdict"], t["verdict"])
            if "verdict_epochs" in t:
                verdict = (f"in tokens: {verdict}; in epochs: "
                           + VERDICTS.get(t["verdict_epochs"], t["verdict_epochs"]))
            rows.append({"metric": t["metric"], "arm": t.get("ar_arm", "ar"), "where": where,
                         "levels": levels or "–", "verdict": verdict})
        out.append({"axis": axis, "claim": CLAIMS[axis], "rows": rows, "single": single,
                    "svg": _chart(
            series, x_label=x_label, y_label="lasting crossover (tokens)", log_x=True)})
    return out


def _ar_past_best(loaded: dict) -> list[dict]:
    """For each plain `ar` cell: its checkpoints from the best validation loss on, each with
    its downstream scores, and a chart of each score against the validation loss."""
    out = []
    for c in loaded["cells"]:
        if _arm(c) != "ar" or not c["evals"]:
            continue
        et = c["run"].get("epoch_tokens") or c["cell"].get("unique_tokens")
        val = [(e["tokens"], e["metrics"]["val_loss"]["value"]) for e in c["evals"]
               if (e.get("metrics") or {}).get("val_loss", {}).get("value") is not None]
        if len(val) < 2:
            continue
        b = best([Point(t, v) for t, v in val], higher_is_better=False)
        past = [e for e in c["evals"] if e["tokens"] >= b["tokens"]
                and "val_loss" in (e.get("metrics") or {})]
        # skipped metrics (value null: e.g. an infill prompt for an ar model without FIM) have
        # nothing to show here
        scores = sorted({k for e in past for k, v in e["metrics"].items()
                         if k != "val_loss" and (v or {}).get("value") is not None})
        rows = [{"epochs": e["tokens"] / et, "val": e["metrics"]["val_loss"]["value"],
                 "scores": [_fmt((e["metrics"].get(k) or {}).get("value"), k) for k in scores]}
                for e in past]
        series = [(k, [(e["metrics"]["val_loss"]["value"], e["metrics"][k]["value"],
                        e["metrics"][k].get("stderr")) for e in past
                       if (e["metrics"].get(k) or {}).get("value") is not None])
                  for k in scores]
        facts = []
        if len(past) >= 2:
            first, last = past[0], past[-1]
            dv = last["metrics"]["val_loss"]["value"] - first["metrics"]["val_loss"]["value"]
            for k in scores:
                a, z = first["metrics"].get(k), last["metrics"].get(k)
                vals = [(e["metrics"].get(k) or {}).get("value") for e in past]
                if None not in vals and len(set(vals)) == 1:
                    # a score that never moved says nothing about the validation loss
                    facts.append(f"{k}: {_fmt(vals[0], k)} at every checkpoint from the best "
                                 "epoch on (flat: no signal)")
                elif a and z and a.get("value") is not None and z.get("value") is not None:
                    facts.append(f"{k}: {_fmt(a['value'], k)} at the best epoch, "
                                 f"{_fmt(z['value'], k)} at the last "
                                 f"({'+' if z['value'] >= a['value'] else ''}"
                                 f"{100 * (z['value'] - a['value']):.1f} points) while the "
                                 f"validation loss moved {dv:+.3f}")
        out.append({"cell": c["id"], "best_epochs": b["tokens"] / et, "best": b["value"],
                    "scores": scores, "rows": rows, "facts": facts,
                    "skipped": _skip_text(_skipped(c)),
                    "svg": _chart(series, x_label="validation loss (nats/token)",
                                  y_label="score", percent=True)})
    return out


def sweep_context(sweep_dir: str | Path, title: str | None = None) -> dict[str, Any]:
    d = Path(sweep_dir)
    if not (d / "sweep.json").is_file():
        raise UserError(f"--sweep {d}: no sweep.json; not a sweep dir (codediff sweep)")
    loaded = load_sweep(d)
    summary = summarize(loaded)
    man = loaded["manifest"]
    cells = []
    for c in loaded["cells"]:
        m = c["cell"]
        et = c["run"].get("epoch_tokens") or m.get("unique_tokens") or 1
        vb = best(c["curves"].get("val_loss", []), higher_is_better=False, epoch_tokens=et)
        cells.append({"id": c["id"], "preset": m.get("preset"), "arm": _arm(c),
                      "unique": m.get("unique_tokens"), "params": c["run"].get("params"),
                      "total": m.get("total_tokens"), "trained": c["trained_tokens"],
                      "epochs": (m.get("total_tokens") or 0) / et,
                      "tokens_per_s": c["tokens_per_s"], "best_val": vb,
                      "checkpoints": len(c["evals"]), "skipped": _skip_text(_skipped(c))})
    comps = [{**c, **_crossover_cell(c)} for c in summary["comparisons"]]
    compared = {(c["unique_tokens"], c["preset"], c["seed"], c["ar_arm"], c["metric"])
                for c in comps}
    comps = sorted(comps + _skipped_comparisons(loaded, compared),
                   key=lambda c: (c["unique_tokens"], c["preset"], c["seed"], c["ar_arm"],
                                  c["metric"]))
    bests = [dict(b, value_text=(f"flat at {_fmt(b['value'], b['metric'])}"
                                 if b.get("flat") else _fmt(b["value"], b["metric"])))
             for b in summary["best"]]
    # the metrics a cell was not scored on: a row each, where its best would be
    for c in loaded["cells"]:
        m = c["cell"]
        if "unique_tokens" not in m:
            continue
        for metric, why in sorted(_skipped(c).items()):
            bests.append({"unique_tokens": m.get("unique_tokens"), "preset": m.get("preset"),
                          "seed": m.get("seed", 0), "arm": _arm(c), "cell": c["id"],
                          "metric": metric, "value": None, "epochs": None, "last": None,
                          "value_text": f"skipped ({why})"})
    bests.sort(key=lambda b: (b["unique_tokens"] or 0, b["preset"] or "", b["seed"], b["arm"],
                              b["metric"]))
    corpus = man.get("corpus") or {}
    return {"title": title or f"codediff sweep: {man.get('name', d.name)}",
            "description": (man.get("spec") or {}).get("description", ""),
            "manifest": man, "corpus": corpus, "cells": cells, "comparisons": comps,
            "best": bests,
            "curves": _curves(loaded), "trends": _trend_charts(summary),
            "ar_past_best": _ar_past_best(loaded), "metric_title": metric_title,
            "higher_is_better": higher_is_better, "created": _now(), "version": __version__}


def render_sweep(sweep_dir: str | Path, title: str | None = None) -> str:
    ctx = sweep_context(sweep_dir, title)
    env = _env()
    env.filters["e3"] = _e
    return env.get_template("sweep.html").render(**ctx)
