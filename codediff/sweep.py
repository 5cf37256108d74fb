"""`codediff sweep`: a grid of `codediff train` runs on nested corpora, every kept checkpoint
evaluated, the crossover found (docs/sweep.md). Torch-free: training and evaluation run as
`codediff` subprocesses, so one GPU can hold several cells and a cluster can take the commands.

The sweep dir (docs/formats.md, "Sweep dir"):

    spec.toml               the spec the sweep runs (a rerun without SPEC uses it)
    sweep.json              manifest: the spec, the corpora with their hashes, the cells
    corpora/full/           the corpus built at the largest U (or the spec's corpus dir)
    corpora/U-<U>/          each U: the first U tokens of the full train stream; tokenizer and
                            val.bin shared (hard links)
    cells/<id>/cell.json    what the cell trains (refused if a rerun's spec changes it)
    cells/<id>/train.toml   its `codediff train --config`
    cells/<id>/run/         its run dir (run.json, metrics.jsonl, checkpoints/, state/)
    cells/<id>/eval/tokens-<N>.json   one kept checkpoint's scores
    crossover.json          where mdm first beats ar, per (U, preset, seed, metric)

Everything is resumable: a rerun skips finished cells, resumes interrupted ones (`codediff
train` resumes a run dir with the same options) and evaluates only what is missing.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codediff import __version__
from codediff.errors import UserError
from codediff.formats import (
    CROSSOVER_SCHEMA,
    SWEEP_CELL_SCHEMA,
    SWEEP_SCHEMA,
    atomic_write_json,
    atomic_write_text,
    building_dir,
    file_sha256,
    identity_diff,
    read_json_or_none,
    schema_major,
)
from codediff.sweep_spec import Cell, Spec, build_cell_configs, overrides_toml, si, train_args

# Training tokens/s of one run alone on one GPU at the preset's own shape (docs/benchmarks.md),
# and where each number comes from. A cell's time is its FLOPs over (this rate x the preset's
# FLOPs per token), so a cell with another vocabulary or length is scaled. Override with the
# spec's [throughput] table or --throughput.
THROUGHPUT: dict[str, tuple[float, str]] = {
    "tiny:ar": (2.50e6, "H100, codediff 2.50-2.72M tok/s (Training throughput, runs 5-9)"),
    "tiny:mdm": (2.48e6, "H100, codediff 2.35-2.58M tok/s (runs 5-9)"),
    "small:ar": (5.70e5, "H200, 545-598K tok/s (After the structural refactor)"),
    "small:mdm": (5.80e5, "H200, 570-598K tok/s (After the structural refactor)"),
    "mid:ar": (1.05e6, "not measured: ~300 TFLOP/s assumed, between tiny and small"),
    "mid:mdm": (1.05e6, "not measured: as mid:ar"),
    "coder-1.7b:ar": (4.2e4, "not measured: 45% MFU of an H200 (989 TFLOP/s bf16) assumed"),
    "coder-1.7b:mdm": (4.2e4, "not measured: as coder-1.7b:ar"),
}
STAGES = ("all", "train", "eval", "summarize")
# a sweep dir's data (JSON, logs, the code-choice set) belongs in git; its weights, token files
# and generated samples do not: `git add SWEEP_DIR` takes the right files
GITIGNORE = """# written by `codediff sweep`: commit the data, not the weights or token files
corpora/*/*.bin
corpora/*/tokenizer.json
cells/*/run/checkpoints/
cells/*/run/state/
cells/*/run/state.tmp/
cells/*/run/.state.old/
cells/*/eval/tokens-*/
"""


# ----------------------------------------------------------------------------- paths

def cell_dir(out: Path, cell_id: str) -> Path:
    return out / "cells" / cell_id


def level_dir(out: Path, u: int) -> Path:
    return out / "corpora" / f"U-{si(u)}"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- nested corpora

def nest_corpus(full: Path, u: int, dest: Path) -> dict[str, Any]:
    """Write corpus dir `dest` holding the first `u` training tokens of corpus `full` (its last
    token set to end-of-text, which is what `codediff corpus` writes when it cuts a document), with
    `full`'s tokenizer and validation set (hard links where the file system allows). Returns its
    manifest. With the same sources, seed and tokenizer this is the corpus `codediff corpus -U u`
    builds (docs/formats.md): nesting by cutting keeps one tokenizer and one document order."""
    fm = json.loads((full / "manifest.json").read_text())
    n_full = int(fm["train"]["tokens"])
    if u > n_full:
        raise UserError(f"U {u:,} is larger than the corpus {full} ({n_full:,} training "
                        "tokens); build it larger or drop that U")
    if u < 2:
        raise UserError(f"U {u}: a corpus needs at least 2 training tokens")
    dtype = np.dtype(fm.get("dtype", "uint16")).newbyteorder("<")
    eot = int(fm["tokenizer"]["eot_id"])
    src = np.memmap(full / fm["train"].get("file", "train.bin"), dtype=dtype, mode="r")
    with building_dir(dest) as tmp:
        if u == n_full:
            _link_or_copy(full / fm["train"].get("file", "train.bin"), tmp / "train.bin")
            train = src
        else:
            train = np.array(src[:u], dtype=dtype)
            train[-1] = eot
            with open(tmp / "train.bin", "wb") as f:
                f.write(memoryview(train).cast("B"))
                f.flush()
                os.fsync(f.fileno())
        for name in ("tokenizer.json", fm["val"].get("file", "val.bin")):
            _link_or_copy(full / name, tmp / name)
        train_sha = file_sha256(tmp / "train.bin")
        manifest = dict(fm)
        manifest["unique_tokens"] = u
        manifest["train"] = {"file": "train.bin", "tokens": u,
                             "documents": int(np.count_nonzero(np.asarray(train) == eot)),
                             "sha256": train_sha,
                             "cut_document": fm["train"].get("cut_document") if u == n_full
                             else None}
        # which source each token came from is not kept in a corpus dir: these counts are the
        # full corpus's and would mislead here
        manifest["sources"] = [{k: v for k, v in s.items() if k not in
                                ("train_tokens", "train_documents")} if isinstance(s, dict)
                               else s for s in fm.get("sources", [])]
        manifest["nested"] = {
            "parent_manifest_sha256": file_sha256(full / "manifest.json"),
            "parent_unique_tokens": n_full,
            "rule": "train.bin is the parent's first U training tokens with the last set to "
                    "end-of-text; tokenizer.json and val.bin are the parent's"}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def _level_files_ok(d: Path, m: dict) -> bool:
    """A level's token files and tokenizer are there, at the sizes its manifest says."""
    item = np.dtype(m.get("dtype", "uint16")).itemsize
    try:
        return ((d / "train.bin").stat().st_size == m["train"]["tokens"] * item
                and (d / "val.bin").stat().st_size == m["val"]["tokens"] * item
                and (d / "tokenizer.json").is_file())
    except (OSError, KeyError, TypeError):
        return False


