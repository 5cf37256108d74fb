"""`codediff tasks`: list the benchmark tasks, their prompt formats (the default one marked `*`)
and where their data comes from."""

from __future__ import annotations

import argparse

from codediff.harness.tasks import available_tasks, load_task

from codediff.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="data file or folder (default: "
                        "$CODEDIFF_DATA)")


DEFAULT_MARK = "*"


def formats_of(spec) -> str:
    """A task's prompt formats, its default one marked: `infill*,prefix`."""
    return ",".join(name + (DEFAULT_MARK if name == spec.default_format else "")
                    for name in spec.formats)


def run(args: argparse.Namespace) -> int:
    specs = available_tasks()
    width = max(map(len, specs))
    header = f"formats ({DEFAULT_MARK} default)"
    fwidth = max(len(header), *(len(formats_of(s)) for s in specs.values()))
    print(f"{'task':{width}} {'problems':>8}  {header:{fwidth}}  data")
    for name, spec in specs.items():
        try:
            task = load_task(name, args.data)
            n, where = str(len(task.problems)), f"{task.dataset.path} ({task.dataset.sha256[:12]})"
        except UserError as e:
            n, where = "-", f"unavailable: {e}"
        print(f"{name:{width}} {n:>8}  {formats_of(spec):{fwidth}}  {where}")
    print(f"{DEFAULT_MARK} the task's default prompt format (what `codediff generate` uses without "
          "--prompt-format)")
    return 0
