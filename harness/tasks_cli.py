"""`codediff tasks`: list the benchmark tasks, their formats and where their data comes from."""

from __future__ import annotations

import argparse

from codediff.harness.tasks import available_tasks, load_task

from codediff.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="data file or folder (default: "
                        "$CODEDIFF_DATA)")


def run(args: argparse.Namespace) -> int:
    specs = available_tasks()
    width = max(map(len, specs))
    print(f"{'task':{width}} {'problems':>8}  {'formats':24} data")
    for name, spec in specs.items():
        try:
            task = load_task(name, args.data)
            n, where = str(len(task.problems)), f"{task.dataset.path} ({task.dataset.sha256[:12]})"
        except UserError as e:
            n, where = "-", f"unavailable: {e}"
        print(f"{name:{width}} {n:>8}  {','.join(spec.formats):24} {where}")
    return 0