def _corpus_hashes(d: Path) -> dict[str, Any]:
    m = json.loads((d / "manifest.json").read_text())
    return {"manifest_sha256": file_sha256(d / "manifest.json"),
            "unique_tokens": m.get("unique_tokens"), "train_sha256": m["train"].get("sha256"),
            "val_sha256": m["val"].get("sha256"),
            "tokenizer_sha256": (m.get("tokenizer") or {}).get("sha256"),
            "vocab_size": (m.get("tokenizer") or {}).get("vocab_size")}


def build_full_corpus(spec: Spec, dest: Path, progress: bool) -> None:
    """`codediff corpus` at the sweep's largest U into `dest` (in this process: torch-free)."""
    import argparse

    from codediff.corpus import cli as corpus_cli
    from codediff.corpus.build import build_corpus

    c = spec.corpus
    argv = [a for s in c.sources for a in ("--source", s)]
    argv += ["--unique-tokens", str(spec.levels[-1]), "--val-tokens", str(c.val_tokens),
             "--seed", str(c.seed), "--vocab-size", str(c.vocab_size), "--out", str(dest),
             *c.options]
    if not progress:
        argv.append("--no-progress")
    parser = argparse.ArgumentParser(prog="codediff corpus (from the sweep spec)",
                                     add_help=False)
    corpus_cli.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise UserError("the spec's [corpus] options are not valid `codediff corpus` options "
                        f"({shlex.join(argv)})") from None
    cfg = corpus_cli.config_from_args(args)
    build_corpus(cfg)


# ----------------------------------------------------------------------------- cells

def cell_state(out: Path, cell_id: str, metrics: list[str]) -> dict[str, Any]:
    """What is done of a cell, from its files: trained (the last logged step is the run's last
    step), its kept checkpoints (folders, or eval files whose checkpoints were not kept), and
    which of them have every metric."""
    d = cell_dir(out, cell_id)
    run = read_json_or_none(d / "run" / "run.json") or {}
    last, final_tokens = 0, None
    steps = run.get("steps")
    mpath = d / "run" / "metrics.jsonl"
    if mpath.is_file():
        for line in mpath.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                last = max(last, int(row.get("step", 0)))
            except (ValueError, AttributeError, TypeError):
                continue
            if steps and row.get("step") == steps:
                final_tokens = row.get("tokens")
    ckpts = {p.name for p in (d / "run" / "checkpoints").glob("tokens-*") if p.is_dir()}
    evals = {p.stem: read_json_or_none(p) or {} for p in (d / "eval").glob("tokens-*.json")}
    # the trainer logs its last step, then keeps the last checkpoint, then saves its state: a
    # run killed in between has every metrics row but not that checkpoint, and its state (here;
    # committed sweep data carries none) is older than the last step: not trained yet
    state = read_json_or_none(d / "run" / "state" / "trainer.json")
    final = f"tokens-{final_tokens}"
    if (state is not None and steps and int(state.get("step") or 0) < steps
            and (ckpts or evals) and final not in ckpts and final not in evals):
        last = min(last, int(state.get("step") or 0))
    names = sorted(ckpts | set(evals), key=lambda n: int(n.split("-")[1]))
    done = [n for n in names if all(k in (evals.get(n, {}).get("metrics") or {})
                                    for k in metrics)]
    missing = [n for n in names if n not in done and n not in ckpts]
    return {"trained": bool(steps) and last >= steps, "steps": steps, "step": last,
            "checkpoints": names, "evaluated": done, "unevaluable": missing,
            "eval_done": bool(names) and len(done) == len(names)}


def _check_cell(out: Path, cell: Cell, ident: dict) -> None:
    """Refuse a cell whose files were made with other settings, naming each differing field."""
    from codediff.formats import IDENTITIES

    path = cell_dir(out, cell.id) / "cell.json"
    old = read_json_or_none(path)
    if old is None:
        return
    schema_major(old, "sweep-cell", str(path), "remove that cell folder or choose another --out")
    diffs = identity_diff(old, ident, IDENTITIES["sweep cell"])
    if diffs:
        raise UserError(f"cell {cell.id} in {out} was made with other settings ("
                        + "; ".join(diffs[:6]) + "); restore the spec, or remove "
                        f"{cell_dir(out, cell.id)} to train it anew, or choose another --out")


# ----------------------------------------------------------------------------- estimates

