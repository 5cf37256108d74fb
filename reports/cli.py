"""`codediff report`: HTML comparison reports and leaderboards from result and run folders.

    codediff report --results res/ar res/mdm --runs runs/ar runs/mdm --out report.html
    codediff report --leaderboard --results res/* --out leaderboard.html
    codediff report --sweep sweeps/reference --out sweep.html
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from codediff import options
from codediff.errors import UserError
from codediff.options import option


@dataclass
class ReportOptions:
    """`codediff report`'s options (codediff.options turns them into flags)."""

    results: list[str] = option(help="results dirs (codediff evaluate); LABEL=DIR sets the "
                                "column name", factory=list, nargs="*", default_text="none")
    runs: list[str] = option(help="run dirs (codediff train) for training curves; LABEL=DIR "
                             "sets the legend", factory=list, nargs="*", default_text="none")
    choices: list[str] = option(help="code-choice score files (codediff score, "
                                "bench/crossover.py choice.json)", factory=list, nargs="*",
                                default_text="none")
    sweep: str | None = option(None, metavar="DIR", help="a sweep dir (codediff sweep): "
                               "curves, crossovers and trends from its JSON files alone")
    notes: str | None = option(None, help="a text file shown under the title")
    out: str = option("", help="HTML file to write", required=True)
    title: str | None = option(None, help="page title",
                               default_text="codediff report / codediff leaderboard")
    leaderboard: bool = option(False, negatable=False,
                               help="a leaderboard per task instead of a comparison "
                               "report")
    overwrite: bool = option(False, negatable=False,
                             help="replace an existing --out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_arguments(parser, ReportOptions)


def _split(spec: str) -> tuple[str | None, str]:
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        return label, path
    return None, spec


def run(args: argparse.Namespace) -> int:
    from codediff.reports.labels import make_unique
    from codediff.reports.load import load_choice_scores, load_result, load_run
    from codediff.reports.render import render_leaderboard, render_report

    from codediff.formats import atomic_write_text

    args = options.from_args(ReportOptions, args)
    if args.sweep:
        if args.results or args.runs or args.choices or args.leaderboard:
            raise UserError("--sweep makes a report of its own; leave out --results, --runs, "
                            "--choices and --leaderboard")
        from codediff.reports.sweep import render_sweep

        options.check_out(args.out, folder=False, overwrite=args.overwrite)
        html = render_sweep(args.sweep, args.title)
        atomic_write_text(Path(args.out), html)
        print(f"wrote {args.out} (sweep {args.sweep})")
        return 0
    if not args.results and not args.runs and not args.choices:
        raise UserError("nothing to report: pass --results DIR..., --runs DIR..., --choices or "
                        "--sweep DIR")
    if args.leaderboard and not args.results:
        raise UserError("--leaderboard needs --results DIR...")
    options.check_out(args.out, folder=False, overwrite=args.overwrite)
    specs = list(map(_split, args.results))
    results = [load_result(p, label) for label, p in specs]
    make_unique(results, [label is not None for label, _ in specs])  # tables are keyed by label
    runs = [load_run(p, label) for label, p in map(_split, args.runs)]
    choices = [dict(row, _file=p) for p in args.choices for row in load_choice_scores(p)]
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
