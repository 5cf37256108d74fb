"""`codediff leaderboard`: a static leaderboard site from results dirs, rendered from files only.

    codediff leaderboard res/ar res/mdm-tau0.9 --out site/
    codediff leaderboard res/mdm-tau0.7 --out site/     # adds one: nothing is judged again

The site works from file:// with no network: index.html holds one sortable, filterable table per
task (ranked by plus pass@1 where the task has plus inputs, else pass@1; results judged on part of
a task are listed below the ranking, marked), an accuracy-vs-speed chart per task with the Pareto
front, and links to one page per model (the comparison report of that result). leaderboard.json
and leaderboard.csv hold the same rows. The site remembers its sources in leaderboard.json, so a
later call with the same --out adds to them (--overwrite starts over; --fresh, its old name, is
still accepted).

A folder that is not a results dir is searched for results dirs, for code-choice score files
(`codediff score`, bench/crossover.py choice.json: a code-choice board) and for run dirs (the
training facts of those scores), e.g. reports/reference/crossover-tiny-5m.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from pathlib import Path

from codediff.reports.load import Result, Run, load_choice_scores, load_result, load_run
from codediff.reports.stats import CI_METHOD, Z95
from codediff.reports.svg import pareto_front, scatter_chart

from codediff.errors import UserError
from codediff.formats import CHOICE_SCORE_SCHEMA, unique_tokens_of

INDEX_SCHEMA = "codediff.leaderboard/1"


class _Fresh(argparse.Action):
    """`--fresh`: the deprecated name of --overwrite; a note on stderr says so."""

    def __init__(self, option_strings, dest, **kw):
        kw.pop("nargs", None)
        super().__init__(option_strings, "overwrite", nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print("codediff leaderboard: --fresh is the old name of --overwrite; use --overwrite",
              file=sys.stderr)
        setattr(namespace, self.dest, True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RESULTS_DIR",
                        help="results dirs (codediff evaluate), LABEL=DIR to name one, or folders "
                             "holding results dirs, code-choice score files and run dirs")
    parser.add_argument("--out", required=True, help="folder to write the site into")
    parser.add_argument("--title", default="codediff leaderboard")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the site in --out with one of these inputs alone (without "
                             "it, the results an earlier call put there are kept)")
    # the flag's old name, kept so that scripts written for it still work; not in --help
    parser.add_argument("--fresh", action=_Fresh, help=argparse.SUPPRESS)


# ---------------------------------------------------------------- collecting inputs

class Inputs:
    def __init__(self) -> None:
        self.results: list[tuple[Result, bool]] = []  # (result, label given by the user)
        self.choices: list[dict] = []
        self.runs: list[Run] = []
        self.sources: list[dict] = []


def _split(spec: str) -> tuple[str | None, str]:
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        return label, path
    return None, spec


def collect(specs: list[tuple[str | None, str]]) -> Inputs:
    got = Inputs()
    seen: set[Path] = set()
    seen_results: set[Path] = set()
    for label, spec in specs:
        p = Path(spec)
        if not p.exists():
            raise UserError(f"{spec}: no such file or folder; pass a results dir written by "
                            "`codediff evaluate`")
        key = p.resolve()
        if key in seen:
            continue
        seen.add(key)
        got.sources.append({"path": str(key), **({"label": label} if label else {})})
        if p.is_file() or (p / "results.json").is_file():
            if p.is_file() and p.name != "results.json":
                got.choices += _tag(load_choice_scores(p), p)
            elif (p if p.is_dir() else p.parent).resolve() not in seen_results:
                seen_results.add((p if p.is_dir() else p.parent).resolve())
                got.results.append((load_result(p, label), label is not None))
            continue
        found = sorted(f.parent for f in p.rglob("results.json"))
        for d in found:
            if d.resolve() not in seen_results:  # named on its own as well: listed once
                seen_results.add(d.resolve())
                got.results.append((load_result(d), False))
        choice_files = [f for f in sorted(p.glob("*.json")) if _is_choice_file(f)]
        for f in choice_files:
            got.choices += _tag(load_choice_scores(f), f)
        runs = sorted(d for d in p.iterdir() if (d / "metrics.jsonl").is_file())
        got.runs += [load_run(d, d.name) for d in runs]
        if not found and not choice_files:
            raise UserError(f"{spec}: holds no results.json and no code-choice scores; pass "
                            "folders written by `codediff evaluate`")
    return got


def _tag(rows: list[dict], f: Path) -> list[dict]:
    return [dict(r, _file=str(f)) for r in rows]


def _is_choice_file(f: Path) -> bool:
    try:
        data = json.loads(f.read_text())
    except (ValueError, OSError):
        return False
    first = data[0] if isinstance(data, list) and data else data
    return isinstance(first, dict) and first.get("schema") == CHOICE_SCORE_SCHEMA


# ---------------------------------------------------------------- the boards

def _slug(text: str, key: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:48] or "model"
    return f"{base}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def board_context(results: list[Result], choices: list[dict], title: str,
                  runs: list[Run] | None = None, links: bool = False) -> dict:
    from codediff.reports.render import _mark_best, _now, _union_ks, choice_series_name
    from codediff.reports.rows import result_row

    from codediff import __version__

    boards: dict[str, dict] = {}
    for r in results:
        row = result_row(r)
        row["page"] = f"models/{_slug(r.label, str(r.path))}.html" if links else None
        boards.setdefault(r.task, {"rows": []})["rows"].append(row)
    for task, b in boards.items():
        rows = b["rows"]
        rows.sort(key=lambda r: -(r["score"]["v"] if r["score"] else -1.0))
        ranked = [r for r in rows if not r["partial"]]
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
        partial = [r for r in rows if r["partial"]]
        for r in partial:
            r["rank"] = None
        b["ks"] = _union_ks(rows)
        _mark_best(ranked, b["ks"])
        for r in partial:
            r["best"] = set()
        b["ranked"], b["partial"] = ranked, partial
        b["has_plus"] = any("plus" in r["phases"] for r in rows)
        b["has_published"] = any(r.get("published") for r in rows)
        b["id"] = "board-" + re.sub(r"[^A-Za-z0-9]+", "-", task)
        b["speed"] = _speed_chart(ranked)
    choice_board = _choice_board(choices, runs or [], links) if choices else None
    return {"title": title, "boards": dict(sorted(boards.items())), "choice": choice_board,
            "links": links, "CI_METHOD": CI_METHOD, "created": _now(), "version": __version__,
            "series_name": choice_series_name}


def _speed_chart(rows: list[dict]) -> dict | None:
    """pass@1 against output tokens/s, one point per model x decoding setting."""
    pts = [r for r in rows if r["out_tps"] and r["score"]]
    if not pts:
        return None
    front = set(pareto_front([(r["out_tps"], r["score"]["v"]) for r in pts]))
    for i, r in enumerate(pts):
        r["pareto"] = i in front
    points = [{"name": r["label"] + (f" · {r['decoding_text']}" if r["decoding_text"] else ""),
               "x": r["out_tps"], "y": r["score"]["v"], "lo": r["score"]["lo"],
               "hi": r["score"]["hi"], "front": r["pareto"]} for r in pts]
    y = "plus pass@1" if any("plus" in r["phases"] for r in pts) else "pass@1"
    return {"svg": scatter_chart(points, x_label="output tokens/s", y_label=y),
            "front": [r["label"] for r in pts if r["pareto"]]}


def _choice_board(scores: list[dict], runs: list[Run], links: bool) -> dict:
    from codediff.reports.render import _choice_groups

    run_by = {r.label: r for r in runs} | {r.objective: r for r in runs}
    rows = []
    for series, group in _choice_groups(scores).items():
        run = run_by.get(series) or run_by.get(str(group[0].get("objective")))
        page = f"models/{_slug('choice-' + series, series + group[0].get('_file', ''))}.html"
        for s in group:
            acc, se = s["accuracy"], s.get("stderr")
            rows.append({
                "label": f"{series}@{s.get('checkpoint') or s.get('tokens')}", "series": series,
                "page": page if links else None, "group": group, "run": run,
                "accuracy": acc, "lo": max(0.0, acc - Z95 * se) if se is not None else None,
                "hi": min(1.0, acc + Z95 * se) if se is not None else None,
                "method": s.get("method"), "samples": s.get("samples"), "n": s.get("n"),
                "objective": s.get("objective"), "tokens": s.get("tokens"),
                "epochs": s.get("epochs"),
                "unique_tokens": unique_tokens_of(run.config) if run else None,
                "chance": s.get("chance")})
    rows.sort(key=lambda r: -r["accuracy"])
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return {"rows": rows, "id": "board-codechoice"}


# ---------------------------------------------------------------- files beside the page

COLUMNS = ["task", "rank", "label", "partial", "problems_covered", "problems_total", "samples",
           "n_min", "n_max"]


def flat_rows(ctx: dict) -> list[dict]:
    """The boards' rows as flat records (the JSON and CSV files)."""
    out = []
    for task, b in ctx["boards"].items():
        for r in b["ranked"] + b["partial"]:
            rec = {"task": task, "rank": r["rank"], "label": r["label"], "partial": r["partial"],
                   "problems_covered": r["covered"], "problems_total": r["total"],
                   "samples": r["samples"], "n_min": r["n"].get("min"),
                   "n_max": r["n"].get("max")}
            for ph in ("base", "plus"):
                for k in b["ks"]:
                    p = (r["pass"].get(ph) or {}).get(k) if ph in r["phases"] else None
                    for part in ("v", "lo", "hi"):
                        name = f"{ph}_pass@{k}" + ("" if part == "v" else f"_ci95_{part}")
                        rec[name] = p[part] if p else None
            rec.update({f"decoding_{k}": v for k, v in r["decoding"].items()})
            pub = r.get("published") or {}
            rec.update(recipe=r.get("recipe"), published_metric=pub.get("metric"),
                       published_phase=pub.get("phase"), published_value=pub.get("value"),
                       published_ours=pub.get("ours"), published_source=pub.get("source"))
            rec.update(nfe=r["nfe"], tokens_per_forward=r["tokens_per_forward"],
                       output_tokens_per_s=r["out_tps"], generation_seconds=r["gen_seconds"])
            rec.update({f"train_{k}": v for k, v in r["training"].items()})
            rec.update({f"env_{k}": v for k, v in r["env"].items()})
            rec.update(dataset=r["dataset"].get("name"), dataset_version=r["dataset"].get(
                "version"), results_dir=r["path"], page=r.get("page"))
            out.append(rec)
    if ctx.get("choice"):
        for r in ctx["choice"]["rows"]:
            out.append({"task": "codechoice", "rank": r["rank"], "label": r["label"],
                        "accuracy": r["accuracy"], "accuracy_ci95_lo": r["lo"],
                        "accuracy_ci95_hi": r["hi"], "method": r["method"], "n": r["n"],
                        "train_objective": r["objective"], "train_tokens": r["tokens"],
                        "train_epochs": r["epochs"], "train_unique_tokens": r["unique_tokens"],
                        "page": r["page"]})
    return out