@dataclass
class CellPlan:
    cell: Cell
    params: int
    flops: float
    checkpoints: int
    seconds: float  # training on one GPU alone
    eval_seconds: float
    rate_note: str
    rate: float | None = None
    status: str = "new"


def plan_cells(spec: Spec, vocab_size: int | None, throughput: dict[str, float],
               out: Path | None = None) -> list[CellPlan]:
    """Per cell: parameters, training FLOPs, kept checkpoints, and the time it takes at the
    measured throughput (docs/benchmarks.md; overridden by the spec and --throughput)."""
    from codediff.config import PRESETS

    plans = []
    for cell in spec.cells:
        model, train = build_cell_configs(cell, vocab_size)
        seq = train.seq_len or model.max_seq_len
        model.causal = cell.objective == "ar"
        fpt = model.flops_per_token(seq)
        key = f"{cell.preset}:{cell.objective}"
        rate, note = THROUGHPUT.get(key, (None, ""))
        if key in spec.throughput:
            rate, note = spec.throughput[key], "the spec's [throughput]"
        if key in throughput:
            rate, note = throughput[key], "--throughput"
        ref = PRESETS[cell.preset]
        ref_fpt = type(ref)(**{**ref.to_dict(), "causal": model.causal}).flops_per_token()
        flop_rate = (rate or 1e5) * ref_fpt
        seconds = cell.total_tokens * fpt / flop_rate
        # evaluation, forward passes only (a third of a training step's FLOPs per token):
        # validation tokens (x masking draws for mdm) and code choice (rows x 4 options x
        # draws x ~200 tokens); task entries at their measured cost (TASK_SECONDS_PER_100)
        ev = spec.eval
        fwd = train.val_tokens * (train.mdm_val_samples if cell.objective == "mdm" else 1)
        if ev.codechoice:
            rows = ev.codechoice.limit or 409
            fwd += rows * 4 * 200 * (ev.codechoice.mc_samples if cell.objective == "mdm" else 1)
        ckpts = train.checkpoint_points
        eval_seconds = ckpts * (fwd * fpt / 3 / flop_rate + 2.0
                                + _task_seconds(ev.tasks, ev.task_limit, cell))
        status = "new"
        if out is not None and (cell_dir(out, cell.id) / "cell.json").exists():
            st = cell_state(out, cell.id, ev.metrics)
            status = ("done" if st["trained"] and st["eval_done"] else
                      "trained" if st["trained"] else f"at step {st['step']}")
        plans.append(CellPlan(cell, model.num_params(), cell.total_tokens * fpt, ckpts,
                              seconds, eval_seconds,
                              note if rate else "no measurement: 100K tok/s assumed", rate,
                              status))
    return plans


# Seconds per task entry per checkpoint per 100 problems: greedy single-line infilling of a
# `tiny` model on an H200, generation and sandboxed judging together, mean of 38 entries
# (docs/benchmarks.md, "Infilling crossover at U = 5M": 0.8-2.8 s for HumanEval, 1.6-12.7 s for
# MBPP, whose slow fills wait out a time limit). Larger models generate more slowly: a floor.
TASK_SECONDS_PER_100 = 4.1


def _task_seconds(tasks: list[str], limit: int | None, cell: Cell) -> float:
    from codediff.harness.tasks import load_task
    from codediff.sweep_eval import _cannot_infill, split_task

    total = 0.0
    for entry in tasks:
        if _cannot_infill(entry, {"objective": cell.objective, **cell.overrides}):
            continue
        n = limit
        if n is None:
            try:
                n = len(load_task(split_task(entry)[0]).problems)
            except Exception:  # noqa: BLE001 - an estimate: a task that cannot load counts 500
                n = 500
        total += TASK_SECONDS_PER_100 * n / 100
    return total


