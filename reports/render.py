"""Render HTML comparison reports and leaderboards from results dirs and run dirs."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from codediff.reports.load import Result, Run
from codediff.reports.rows import result_row
from codediff.reports.stats import CI_METHOD, best_indices
from codediff.reports.svg import line_chart
from jinja2 import Environment, FileSystemLoader, select_autoescape

from codediff import __version__
from codediff.formats import unique_tokens_of

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["si"] = _si
    env.filters["num"] = _num
    env.globals["CI_METHOD"] = CI_METHOD
    return env


def _pct(v, digits: int = 1) -> str:
    """A fraction as a percentage with its sign; "–" when there is no value."""
    return "–" if v is None or v == "" else f"{100 * v:.{digits}f}%"


def _num(v) -> str:
    """The sort key a cell carries in data-v: the underlying number, empty when missing."""
    return "" if v is None or v == "" else repr(float(v))


def _si(v) -> str:
    if v is None or v == "":
        return "–"
    v = float(v)
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def _union_ks(rows: list[dict]) -> list[int]:
    return sorted({k for r in rows for k in r["k"]})


def _mark_best(rows: list[dict], ks: list[int]) -> None:
    """row["best"] = the pass@k columns ("base1", "plus1", ...) where the row is strictly best."""
    for r in rows:
        r["best"] = set()
    for ph in ("base", "plus"):
        for k in ks:
            vals = [((r["pass"].get(ph) or {}).get(k) or {}).get("v") for r in rows]
            for i in best_indices(vals):
                rows[i]["best"].add(f"{ph}{k}")


def _per_task_matrix(results: list[Result]) -> dict:
    """task -> problems (rows) x results (columns, by position) -> pass rate or None.

    Keyed by column position, not label, so two results never share a column; a problem a
    result has no samples for is None ("not evaluated"), not 0."""
    by_task: dict[str, dict] = {}
    for r in results:
        t = by_task.setdefault(r.task, {"columns": [], "rows": {}})
        col = len(t["columns"])
        t["columns"].append(r.label)
        phase = "plus" if "plus" in r.data["pass_at_k"] else "base"
        for pid, v in r.data["per_task"].items():
            t["rows"].setdefault(pid, {})[col] = v[phase] / v["n"] if v["n"] else None
    for t in by_task.values():
        t["rows"] = dict(sorted(t["rows"].items(), key=lambda kv: _id_key(kv[0])))
    return by_task


def _id_key(task_id: str):
    head, _, num = task_id.rpartition("/")
    return (head, int(num)) if num.isdigit() else (task_id, 0)


def _curves(runs: list[Run]) -> list[dict]:
    charts = []
    dashed = {r.label for r in runs if r.objective == "ar"}
    for key, title, y_label in (
            ("val_loss", "Validation loss (nats/token; AR: NLL, MDM: negative ELBO)", "val loss"),
            ("train_loss", "Training loss", "train loss")):
        series = [(r.label, [(m["tokens"], m[key]) for m in r.metrics
                             if key in m and "tokens" in m]) for r in runs]
        if any(s for _, s in series):
            charts.append({"title": title, "svg": line_chart(
                series, x_label="total tokens", y_label=y_label, log_x=True, dashed=dashed)})
    return charts


def curve_facts(runs: list[Run]) -> list[str]:
    """Sentences about the validation curves, computed from them (no claim the data lacks)."""
    facts = []
    for r in runs:
        vals = [m for m in r.metrics if "val_loss" in m and "tokens" in m]
        if not vals:
            continue
        best = min(vals, key=lambda m: m["val_loss"])
        last = vals[-1]
        s = f"{r.label}: lowest validation loss {best['val_loss']:.4f} at {_at(best)}"
        if last is best:
            s += ", its last point"
        else:
            change = last["val_loss"] - best["val_loss"]
            s += f"; last point {last['val_loss']:.4f} ({change:+.4f} from the lowest)"
        facts.append(s + ".")
    cross = _crossing(runs)
    if cross:
        facts.append(cross)
    return facts


def _crossing(runs: list[Run]) -> str | None:
    """Where two runs' validation curves swap order, at the token counts both measured."""
    if len(runs) != 2:
        return None
    a, b = ({m["tokens"]: m for m in r.metrics if "val_loss" in m and "tokens" in m}
            for r in runs)
    swaps, prev = [], None
    for t in sorted(set(a) & set(b)):
        sign = (a[t]["val_loss"] > b[t]["val_loss"]) - (a[t]["val_loss"] < b[t]["val_loss"])
        if prev and sign and sign != prev[1]:
            swaps.append(f"{_at(a[prev[0]])} and {_at(a[t])}")
        if sign:
            prev = (t, sign)
    if not swaps:
        return None
    lower = runs[0].label if prev[1] < 0 else runs[1].label
    return (f"The two validation curves swap order between {'; between '.join(swaps)} "
            f"(measured points on either side); at the last shared point {lower} is lower.")


