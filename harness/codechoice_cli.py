"""`codediff codechoice`: build the 4-way code-choice set (reference vs three failing mutants)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from codediff import options
from codediff.errors import UserError
from codediff.options import option


@dataclass
class CodechoiceOptions:
    """`codediff codechoice`'s options (codediff.options turns them into flags)."""

    tasks: str = option("humaneval,mbpp", help="base-test tasks to draw problems from (comma "
                        "separated)")
    out: str = option("", required=True, help="JSONL file to write")
    seed: int = option(0, min=0, help="seed of the problem order and mutant choice")
    limit: int | None = option(None, min=1, help="keep at most this many rows",
                               default_text="all")
    data: str | None = option(None, help="task data folder",
                              default_text="$CODEDIFF_DATA, ../shared/data beside a checkout, "
                              "packaged files, then the hub")
    workers: int = option(0, min=0, help="parallel sandboxes (0 = all cores)")
    overwrite: bool = option(False, negatable=False,
                             help="replace an existing --out")
    progress: bool = option(True, help="progress bar (on a terminal)", false_aliases=("--quiet",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_arguments(parser, CodechoiceOptions)


def run(args: argparse.Namespace) -> int:
    from codediff.harness.codechoice import build
    from codediff.harness.tasks import get_spec

    o = options.from_args(CodechoiceOptions, args)
    names = [t.strip() for t in o.tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks: name at least one task (humaneval, mbpp)")
    for n in names:
        if get_spec(n).differential:
            raise UserError(f"--tasks {n}: code choice needs a base-test task (humaneval, mbpp)")
    options.check_out(o.out, folder=False, overwrite=o.overwrite)
    info = build(names, Path(o.out), data=o.data, seed=o.seed, limit=o.limit,
                 workers=o.workers or None, progress=o.progress and sys.stderr.isatty())
    per = ", ".join(f"{k} {v['rows']}/{v['problems']}" for k, v in info["per_task"].items())
    print(f"wrote {o.out}: {info['rows']} rows ({per}); sha256 {info['sha256'][:12]}")
    return 0