def _hours(s: float) -> str:
    if s >= 360_000:
        return f"{s / 3600:,.0f} h"
    return f"{s / 3600:.2f} h" if s >= 360 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def dry_run_text(spec: Spec, plans: list[CellPlan], gpus: int, parallel: int) -> str:
    lines = [f"sweep {spec.name}: {len(plans)} cells, U = "
             + ", ".join(si(u) for u in spec.levels) + "; metrics: "
             + (", ".join(spec.eval.metrics) or "none")]
    head = (f"{'cell':<34} {'U':>6} {'total':>7} {'epochs':>7} {'params':>7} {'FLOPs':>9} "
            f"{'ckpts':>5} {'train':>9} {'eval':>9}  status")
    # train / eval: GPU time (one GPU's time; a cell on k GPUs takes about 1/k of it)
    lines += [head, "-" * len(head)]
    tot_f = tot_s = tot_e = 0.0
    for p in plans:
        c = p.cell
        lines.append(f"{c.id:<34} {si(c.unique_tokens):>6} {si(c.total_tokens):>7} "
                     f"{c.epochs:>7.3g} {_params(p.params):>7} {p.flops:>9.3g} {p.checkpoints:>5} "
                     f"{_hours(p.seconds):>9} {_hours(p.eval_seconds):>9}  {p.status}")
        tot_f += p.flops
        tot_s += p.seconds
        tot_e += p.eval_seconds
    todo = [p for p in plans if p.status != "done"]
    left = sum(p.seconds + p.eval_seconds for p in todo)
    lines.append("-" * len(head))
    lines.append(f"total: {tot_f:.3g} FLOPs; GPU time {_hours(tot_s)} training + "
                 f"{_hours(tot_e)} evaluation (tasks at {TASK_SECONDS_PER_100} s per 100 problems, "
                 "measured for `tiny`); "
                 f"left to do: {_hours(left)} on 1 GPU, about {_hours(left / max(1, gpus))} "
                 f"of wall time on {max(1, gpus)} GPU{'s' if gpus > 1 else ''}")
    lines.append("rates (tokens/s of one run alone on one GPU, at the preset's own shape):")
    for key in sorted({f"{p.cell.preset}:{p.cell.objective}" for p in plans}):
        p = next(p for p in plans if f"{p.cell.preset}:{p.cell.objective}" == key)
        lines.append(f"  {key}: {si(p.rate) if p.rate else '?'} ({p.rate_note})")
    if parallel > 1:
        lines.append(f"--parallel {parallel}: runs sharing a GPU share its throughput; the "
                     "estimate assumes they add up to one run alone (measured for two `tiny` "
                     "runs on an H100); measure before relying on more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- preparation

@dataclass
class Prepared:
    out: Path
    spec: Spec
    levels: dict[int, Path]
    corpus_sha: dict[int, str]
    vocab_size: int
    manifest: dict[str, Any]
    codechoice: Path | None = None
    cells: list[Cell] = field(default_factory=list)
    unsafe_no_sandbox: bool = False  # passed on to the eval commands


def _vocab_of_manifest(m: dict) -> int:
    v = int(m["tokenizer"]["vocab_size"])
    return 64 * -(-v // 64)


def spec_vocab(spec: Spec) -> int:
    """The embedding size the cells will get before any corpus exists (for estimates)."""
    if spec.corpus.dir is not None:
        m = read_json_or_none(Path(spec.corpus.dir) / "manifest.json")
        if m and isinstance(m.get("tokenizer"), dict):
            return _vocab_of_manifest(m)
    return 64 * -(-spec.corpus.vocab_size // 64)


def check_corpus(spec: Spec) -> None:
    """The spec's existing corpus dir ([corpus] dir) must be a corpus holding at least the
    largest U. Checked before anything is written (and by --dry-run): found only when that level
    is cut, it would stop the run halfway through making the sweep dir."""
    if spec.corpus.dir is None:
        return
    from codediff.data import open_corpus  # numpy only

    d = Path(spec.corpus.dir)
    try:
        n = len(open_corpus(d).train)
    except UserError as e:
        raise UserError(f"[corpus] dir {d}: {e}") from None
    over = [u for u in spec.levels if u > n]
    if over:
        cells = [c.id for c in spec.cells if c.unique_tokens > n]
        raise UserError(f"[corpus] dir {d} holds {n:,} training tokens ({si(n)}) and the largest "
                        f"U asked is {si(max(over))} ({max(over):,}; {len(cells)} cell"
                        f"{'s' if len(cells) != 1 else ''}, e.g. {cells[0]}); build a corpus "
                        "with at least that many unique tokens or drop U = "
                        + ", ".join(si(u) for u in over) + " from the grid")


def check_tasks(spec: Spec) -> None:
    from codediff.harness.tasks import available_tasks, load_task

    known = available_tasks()
    for t in spec.eval.tasks:
        if t.partition(":")[0] not in known:
            raise UserError(f"eval.tasks: {t!r} is not a task of this codediff (`codediff tasks` "
                            "lists them); remove it from the spec or update codediff")
    # the task's data must be readable now, not after every cell has trained
    for name in dict.fromkeys(t.partition(":")[0] for t in spec.eval.tasks):
        try:
            load_task(name)
        except UserError as e:
            raise UserError(f"eval.tasks: {name}: {e}") from None


def _eval_record(spec: Spec, codechoice_sha: str | None) -> dict[str, Any]:
    """The settings each metric is computed with (a rerun may add metrics, not change these)."""
    ev = spec.eval
    rec: dict[str, Any] = {}
    if ev.codechoice:
        cc = ev.codechoice
        rec["codechoice"] = {"file_sha256": codechoice_sha, "limit": cc.limit,
                             "mc_samples": cc.mc_samples, "seed": cc.seed}
    for t in ev.tasks:
        rec[t] = {"limit": ev.task_limit, "generate": dict(sorted(ev.generate.items()))}
    return rec


def prepare(spec: Spec, out: Path, *, progress: bool = True) -> Prepared:
    """Check everything, then make the sweep dir: corpora (built or found), nested levels, the
    code-choice set, cell files, manifest. Refuses a sweep dir made with another corpus or
    evaluation settings, and a cell whose settings changed, before writing anything."""
    from codediff import options

    options.check_out(out, folder=True, reusable=True)
    check_corpus(spec)
    check_tasks(spec)
    old = read_json_or_none(out / "sweep.json")
    if old is None and out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out}: the folder is not empty and is not a sweep dir; choose a "
                        "new or empty --out")
    if old is not None:
        return _prepare(spec, out, old, progress)
    # a new sweep dir: sweep.json is written last, so a failure on the way (a corpus build, the
    # code-choice set, an interrupt) would leave a folder that is neither empty nor a sweep dir,
    # and the corrected rerun would be refused; put the folder back as it was instead
    existed = out.is_dir()
    try:
        return _prepare(spec, out, None, progress)
    except BaseException:
        _undo_new_sweep_dir(out, existed)
        raise


def _undo_new_sweep_dir(out: Path, existed: bool) -> None:
    """Remove what a failed first preparation wrote: `out` itself when it did not exist, its
    contents when it was an empty folder (prepare refuses any other folder without sweep.json)."""
    if (out / "sweep.json").exists():  # it got that far: a sweep dir a rerun resumes
        return
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
    elif out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _prepare(spec: Spec, out: Path, old: dict | None, progress: bool) -> Prepared:
    """prepare() once the sweep dir is known to be new (`old` None) or a sweep (its manifest)."""
    if old is not None:
        schema_major(old, "sweep", str(out / "sweep.json"), "choose another --out")
        src_old = dict((old.get("corpus") or {}).get("source") or {})
        src_new = spec.corpus.record()
        if "dir" in src_old and "dir" in src_new:  # a moved corpus dir: its hashes decide
            src_old.pop("dir")
            src_new = {}
        diffs = identity_diff({"corpus": src_old}, {"corpus": src_new}, ["corpus"])
        if diffs:
            raise UserError(f"--out {out} is a sweep with another corpus (" + "; ".join(diffs[:6])
                            + "); restore the spec's [corpus] or choose another --out")
    if spec.corpus.dir is None:
        full = out / "corpora" / "full"
        fm = read_json_or_none(full / "manifest.json")
        if fm is None or not _level_files_ok(full, fm):
            if full.exists():  # its manifest alone (the token files are not kept in git)
                shutil.rmtree(full)
            if old is not None and progress:
                print(f"sweep: rebuilding the corpus into {full} (its hashes must match "
                      "sweep.json)", file=sys.stderr)
            out.mkdir(parents=True, exist_ok=True)
            build_full_corpus(spec, full, progress)
    else:
        full = Path(spec.corpus.dir)  # opened and checked by check_corpus
    fh = _corpus_hashes(full)
    if old is not None:
        rec = (old.get("corpus") or {}).get("full") or {}
        diffs = identity_diff({"corpus": {k: rec.get(k) for k in fh}}, {"corpus": fh}, ["corpus"])
        if diffs:
            raise UserError(f"the corpus {full} differs from the one the sweep in {out} was made "
                            "with (" + "; ".join(diffs[:4]) + "); rebuild it with the same "
                            "sources, seed and codediff, or choose another --out")
    vocab = _vocab_of_manifest(json.loads((full / "manifest.json").read_text()))
    # every cell's options, through `codediff train`'s own checks, before anything is written
    for c in spec.cells:
        build_cell_configs(c, vocab)
    levels, shas, level_recs = {}, {}, []
    for u in spec.levels:
        d = level_dir(out, u)
        m = read_json_or_none(d / "manifest.json")
        want = file_sha256(full / "manifest.json")
        if m is None or (m.get("nested") or {}).get("parent_manifest_sha256") != want \
                or m.get("unique_tokens") != u or not _level_files_ok(d, m):
            nest_corpus(full, u, d)  # first run, or token files left out of git: cut anew
        h = _corpus_hashes(d)
        levels[u], shas[u] = d, h["manifest_sha256"]
        level_recs.append({"unique_tokens": u, "dir": _rel(d, out),
                           "manifest_sha256": h["manifest_sha256"],
                           "train_sha256": h["train_sha256"]})
    if old is not None:
        was = {lv["unique_tokens"]: lv for lv in (old.get("corpus") or {}).get("levels", [])}
        for lv in level_recs:
            before = was.get(lv["unique_tokens"])
            if before and before.get("manifest_sha256") != lv["manifest_sha256"]:
                raise UserError(f"the U = {si(lv['unique_tokens'])} corpus differs from the one "
                                f"the sweep in {out} was made with (manifest sha256 "
                                f"{before.get('manifest_sha256', '?')[:12]} -> "
                                f"{lv['manifest_sha256'][:12]}); choose another --out")
    # cells: refuse any changed one before writing a single cell file
    idents = {c.id: c.identity(shas[c.unique_tokens]) for c in spec.cells}
    for c in spec.cells:
        _check_cell(out, c, idents[c.id])
    cc_path, cc_sha = None, None
    if spec.eval.codechoice:
        cc_path = Path(spec.eval.codechoice.file) if spec.eval.codechoice.file \
            else out / "codechoice.jsonl"
        if not cc_path.is_file():
            if spec.eval.codechoice.file:
                raise UserError(f"eval.codechoice.file {cc_path}: no such file; build it with "
                                "`codediff codechoice --out FILE` or leave `file` out")
            _build_codechoice(cc_path, out, progress)
        cc_sha = file_sha256(cc_path)
    new_eval = _eval_record(spec, cc_sha)
    if old is not None:
        old_eval = old.get("eval") or {}
        shared = sorted(set(old_eval) & set(new_eval))
        diffs = identity_diff({k: old_eval[k] for k in shared}, {k: new_eval[k] for k in shared},
                              shared)
        if diffs:
            raise UserError(f"--out {out}: the spec evaluates with other settings than the "
                            "checkpoints already scored (" + "; ".join(diffs[:6]) + "); restore "
                            "them (a new metric may be added), or choose another --out")
    for c in spec.cells:
        d = cell_dir(out, c.id)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "train.toml", overrides_toml(c.overrides))
        if not (d / "cell.json").is_file():
            atomic_write_json(d / "cell.json", {"schema": SWEEP_CELL_SCHEMA, **idents[c.id],
                                                "arm": c.arm, "gpus": c.gpus,
                                                "corpus": _rel(levels[c.unique_tokens], out)})
    known = list(dict.fromkeys([*(old or {}).get("cells", []), *(c.id for c in spec.cells)]))
    manifest = {
        "schema": SWEEP_SCHEMA, "name": spec.name, "spec": spec.record(),
        "corpus": {
            "source": spec.corpus.record(),
            "full": {"dir": _rel(full, out), **fh},
            "levels": level_recs,
            "varies": "unique_tokens only: every level's train.bin is the first U tokens of the "
                      "full corpus's train stream (one tokenizer, one seeded document order), "
                      "and every level shares the full corpus's tokenizer.json and val.bin "
                      "(tokenizer_sha256, val_sha256)",
        },
        "eval": {**(old or {}).get("eval", {}), **new_eval},
        "codechoice": None if cc_path is None else {"file": _rel(cc_path, out),
                                                    "sha256": cc_sha},
        "cells": known,
        "created_by": f"codediff {__version__}",
    }
    atomic_write_json(out / "sweep.json", manifest)
    atomic_write_text(out / "spec.toml", spec.text)
    atomic_write_text(out / ".gitignore", GITIGNORE)
    return Prepared(out, spec, levels, shas, vocab, manifest, cc_path, list(spec.cells))