def _at(m: dict) -> str:
    return (f"{m['epochs']:.3g} epochs" if m.get("epochs") is not None
            else f"{_si(m['tokens'])} tokens")


def _run_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for r in runs:
        vals = [m for m in r.metrics if "val_loss" in m]
        best = min(vals, key=lambda m: m["val_loss"]) if vals else None
        last = vals[-1] if vals else None
        speed = [m["tokens_per_s"] for m in r.metrics if m.get("tokens_per_s")]
        rows.append({"label": r.label, "objective": r.objective,
                     # U, the corpus's exact unique tokens (run/2 keeps it under `corpus`),
                     # and one pass over the packed windows (a few tokens less)
                     "unique": unique_tokens_of(r.config),
                     "epoch_tokens": r.config.get("epoch_tokens"),
                     "total": r.config.get("total_tokens"), "epochs": r.config.get("epochs"),
                     "best": best, "last": last,
                     "tokens_per_s": sorted(speed)[len(speed) // 2] if speed else None})
    return rows


def choice_series_name(s: dict) -> str:
    """The run a code-choice score belongs to: its `run`, the run folder of its model path, or
    its objective (one run per objective in a bench/crossover.py file)."""
    if s.get("run"):
        return str(s["run"])
    model = str(s.get("model") or "")
    if model:
        mp = Path(model)
        return mp.parent.parent.name if mp.parent.name == "checkpoints" else mp.name
    return str(s.get("objective", "?"))


def _choice_groups(scores: list[dict]) -> dict[str, list[dict]]:
    """One series per run. Scores from different files that name the same run stay apart."""
    files: dict[str, set] = {}
    for s in scores:
        files.setdefault(choice_series_name(s), set()).add(s.get("_file", ""))
    groups: dict[str, list[dict]] = {}
    for s in scores:
        name = choice_series_name(s)
        if len(files[name]) > 1:
            name = f"{name} ({Path(s.get('_file', '')).stem})"
        groups.setdefault(name, []).append(s)
    return groups


def _choice_chart(scores: list[dict]) -> dict | None:
    if not scores:
        return None
    groups = _choice_groups(scores)
    lines = [(name, sorted((s.get("tokens") or 0, s["accuracy"], s.get("stderr"))
                           for s in rows)) for name, rows in sorted(groups.items())]
    chance = scores[0].get("chance", 0.25)
    xs = [s.get("tokens") for s in scores if s.get("tokens")]
    if xs:
        lines.append((f"chance {100 * chance:.0f}%", [(min(xs), chance), (max(xs), chance)]))
    dashed = {name for name, rows in groups.items() if rows[0].get("objective") == "ar"}
    rows = [dict(s, series=name) for name, g in groups.items() for s in g]
    return {"title": "Code choice: reference vs 3 failing mutants, ranked by likelihood",
            "svg": line_chart(lines, x_label="total tokens", y_label="accuracy", log_x=True,
                              percent=True, dashed=dashed,
                              reference={n for n, _ in lines if n.startswith("chance")}),
            "rows": sorted(rows, key=lambda s: (s["series"], s.get("tokens") or 0))}


def report_context(results: list[Result], runs: list[Run], title: str,
                   choices: list[dict] | None = None, notes: str = "") -> dict:
    rows = [result_row(r) for r in results]
    ks = _union_ks(rows)
    _mark_best([r for r in rows if not r["partial"]], ks)  # a partial result is not comparable
    for r in rows:
        r.setdefault("best", set())
    return {"title": title, "results": rows, "ks": ks,
            "has_plus": any("plus" in r["phases"] for r in rows),
            "matrix": _per_task_matrix(results), "curves": _curves(runs),
            "curve_facts": curve_facts(runs), "runs": _run_rows(runs),
            "has_ar": any(r.objective == "ar" for r in runs),
            "choice": _choice_chart(choices or []), "notes": notes,
            "created": _now(), "version": __version__}


def render_report(results: list[Result], runs: list[Run], title: str,
                  choices: list[dict] | None = None, notes: str = "") -> str:
    ctx = report_context(results, runs, title, choices, notes)
    return _env().get_template("report.html").render(**ctx)


def render_leaderboard(results: list[Result], title: str) -> str:
    """The single-page leaderboard of `codediff report --leaderboard` (the site of
    `codediff leaderboard` renders the same board with links, files and the speed view)."""
    from codediff.reports.leaderboard import board_context

    ctx = board_context(results, [], title)
    return _env().get_template("leaderboard.html").render(**ctx)


def _now() -> str:
    stamp = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds of published reports
    t = dt.datetime.fromtimestamp(int(stamp), dt.UTC) if stamp else dt.datetime.now(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M UTC")
