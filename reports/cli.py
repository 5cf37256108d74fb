"""`codediff report`: HTML comparison reports and leaderboards from result and run folders.

    codediff report --results res/ar res/mdm --runs runs/ar runs/mdm --out report.html
    codediff report --leaderboard --results res/* --out leaderboard.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codediff.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", nargs="*", default=[], help="results dirs (codediff "
                        "evaluate); LABEL=DIR sets the column name")
    parser.add_argument("--runs", nargs="*", default=[], help="run dirs (codediff train) for "
                        "training curves; LABEL=DIR sets the legend")
    parser.add_argument("--choices", nargs="*", default=[], help="code-choice score files "
                        "(codediff score, bench/crossover.py choice.json)")
    parser.add_argument("--notes", default=None, help="a text file shown under the title")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--leaderboard", action="store_true",
                        help="a leaderboard per task instead of a comparison report")


def _split(spec: str) -> tuple[str | None, str]:
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        return label, path
    return None, spec


def run(args: argparse.Namespace) -> int:
    from codediff.reports.load import load_choice_scores, load_result, load_run
    from codediff.reports.render import render_leaderboard, render_report

    from codediff.formats import atomic_write_text

    if not args.results and not args.runs and not args.choices:
        raise UserError("nothing to report: pass --results DIR..., --runs DIR... or --choices")
    if args.leaderboard and not args.results:
        raise UserError("--leaderboard needs --results DIR...")
    results = [load_result(p, label) for label, p in map(_split, args.results)]
    runs = [load_run(p, label) for label, p in map(_split, args.runs)]
    choices = [row for p in args.choices for row in load_choice_scores(p)]
    notes = ""
    if args.notes:
        if not Path(args.notes).is_file():
            raise UserError(f"--notes {args.notes}: no such file")
        notes = Path(args.notes).read_text()
    out = Path(args.out)
    if args.leaderboard:
        html = render_leaderboard(results, args.title or "codediff leaderboard")
    else:
        html = render_report(results, runs, args.title or "codediff report", choices, notes)
    atomic_write_text(out, html)
    print(f"wrote {out} ({len(results)} results, {len(runs)} runs)")
    return 0