def _build_codechoice(path: Path, out: Path, progress: bool) -> None:
    cmd = [sys.executable, "-m", "codediff.cli", "codechoice", "--out", str(path)]
    if not progress:
        cmd.append("--no-progress")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError("building the code-choice set failed: "
                        + (r.stderr.strip().splitlines() or ["?"])[-1])


# ----------------------------------------------------------------------------- commands

def _cli(python: bool) -> list[str]:
    return [sys.executable, "-m", "codediff.cli"] if python else ["codediff"]


def train_command(p: Prepared, cell: Cell, python: bool = True) -> list[str]:
    d = cell_dir(p.out, cell.id)
    args = train_args(cell, str(p.levels[cell.unique_tokens]), str(d / "run"),
                      str(d / "train.toml"))
    if cell.gpus > 1:
        launcher = ([sys.executable, "-m", "torch.distributed.run"] if python else ["torchrun"])
        return launcher + ["--standalone", "--nproc_per_node", str(cell.gpus), "-m",
                           "codediff.cli", "train", *args]
    return _cli(python) + ["train", *args]


def eval_command(p: Prepared, cell: Cell, python: bool = True, progress: bool = False
                 ) -> list[str]:
    cmd = _cli(python) + ["sweep", "--out", str(p.out), "--stage", "eval", "--cells", cell.id]
    if p.unsafe_no_sandbox:
        cmd.append("--unsafe-no-sandbox")
    return cmd + ([] if progress else ["--no-progress"])


