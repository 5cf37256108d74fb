"""Render HTML comparison reports and leaderboards from results dirs and run dirs."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from codediff.reports.load import Result, Run
from codediff.reports.svg import line_chart
from jinja2 import Environment, FileSystemLoader, select_autoescape

from codediff import __version__

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}"
    env.filters["si"] = _si
    return env


def _si(v) -> str:
    if v is None or v == "":
        return "–"
    v = float(v)
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def _result_row(r: Result) -> dict:
    pk = r.data["pass_at_k"]
    sc = r.data["status_counts"]["all"]
    return {
        "label": r.label, "task": r.task, "path": r.path.name,
        "dataset": r.data["dataset"], "n": r.data["n_per_task"],
        "samples": r.data["samples"]["count"], "k": r.data["k"],
        "base": pk.get("base", {}), "plus": pk.get("plus"),
        "status": sc, "model": r.model, "sampler": r.sampler, "totals": r.totals,
        "problems": r.data["problems_with_samples"], "problems_total": r.data["problems"],
        "format": r.data.get("prompt_format", ""),
    }


def _per_task_matrix(results: list[Result]) -> dict:
    """task -> problem ids (rows) x results (columns) -> pass rate."""
    by_task: dict[str, dict] = {}
    for r in results:
        t = by_task.setdefault(r.task, {"columns": [], "rows": {}})
        t["columns"].append(r.label)
        phase = "plus" if "plus" in r.data["pass_at_k"] else "base"
        for pid, v in r.data["per_task"].items():
            t["rows"].setdefault(pid, {})[r.label] = v[phase] / v["n"] if v["n"] else None
    for t in by_task.values():
        t["rows"] = dict(sorted(t["rows"].items(), key=lambda kv: _id_key(kv[0])))
    return by_task


def _id_key(task_id: str):
    head, _, num = task_id.rpartition("/")
    return (head, int(num)) if num.isdigit() else (task_id, 0)


def _curves(runs: list[Run]) -> list[dict]:
    charts = []
    val = [(r.label, [(m["tokens"], m["val_loss"]) for m in r.metrics
                      if "val_loss" in m and "tokens" in m]) for r in runs]
    if any(s for _, s in val):
        charts.append({"title": "Validation loss (nats/token; AR: NLL, MDM: negative ELBO)",
                       "svg": line_chart(val, x_label="total tokens", y_label="val loss",
                                         log_x=True,
                                         dashed={r.label for r in runs if r.objective == "ar"})})
    train = [(r.label, [(m["tokens"], m["train_loss"]) for m in r.metrics
                        if "train_loss" in m and "tokens" in m]) for r in runs]
    if any(s for _, s in train):
        charts.append({"title": "Training loss", "svg": line_chart(
            train, x_label="total tokens", y_label="train loss", log_x=True,
            dashed={r.label for r in runs if r.objective == "ar"})})
    return charts


def _run_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for r in runs:
        vals = [m for m in r.metrics if "val_loss" in m]
        best = min(vals, key=lambda m: m["val_loss"]) if vals else None
        last = vals[-1] if vals else None
        speed = [m["tokens_per_s"] for m in r.metrics if m.get("tokens_per_s")]
        rows.append({"label": r.label, "objective": r.objective,
                     "epoch_tokens": r.config.get("epoch_tokens"),
                     "total": r.config.get("total_tokens"), "epochs": r.config.get("epochs"),
                     "best": best, "last": last,
                     "tokens_per_s": sorted(speed)[len(speed) // 2] if speed else None})
    return rows


def _choice_chart(scores: list[dict]) -> dict | None:
    if not scores:
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    for s in scores:
        series.setdefault(s.get("objective", "?"), []).append((s.get("tokens") or 0,
                                                              s["accuracy"]))
    chance = scores[0].get("chance", 0.25)
    xs = [x for pts in series.values() for x, _ in pts if x]
    lines = [(k, sorted(v)) for k, v in sorted(series.items())]
    if xs:
        lines.append((f"chance {100 * chance:.0f}%", [(min(xs), chance), (max(xs), chance)]))
    return {"title": "Code choice: reference vs 3 failing mutants, ranked by likelihood",
            "svg": line_chart(lines, x_label="total tokens", y_label="accuracy", log_x=True,
                              dashed={"ar"} | {name for name, _ in lines
                                               if name.startswith("chance")}),
            "rows": sorted(scores, key=lambda s: (s.get("objective", ""), s.get("tokens") or 0))}


def render_report(results: list[Result], runs: list[Run], title: str,
                  choices: list[dict] | None = None, notes: str = "") -> str:
    ctx = {"title": title, "results": [_result_row(r) for r in results],
           "matrix": _per_task_matrix(results), "curves": _curves(runs),
           "runs": _run_rows(runs), "choice": _choice_chart(choices or []), "notes": notes,
           "created": _now(), "version": __version__}
    return _env().get_template("report.html").render(**ctx)


def render_leaderboard(results: list[Result], title: str) -> str:
    boards: dict[str, list[dict]] = {}
    for r in results:
        boards.setdefault(r.task, []).append(_result_row(r))
    for rows in boards.values():
        rows.sort(key=lambda row: -((row["plus"] or row["base"]).get("pass@1", 0.0)))
    return _env().get_template("leaderboard.html").render(
        title=title, boards=dict(sorted(boards.items())), created=_now(), version=__version__)


def _now() -> str:
    stamp = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds of published reports
    t = dt.datetime.fromtimestamp(int(stamp), dt.UTC) if stamp else dt.datetime.now(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M UTC")
