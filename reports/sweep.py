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
from codediff.reports.svg import line_chart

from codediff import __version__
from codediff.crossover import Point, best, higher_is_better, load_sweep, summarize
from codediff.errors import UserError

METRIC_TITLES = {"val_loss": "validation loss (nats/token; AR NLL, MDM negative ELBO)",
                 "codechoice": "code choice accuracy (AR exact, MDM coupled ELBO)"}
CLAIMS = {"unique_tokens": "The paper: the crossover comes later (more epochs) with more unique "
                           "data.",
          "params": "The paper: the crossover comes earlier (fewer epochs) with larger models."}
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


def _crossover_cell(c: dict) -> dict[str, str]:
    st = c["status"]
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
    return {"text": text, "interval": interval,
            "stays": "–" if stays is None else f"{_e(stays)} epochs"}


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
        metrics = sorted({k for c in cells for k in c["curves"]},
                         key=lambda k: (k != "val_loss", k != "codechoice", k))
        for metric in metrics:
            series, dashed = [], set()
            for c in sorted(cells, key=_arm):
                et = c["run"].get("epoch_tokens") or u
                pts = c["curves"].get(metric, [])
                series.append((_arm(c), _epochs(pts, et)))
                if _arm(c).startswith("ar"):
                    dashed.add(_arm(c))
            charts.append({"title": metric_title(metric), "svg": line_chart(
                series, x_label="epochs", y_label=metric, log_x=True,
                percent=_pct_metric(metric), dashed=dashed)})
        out.append({"title": f"{preset}, U = {si(u)}" + (f", seed {seed}" if seed else ""),
                    "charts": charts})
    return out


def _trend_charts(summary: dict) -> list[dict]:
    out = []
    for axis, x_label in (("unique_tokens", "unique tokens U"), ("params", "parameters")):
        trends = [t for t in summary["trends"] if t["axis"] == axis]
        if not trends:
            continue
        series = []
        for t in trends:
            name = t["metric"] + (f" ({t['preset']})" if axis == "unique_tokens"
                                  else f" (U = {si(t['unique_tokens'])})")
            series.append((name, [(e["x"], e["epochs"]) for e in t["epochs"]
                                  if e["kind"] == "=" and e["x"]]))
        rows = []
        for t in trends:
            where = t.get("preset") if axis == "unique_tokens" else f"U = {si(t['unique_tokens'])}"
            levels = "; ".join(
                f"{si(e['x']) if axis == 'unique_tokens' else si(round(e['x']))}: "
                + {"=": "", ">": "after ", "<": "by "}[e["kind"]] + f"{_e(e['epochs'])}"
                for e in t["epochs"])
            rows.append({"metric": t["metric"], "where": where, "levels": levels or "–",
                         "verdict": VERDICTS.get(t["verdict"], t["verdict"])})
        out.append({"axis": axis, "claim": CLAIMS[axis], "rows": rows, "svg": line_chart(
            series, x_label=x_label, y_label="crossover epochs", log_x=True)})
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
                if a and z and a.get("value") is not None and z.get("value") is not None:
                    facts.append(f"{k}: {_fmt(a['value'], k)} at the best epoch, "
                                 f"{_fmt(z['value'], k)} at the last "
                                 f"({'+' if z['value'] >= a['value'] else ''}"
                                 f"{100 * (z['value'] - a['value']):.1f} points) while the "
                                 f"validation loss moved {dv:+.3f}")
        out.append({"cell": c["id"], "best_epochs": b["tokens"] / et, "best": b["value"],
                    "scores": scores, "rows": rows, "facts": facts,
                    "svg": line_chart(series, x_label="validation loss (nats/token)",
                                      y_label="score", percent=True) if series and any(
                        s for _, s in series) else None})
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
                      "checkpoints": len(c["evals"])})
    comps = [{**c, **_crossover_cell(c)} for c in summary["comparisons"]]
    bests = summary["best"]
    corpus = man.get("corpus") or {}
    return {"title": title or f"codediff sweep: {man.get('name', d.name)}",
            "description": (man.get("spec") or {}).get("description", ""),
            "manifest": man, "corpus": corpus, "cells": cells, "comparisons": comps,
            "best": [dict(b, value_text=_fmt(b["value"], b["metric"])) for b in bests],
            "curves": _curves(loaded), "trends": _trend_charts(summary),
            "ar_past_best": _ar_past_best(loaded), "metric_title": metric_title,
            "higher_is_better": higher_is_better, "created": _now(), "version": __version__}


def render_sweep(sweep_dir: str | Path, title: str | None = None) -> str:
    ctx = sweep_context(sweep_dir, title)
    env = _env()
    env.filters["e3"] = _e
    return env.get_template("sweep.html").render(**ctx)