def to_csv(records: list[dict]) -> str:
    cols: list[str] = []
    for rec in records:
        cols += [c for c in rec if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({c: "" if rec.get(c) is None else rec[c] for c in cols})
    return buf.getvalue()


# ---------------------------------------------------------------- the command

def _previous_sources(out: Path) -> list[dict]:
    f = out / "leaderboard.json"
    if not f.is_file():
        return []
    try:
        data = json.loads(f.read_text())
    except ValueError:
        return []
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA:
        return []
    return [s for s in data.get("sources", []) if Path(s.get("path", "")).exists()]


def _runs_of(r: Result) -> list[Run]:
    """The training run a result's model came from, when its run dir is on this machine: the
    model page then shows the run's curves beside the result."""
    path = r.model.get("path")
    if not path:
        return []
    p = Path(str(path))
    for d in (p, p.parent.parent if p.parent.name == "checkpoints" else None):
        if d is not None and (d / "metrics.jsonl").is_file():
            try:
                return [load_run(d)]
            except UserError:
                return []
    return []


def build_site(specs: list[tuple[str | None, str]], out: Path, title: str) -> dict:
    """Validate every input, then write the site; returns the board context."""
    from codediff.reports.labels import make_unique
    from codediff.reports.render import _env, report_context

    from codediff.formats import atomic_write_text as write_atomic

    got = collect(specs)
    results = [r for r, _ in got.results]
    make_unique(results, [given for _, given in got.results])
    ctx = board_context(results, got.choices, title, got.runs, links=True)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the site")
    env = _env()
    pages: dict[str, str] = {}
    for r, row in ((r, row) for r in results for b in ctx["boards"].values()
                   for row in b["ranked"] + b["partial"] if row["path"] == str(r.path)):
        page = report_context([r], _runs_of(r), r.label)
        page["back"] = "../index.html"
        pages[row["page"]] = env.get_template("report.html").render(**page)
    if ctx["choice"]:
        for row in ctx["choice"]["rows"]:
            if row["page"] not in pages:
                runs = [row["run"]] if row["run"] else []
                page = report_context([], runs, f"code choice: {row['series']}", row["group"])
                page["back"] = "../index.html"
                pages[row["page"]] = env.get_template("report.html").render(**page)
    records = flat_rows(ctx)
    (out / "models").mkdir(parents=True, exist_ok=True)
    for name, html in pages.items():
        write_atomic(out / name, html)
    for old in (out / "models").glob("*.html"):  # pages of results no longer listed
        if f"models/{old.name}" not in pages:
            old.unlink()
    write_atomic(out / "leaderboard.json", json.dumps(
        {"schema": INDEX_SCHEMA, "title": title, "ci95": CI_METHOD, "sources": got.sources,
         "rows": records}, indent=1, default=str) + "\n")
    write_atomic(out / "leaderboard.csv", to_csv(records))
    write_atomic(out / "index.html", env.get_template("leaderboard.html").render(**ctx))
    return ctx


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    specs = [_split(s) for s in args.inputs]
    new = {str(Path(p).resolve()) for _, p in specs if Path(p).exists()}
    prev = [] if args.overwrite else [(s.get("label"), s["path"]) for s in _previous_sources(out)
                                  if s["path"] not in new]
    ctx = build_site(prev + specs, out, args.title)
    n = sum(len(b["ranked"]) + len(b["partial"]) for b in ctx["boards"].values())
    extra = f", {len(ctx['choice']['rows'])} code-choice scores" if ctx["choice"] else ""
    kept = f" ({len(prev)} kept from the earlier site)" if prev else ""
    print(f"wrote {out / 'index.html'}: {n} results in {len(ctx['boards'])} tasks{extra}{kept}; "
          f"rows also in {out / 'leaderboard.json'} and {out / 'leaderboard.csv'}")
    return 0
