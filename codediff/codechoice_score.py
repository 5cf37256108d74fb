"""Score a checkpoint on the code-choice set: rank four continuations by likelihood.

AR models use the exact log-likelihood; MDM models a coupled ELBO (all options of a question
share t and the mask draws, see codediff/likelihood.py) or the pseudo-log-likelihood. Accuracy is
reported with its binomial standard error; chance is 25%.

    codediff score --model runs/x/checkpoints/tokens-N --choices choices.jsonl --out score.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from codediff import options
from codediff.errors import UserError, is_out_of_memory
from codediff.formats import CHOICE_SCORE_SCHEMA as SCHEMA
from codediff.formats import CODECHOICE_SCHEMA, atomic_write_json, schema_major
from codediff.options import option


@dataclass
class ScoreOptions:
    """`codediff score`'s options (codediff.options turns them into flags)."""

    model: str = option(help="codediff checkpoint folder, or a run dir (its newest checkpoint)")
    choices: str = option(help="JSONL from `codediff codechoice`")
    out: str = option(help="JSON file to write")
    method: str = option("auto", choices=("auto", "exact", "elbo", "pll"),
                         help="auto: exact for ar, elbo for mdm")
    mc_samples: int = option(64, min=1, help="Monte Carlo samples per option (elbo)")
    seed: int = option(0, min=0, help="seed of the Monte Carlo draws")
    limit: int | None = option(None, min=1, help="score only the first N rows",
                               default_text="all")
    device: str | None = option(None, help="cpu, cuda, cuda:1",
                                default_text="cuda if a GPU is visible, else cpu")
    batch_size: int = option(64, min=1, help="sequences per forward pass")
    overwrite: bool = option(False, negatable=False,
                             help="replace an existing --out")
    progress: bool = option(True, help="progress bar (on a terminal)", false_aliases=("--quiet",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_arguments(parser, ScoreOptions)


def read_choices(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--choices {path}: no such file; build it with `codediff codechoice`")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}:{i}: malformed JSON") from e
        if not isinstance(r, dict) or not isinstance(r.get("schema"), str):
            raise UserError(f"{path}:{i}: not a {CODECHOICE_SCHEMA} row; rebuild the file")
        schema_major(r, "codechoice", f"{path}:{i}", "rebuild it with `codediff codechoice`")
        if len(r.get("options", [])) < 2:
            raise UserError(f"{path}:{i}: not a {CODECHOICE_SCHEMA} row; rebuild the file")
        rows.append(r)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def score_choices(model, tokenizer, meta: dict, rows: list[dict], *, method: str = "auto",
                  samples: int = 64, seed: int = 0, batch_size: int = 64,
                  progress: bool = False) -> dict:
    from codediff.backends import forward_context

    # every row has its own sequence lengths: keep cuDNN attention (a plan per shape) out
    with forward_context(next(model.parameters()).device, None):
        return _score_rows(model, tokenizer, meta, rows, method, samples, seed, batch_size,
                           progress)


def _score_rows(model, tokenizer, meta: dict, rows: list[dict], method: str, samples: int,
                seed: int, batch_size: int, progress: bool) -> dict:
    from tqdm import tqdm

    from codediff.checkpoints import unwrap
    from codediff.likelihood import rank, score

    objective = meta["objective"]
    window = unwrap(model).config.max_seq_len
    correct, correct_norm, per_task, skipped, n = 0, 0, {}, 0, 0
    t0 = time.time()
    used = method
    for i, r in enumerate(tqdm(rows, desc="code choice", disable=not progress)):
        ctx = tokenizer.encode(r["context"]).ids
        opts = [tokenizer.encode(o).ids for o in r["options"]]
        if max(len(o) for o in opts) >= window:
            skipped += 1  # an option longer than the model's window cannot be scored whole
            continue
        n += 1
        scores = score(model, ctx, opts, objective=objective, method=method,
                       mask_id=meta.get("mask_id"), samples=samples, seed=seed + i,
                       pad_id=meta.get("pad_id", 0), batch_size=batch_size)
        used = scores[0].method
        ok = rank(scores) == r["answer"]
        ok_norm = rank(scores, normalize=True) == r["answer"]
        correct += ok
        correct_norm += ok_norm
        t = per_task.setdefault(r["task"], {"n": 0, "correct": 0})
        t["n"] += 1
        t["correct"] += ok
    if n == 0:
        raise UserError(f"no code-choice row fits the model's window of {window} tokens")
    acc = correct / n
    return {"schema": SCHEMA, "n": n, "skipped_too_long": skipped, "accuracy": acc,
            "stderr": math.sqrt(acc * (1 - acc) / n), "accuracy_per_token": correct_norm / n,
            "chance": 1 / len(rows[0]["options"]), "method": used,
            "samples": samples if used == "elbo" else 1, "per_task": per_task,
            "objective": objective, "tokens": meta.get("tokens"), "epochs": meta.get("epochs"),
            "seconds": round(time.time() - t0, 2)}


def run(args: argparse.Namespace) -> int:
    o = options.from_args(ScoreOptions, args)
    options.check_out(o.out, folder=False, overwrite=o.overwrite)
    rows = read_choices(o.choices)[: o.limit]
    options.check_device(o.device)
    import torch

    from codediff.backends import resolve_checkpoint
    from codediff.checkpoints import load_checkpoint

    device = o.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok, meta = load_checkpoint(resolve_checkpoint(o.model), device=device)
    if o.method in ("elbo", "pll") and meta["objective"] != "mdm":
        raise UserError(f"--method {o.method} needs an mdm checkpoint; use exact or auto")
    if o.method == "exact" and meta["objective"] != "ar":
        raise UserError("--method exact needs an ar checkpoint; use elbo, pll or auto")
    try:
        res = score_choices(model, tok, meta, rows, method=o.method, samples=o.mc_samples,
                            seed=o.seed, batch_size=o.batch_size,
                            progress=o.progress and sys.stderr.isatty())
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(e):
            raise
        raise UserError(f"out of memory scoring {o.batch_size} sequences at once; pass a "
                        f"smaller --batch-size (e.g. {max(1, o.batch_size // 2)}); the scores "
                        "do not depend on it beyond float rounding") from None
    res.update(model=str(o.model), choices=str(o.choices))
    atomic_write_json(o.out, res)
    print(f"{o.model}: {100 * res['accuracy']:.1f}% ± {100 * res['stderr']:.1f} "
          f"({res['method']}, n={res['n']}, {res['skipped_too_long']} rows longer than the "
          f"window skipped, chance {100 * res['chance']:.0f}%)")
    return 0