def commands_text(p: Prepared, cells: list[Cell]) -> str:
    lines = [f"# codediff sweep {p.spec.name}: one line per cell (train, then score its "
             "checkpoints); run them in any order, on any machines sharing this folder",
             f"# then: codediff sweep --out {shlex.quote(str(p.out))} --stage summarize && "
             f"codediff report --sweep {shlex.quote(str(p.out))} --out sweep.html"]
    for c in cells:
        lines.append(shlex.join(train_command(p, c, python=False)) + " && "
                     + shlex.join(eval_command(p, c, python=False)))
    return "\n".join(lines)


def slurm_text(p: Prepared, cells: list[Cell]) -> str:
    gpus = max((c.gpus for c in cells), default=1)
    root = shlex.quote(str(Path.cwd()))
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=codediff-sweep-{p.spec.name}",
             f"#SBATCH --array=0-{max(0, len(cells) - 1)}",
             f"#SBATCH --gres=gpu:{gpus}",
             "#SBATCH --cpus-per-task=8",
             f"#SBATCH --output={shlex.quote(str(p.out))}/slurm-%A_%a.log",
             f"# codediff sweep {p.spec.name}: one array task per cell; afterwards run",
             f"#   codediff sweep --out {shlex.quote(str(p.out))} --stage summarize",
             "set -euo pipefail",
             f"cd {root}",
             'case "$SLURM_ARRAY_TASK_ID" in']
    for i, c in enumerate(cells):
        lines.append(f"  {i}) {shlex.join(train_command(p, c, python=False))} && "
                     f"{shlex.join(eval_command(p, c, python=False))} ;;")
    lines += ['  *) echo "no cell $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running

def visible_gpus(spec: str) -> list[str]:
    """--gpus: "auto" (CUDA_VISIBLE_DEVICES, else nvidia-smi), "none", or "0,1,3"."""
    if spec == "none":
        return []
    if spec != "auto":
        ids = [g.strip() for g in spec.split(",") if g.strip()]
        if not ids:
            raise UserError(f"--gpus {spec!r}: give auto, none or ids like 0,1")
        return ids
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            return [str(i) for i, line in enumerate(r.stdout.splitlines())
                    if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


class Slots:
    """`per` cells at once on each GPU; a cell of k GPUs needs k GPUs with nothing on them.
    Without GPUs, `per` cells at once on the CPU."""

    def __init__(self, gpus: list[str], per: int):
        self.gpus = gpus or [""]
        self.per = per
        self.free = {g: per for g in self.gpus}

    def take(self, k: int) -> list[str] | None:
        if k == 1:
            g = max(self.gpus, key=lambda g: self.free[g])
            if self.free[g] > 0:
                self.free[g] -= 1
                return [g]
            return None
        empty = [g for g in self.gpus if self.free[g] == self.per]
        if len(empty) < k:
            return None
        for g in empty[:k]:
            self.free[g] = 0
        return empty[:k]

    def give(self, gs: list[str], k: int) -> None:
        for g in gs:
            self.free[g] = self.free[g] + 1 if k == 1 else self.per


def _tail(path: Path, n: int = 12) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + x for x in lines[-n:])


# --------------------------------------------------------------------------- status lines

STATUS_EVERY = 60  # seconds between status lines while cells run (--status-every)


def _count(n: float) -> str:
    """A token count rounded for a status line: 12345678 -> 12.3M (si() is exact: 12.345678M)."""
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.0f}"


