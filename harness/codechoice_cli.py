"""`codediff codechoice`: build the 4-way code-choice set (reference vs three failing mutants)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codediff.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default="humaneval,mbpp",
                        help="base-test tasks to draw problems from (comma separated)")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="keep at most this many rows")
    parser.add_argument("--data", default=None, help="task data folder (default $CODEDIFF_DATA)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from codediff.harness.codechoice import build
    from codediff.harness.tasks import get_spec

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for n in names:
        if get_spec(n).differential:
            raise UserError(f"--tasks {n}: code choice needs a base-test task (humaneval, mbpp)")
    info = build(names, Path(args.out), data=args.data, seed=args.seed, limit=args.limit,
                 workers=args.workers, progress=not args.quiet and sys.stderr.isatty())
    per = ", ".join(f"{k} {v['rows']}/{v['problems']}" for k, v in info["per_task"].items())
    print(f"wrote {args.out}: {info['rows']} rows ({per}); sha256 {info['sha256'][:12]}")
    return 0
