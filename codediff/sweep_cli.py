"""`codediff sweep`: train and score a grid of cells on nested corpora; find the crossover.

    codediff sweep sweeps/reference.toml --out sweeps/reference --dry-run
    codediff sweep sweeps/reference.toml --out sweeps/reference --parallel 3
    codediff sweep sweeps/reference.toml --out sweeps/reference --emit slurm > sweep.sbatch
    codediff report --sweep sweeps/reference --out sweep.html

The spec format and the sweep dir: docs/sweep.md. Light module: nothing heavy is imported
before `run` decides what to do (evaluation alone loads torch, in its own process).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

from codediff import options
from codediff.errors import UserError
from codediff.options import option


@dataclass
class SweepOptions:
    """`codediff sweep`'s options (the positional SPEC is added by hand)."""

    out: str = option("", required=True, help="sweep dir (created; an existing one is resumed)")
    stage: str = option("all", choices=("all", "train", "eval", "summarize"),
                        help="all: train, score, summarize; train / eval: only that part of each "
                        "cell; summarize: crossover.json from the files alone")
    cells: list[str] | None = option(None, nargs="+", metavar="ID", help="only these cells "
                                     "(ids or shell patterns like 'tiny-U5M-*')",
                                     default_text="all")
    parallel: int = option(1, min=1, max=64, help="cells at once on each GPU (or on the CPU)")
    gpus: str = option("auto", help="GPUs to use: auto (CUDA_VISIBLE_DEVICES, else nvidia-smi), "
                       "none, or ids like 0,1,2,3; one process per GPU per cell, torchrun for "
                       "cells with gpus > 1")
    emit: str | None = option(None, choices=("commands", "slurm"), help="prepare the sweep dir "
                              "(corpora, cell files), then print one command per cell or a "
                              "Slurm array script instead of running", default_text="run here")
    dry_run: bool = option(False, negatable=False, help="print the cells with FLOPs and a time "
                           "estimate; write nothing")
    throughput: list[str] | None = option(None, nargs="+", metavar="PRESET:OBJ=TOK/S",
                                          help="training tokens/s of one run alone on one GPU "
                                          "for the estimate, e.g. tiny:ar=2.5M",
                                          default_text="docs/benchmarks.md's")
    device: str | None = option(None, help="eval stage: cpu, cuda, cuda:1",
                                default_text="cuda if a GPU is visible, else cpu")
    unsafe_no_sandbox: bool = option(False, negatable=False, help="judge task samples without "
                                     "bubblewrap (`codediff evaluate --unsafe-no-sandbox`; only "
                                     "on a throwaway machine)")
    score_during_training: bool = option(True, help="score a cell's kept checkpoints while it "
                                         "trains (one scoring process beside the trainer, on "
                                         "its GPUs), so only the last is left when training "
                                         "ends; off: score after training")
    progress: bool = option(True, help="progress lines", false_aliases=("--quiet",))
    status_every: int = option(60, min=0, metavar="SECONDS", help="while cells run: every "
                               "this many seconds one line per running cell (tokens trained of "
                               "its budget, rate and time left; checkpoints scored); 0: only "
                               "the start and end of each cell")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", metavar="SPEC.toml",
                        help="sweep spec (docs/sweep.md); default: the spec.toml of an existing "
                             "--out")
    options.add_arguments(parser, SweepOptions)


def _throughput(items: list[str] | None) -> dict[str, float]:
    from codediff.config import OBJECTIVES, PRESETS

    out = {}
    for item in items or []:
        key, _, rate = item.partition("=")
        p, _, o = key.partition(":")
        if not rate or p not in PRESETS or o not in OBJECTIVES:
            raise UserError(f"--throughput {item!r}: write PRESET:OBJECTIVE=TOKENS_PER_S, e.g. "
                            "tiny:ar=2.5M")
        n = options.parse_count(rate)
        if n < 1:
            raise UserError(f"--throughput {item!r}: the rate must be at least 1 token/s")
        out[key] = float(n)
    return out


def _select(spec, patterns: list[str] | None):
    if not patterns:
        return list(spec.cells)
    chosen = [c for c in spec.cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c.id, p) for c in spec.cells):
            ids = ", ".join(c.id for c in spec.cells[:4])
            raise UserError(f"--cells {p}: no cell of the spec matches (cells look like {ids}"
                            f"{', ...' if len(spec.cells) > 4 else ''})")
    return chosen


def run(args: argparse.Namespace) -> int:
    from codediff.sweep_spec import load_spec

    o = options.from_args(SweepOptions, args)
    out = Path(o.out)
    spec_path = args.spec
    if spec_path is None:
        spec_path = out / "spec.toml"
        if not spec_path.is_file():
            raise UserError(f"no SPEC given and {spec_path} does not exist; pass the spec file "
                            "(docs/sweep.md)")
    spec = load_spec(spec_path)
    cells = _select(spec, o.cells)
    rates = _throughput(o.throughput)
    if o.dry_run and o.emit:
        raise UserError("--dry-run and --emit: choose one (--dry-run writes nothing, --emit "
                        "prepares the sweep dir)")
    from codediff import sweep

    gpus = sweep.visible_gpus(o.gpus) if not (o.dry_run or o.emit) else []
    if o.dry_run:
        # what the run would refuse, the plan refuses too (the whole spec: the run prepares
        # every level, whatever --cells picks)
        sweep.check_corpus(spec)
        sweep.check_tasks(spec)
        spec.cells = cells
        plans = sweep.plan_cells(spec, sweep.spec_vocab(spec), rates,
                                 out if (out / "sweep.json").is_file() else None)
        n = len(sweep.visible_gpus(o.gpus)) if o.gpus != "auto" else 1
        print(sweep.dry_run_text(spec, plans, max(1, n), o.parallel))
        return 0
    if o.stage == "summarize":
        if not (out / "sweep.json").is_file():
            raise UserError(f"--out {out}: no sweep.json; run the sweep first")
        res = sweep.summarize_dir(out)
        print(sweep.crossover_text(res) or "no comparison yet (needs ar and mdm cells of one U)")
        return 0
    if o.stage == "eval" and len(cells) == 1 and (out / "sweep.json").is_file() \
            and not o.emit:
        # one cell's checkpoints, in this process (what the scheduler and emitted commands run)
        from codediff.sweep_eval import evaluate_cell

        options.check_device(o.device)
        n = evaluate_cell(spec, out, cells[0].id, device=o.device, progress=o.progress,
                          unsafe_no_sandbox=o.unsafe_no_sandbox)
        if o.progress:
            print(f"sweep: {cells[0].id}: {n} checkpoints scored", file=sys.stderr)
        return 0
    prepared = sweep.prepare(spec, out, progress=o.progress)
    prepared.unsafe_no_sandbox = o.unsafe_no_sandbox
    if o.emit == "commands":
        print(sweep.commands_text(prepared, cells))
        return 0
    if o.emit == "slurm":
        print(sweep.slurm_text(prepared, cells))
        return 0
    failed = sweep.run_cells(prepared, cells, gpus=gpus, parallel=o.parallel, stage=o.stage,
                             progress=o.progress, status_every=o.status_every,
                             score_during_training=o.score_during_training)
    res = sweep.summarize_dir(out)
    if o.progress:
        print(sweep.crossover_text(res), file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} cells failed ({', '.join(failed[:5])}"
                        f"{f' and {len(failed) - 5} more' if len(failed) > 5 else ''}); their logs are "
                        "in cells/<id>/; fix and rerun the same command to resume")
    return 0