def _duration(s: float) -> str:
    s = max(0, int(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _last_jsonl_row(path: Path, tail: int = 65536) -> dict | None:
    """The last complete JSON row of a file that is being appended to, reading only its end (a
    long run's metrics.jsonl is read every status line)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(data.splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line being written, or one cut by the seek
        if isinstance(row, dict):
            return row
    return None


def _eval_counts(d: Path, metrics: list[str]) -> tuple[int, int, int]:
    """(checkpoints with every metric, kept checkpoints, metrics scored) of a cell dir."""
    names = {q.name for q in (d / "run" / "checkpoints").glob("tokens-*") if q.is_dir()}
    full = scored = 0
    for q in (d / "eval").glob("tokens-*.json"):
        have = set((read_json_or_none(q) or {}).get("metrics") or {}) & set(metrics)
        names.add(q.stem)
        scored += len(have)
        full += len(have) == len(metrics)
    return full, len(names), scored


def cell_progress(out: Path, cell: Cell, step: str, metrics: list[str]) -> str:
    """What a running cell has done so far, from its files alone: tokens trained of its budget
    (with the rate and time left the trainer last logged), or checkpoints and metrics scored."""
    d = cell_dir(out, cell.id)
    if step == "train":
        row = _last_jsonl_row(d / "run" / "metrics.jsonl") or {}
        t = row.get("tokens")
        total = cell.total_tokens
        if not isinstance(t, int | float):
            return f"training: starting ({_count(total)} tokens to train)"
        text = f"training: {_count(t)}/{_count(total)} tokens ({100 * t / total:.0f}%)"
        if isinstance(row.get("epochs"), int | float):
            text += f", {row['epochs']:.3g} epochs"
        if isinstance(row.get("train_loss"), int | float):
            text += f", loss {row['train_loss']:.3f}"
        rate = row.get("tokens_per_s")
        if isinstance(rate, int | float) and rate > 0:
            text += f", {_count(rate)} tok/s, ~{_duration((total - t) / rate)} left"
        return text
    full, n, scored = _eval_counts(d, metrics)
    return (f"scoring: {full}/{n} checkpoints done, {scored}/{n * len(metrics)} metrics"
            if n else "scoring: starting")


def status_text(p: Prepared, running: dict[str, tuple[Cell, str, float]], *, waiting: int,
                finished: int, total: int, elapsed: float, now: float) -> str:
    """The periodic status: one line for the sweep, then one per running cell. Printed whole by
    the scheduler's thread alone, so the lines of cells running at once never interleave."""
    lines = [f"sweep: {_duration(elapsed)}: {finished}/{total} cells finished, "
             f"{len(running)} running, {waiting} waiting"]
    for cid, (cell, step, since) in sorted(running.items()):
        lines.append(f"sweep:   {cid} {cell_progress(p.out, cell, step, p.spec.eval.metrics)}"
                     f" [{step} for {_duration(now - since)}]")
    return "\n".join(lines)


SCORE_POLL = 5.0  # seconds between looks for a newly kept checkpoint while a cell trains


def _unscored_checkpoint(out: Path, cell_id: str, metrics: list[str]) -> bool:
    """Whether a kept checkpoint of the cell is on disk and lacks a metric (checkpoint folders
    appear whole: written beside and renamed into place)."""
    d = cell_dir(out, cell_id)
    done = set(cell_state(out, cell_id, metrics)["evaluated"])
    return any(q.is_dir() and q.name not in done
               for q in (d / "run" / "checkpoints").glob("tokens-*"))


def run_cells(p: Prepared, cells: list[Cell], *, gpus: list[str], parallel: int,
              stage: str, progress: bool, status_every: float = STATUS_EVERY,
              score_during_training: bool = True) -> list[str]:
    """Train and/or evaluate `cells`, at most `parallel` per GPU; returns the failed cell ids.
    Finished work is skipped; a failed cell does not stop the others. With `progress`, a line
    when each cell starts and ends, and every `status_every` seconds (0: never) the status of
    each running cell (its processes write to their logs, not to the terminal)."""
    metrics = p.spec.eval.metrics
    for c in cells:
        if c.gpus > max(1, len(gpus)):
            raise UserError(f"cell {c.id} asks for {c.gpus} GPUs and {max(1, len(gpus))} "
                            "are visible; run it where they are (--emit commands|slurm)")
    jobs = []
    for c in cells:
        st = cell_state(p.out, c.id, metrics)
        steps = []
        if stage in ("all", "train") and not st["trained"]:
            steps.append("train")
        if stage in ("all", "eval") and metrics and not (st["trained"] and st["eval_done"]):
            steps.append("eval")
        if stage == "eval" and not st["trained"] and not st["checkpoints"]:
            steps = []
        if st["unevaluable"] and progress:
            print(f"sweep: {c.id}: {len(st['unevaluable'])} checkpoints lack metrics and are no "
                  "longer on disk; they stay unscored", file=sys.stderr)
        if steps:
            jobs.append((c, steps))
    if not jobs:
        if progress:
            print("sweep: nothing to do; every selected cell is trained and scored",
                  file=sys.stderr)
        return []
    slots = Slots(gpus, parallel)
    done_q: queue.Queue = queue.Queue()
    procs: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()
    failed: list[str] = []
    # cell id -> (cell, the step it is in, when that step began): what the status lines read
    active: dict[str, tuple[Cell, str, float]] = {}

    def score_alongside(c: Cell, trainer: subprocess.Popen, env: dict[str, str]) -> None:
        """While `trainer` runs, score each checkpoint it keeps (one scoring process at a time),
        so that scoring overlaps training instead of following it: a deadline then cuts at most
        the last checkpoint's scores, not the last several. The trainer has its memory by the
        time the first checkpoint is kept (its micro-batch is settled in the first steps), so
        the scorer takes what is left. A scorer that fails (say, out of memory) is not an error:
        the eval step after training scores whatever is still missing."""
        scorer: subprocess.Popen | None = None
        log = cell_dir(p.out, c.id) / "eval.log"
        with open(log, "a") as f:
            while trainer.poll() is None:
                if (scorer is None or scorer.poll() is not None) and _unscored_checkpoint(
                        p.out, c.id, metrics):
                    cmd = eval_command(p, c, progress=True)
                    f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} (while training) "
                            f"{shlex.join(cmd)}\n")
                    f.flush()
                    scorer = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                    with lock:
                        procs[c.id + " (scoring)"] = scorer
                time.sleep(SCORE_POLL)
            if scorer is not None:
                scorer.wait()
                with lock:
                    procs.pop(c.id + " (scoring)", None)

    def work(c: Cell, steps: list[str], gs: list[str]) -> None:
        env = dict(os.environ)
        if gs != [""]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gs)
        rc = 0
        for step in steps:
            # scoring writes a line per metric and checkpoint to eval.log (the terminal gets
            # the status lines); training stays --no-progress: a bar in a log file is noise,
            # and metrics.jsonl has every logged step
            cmd = train_command(p, c) if step == "train" else eval_command(p, c, progress=True)
            log = cell_dir(p.out, c.id) / f"{step}.log"
            with open(log, "a") as f:
                f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
                f.flush()
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                with lock:
                    procs[c.id] = proc
                    active[c.id] = (c, step, time.time())
                if step == "train" and "eval" in steps and score_during_training:
                    score_alongside(c, proc, env)
                rc = proc.wait()
            if rc != 0:
                break
        with lock:
            active.pop(c.id, None)
        done_q.put((c, steps, gs, rc))

    pending = deque(jobs)
    running = 0
    total, finished = len(jobs), 0
    t0 = time.time()
    try:
        while pending or running:
            started = True
            while started:
                started = False
                for job in list(pending):
                    gs = slots.take(job[0].gpus)
                    if gs is None:
                        continue
                    pending.remove(job)
                    running += 1
                    started = True
                    where = "CPU" if gs == [""] else f"GPU {','.join(gs)}"
                    if progress:
                        print(f"sweep: start {job[0].id} ({' + '.join(job[1])}) on {where}",
                              file=sys.stderr, flush=True)
                    threading.Thread(target=work, args=(*job, gs), daemon=True).start()
            next_status = time.time() + status_every
            while True:
                wait = max(0.05, next_status - time.time()) if progress and status_every > 0 \
                    else None
                try:
                    c, steps, gs, rc = done_q.get(timeout=wait)
                    break
                except queue.Empty:
                    now = time.time()
                    with lock:
                        snapshot = dict(active)
                    print(status_text(p, snapshot, waiting=len(pending), finished=finished,
                                      total=total, elapsed=now - t0, now=now),
                          file=sys.stderr, flush=True)
                    next_status = now + status_every
            running -= 1
            finished += 1
            slots.give(gs, c.gpus)
            if rc != 0:
                failed.append(c.id)
                step = "eval" if "train" not in steps or cell_state(
                    p.out, c.id, metrics)["trained"] else "train"
                print(f"sweep: {c.id} failed (exit {rc}); the end of "
                      f"{cell_dir(p.out, c.id) / (step + '.log')}:\n"
                      + _tail(cell_dir(p.out, c.id) / f"{step}.log"), file=sys.stderr)
            elif progress:
                print(f"sweep: done {c.id} [{finished}/{total}] at {time.time() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    except BaseException:
        with lock:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
        raise
    return failed


def summarize_dir(out: Path) -> dict[str, Any]:
    """crossover.json of a sweep dir, from its JSON files alone."""
    from codediff.crossover import load_sweep, summarize

    res = {"schema": CROSSOVER_SCHEMA, **summarize(load_sweep(out))}
    atomic_write_json(out / "crossover.json", res)
    return res


def crossover_text(res: dict[str, Any]) -> str:
    from codediff.crossover import flat_note

    lines = []
    for c in res["comparisons"]:
        # curves that never moved (a pass@1 stuck at 0) are said to be flat, not read as a trend
        note = flat_note(c, c["ar_arm"])
        head = (f"{c['preset']} U={si(c['unique_tokens'])} s{c['seed']} {c['ar_arm']} vs mdm, "
                f"{c['metric']}: ")
        if c["status"] == "crossed":
            iv = c.get("interval_epochs") or [None, None]
            lo = "?" if iv[0] is None else f"{iv[0]:.3g}"
            hi = "beyond the budget" if iv[1] is None else f"{iv[1]:.3g}"
            lines.append(head + f"mdm first ahead at {si(c['tokens'])} tokens = "
                         f"{c['epochs']:.3g} epochs (interval {lo} to {hi} epochs)")
        elif c["status"] == "from_start":
            lines.append(head + f"mdm ahead from the first shared point ({si(c['tokens'])} "
                         "tokens)")
        if c["status"] in ("crossed", "from_start"):
            # a first lead is not the crossover the paper means unless mdm keeps it, and a lead
            # inside the noise is not a lead: say both
            stays = c.get("stays_ahead_from_epochs")
            lines[-1] += ("; behind or level at the end" if c.get("stays_ahead_from") is None
                          else "" if stays is None or c["status"] == "from_start"
                          and c.get("stays_ahead_from") == c["tokens"]
                          else f"; stays ahead from {stays:.3g} epochs")
            if not c.get("significant"):
                lines[-1] += f"; never ahead by more than {c.get('z', 1.96):.3g} s.e."
            if note:
                lines[-1] += f"; {note}"
        elif c["status"] == "none" and c.get("signal") is False:
            lines.append(head + f"{note} (up to {si(c['budget'])} tokens)")
        elif c["status"] == "none":
            lines.append(head + f"none within the budget ({si(c['budget'])} tokens)"
                         + (f"; {note}" if note else ""))
        else:
            lines.append(head + "no shared points yet")
    return "\n".join(lines)
