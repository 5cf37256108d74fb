"""The small-scale crossover: `ar` and `mdm` on the same capped corpus, repeated for many epochs.

Trains both objectives on one corpus dir (in parallel: a `tiny` model leaves most of an H100
idle), then scores every kept checkpoint on the code-choice set (`codediff codechoice`): AR by
exact log-likelihood, MDM by the coupled ELBO. Writes into --out:

  ar/metrics.jsonl ar/run.json mdm/metrics.jsonl mdm/run.json   (from the runs)
  choice.json    code-choice accuracy per checkpoint and objective
  summary.txt    the table printed at the end

    python bench/crossover.py --corpus corpora/stdlib-5m --choices corpora/codechoice.jsonl \
        --total-tokens 200M --runs runs/xover --out xover-out
    codediff report --runs xover-out/ar xover-out/mdm --out crossover.html
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train(args: argparse.Namespace) -> None:
    procs = {}
    for obj in ("ar", "mdm"):
        cmd = [sys.executable, "-m", "codediff.cli", "train", "--corpus", args.corpus,
               "--objective", obj, "--preset", args.preset, "--total-tokens",
               str(args.total_tokens), "--out", str(Path(args.runs) / obj),
               "--eval-points", str(args.eval_points), "--checkpoint-points",
               str(args.checkpoint_points), "--val-tokens", str(args.val_tokens),
               "--no-progress", *args.train_args]
        log = open(Path(args.out) / f"train-{obj}.log", "w")
        procs[obj] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        if not args.parallel:
            procs[obj][0].wait()
    for obj, (p, log) in procs.items():
        if p.wait() != 0:
            log.close()
            sys.exit(f"training {obj} failed:\n" + (Path(args.out) / f"train-{obj}.log")
                     .read_text()[-3000:])
        log.close()


def score(args: argparse.Namespace) -> list[dict]:
    import torch

    from codediff.checkpoints import load_checkpoint
    from codediff.codechoice_score import read_choices, score_choices

    rows = read_choices(args.choices)[: args.limit_choices]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = []
    for obj in ("ar", "mdm"):
        ckpts = sorted((Path(args.runs) / obj / "checkpoints").glob("tokens-*"),
                       key=lambda p: int(p.name.split("-")[1]))
        for ck in ckpts:
            dtype = torch.bfloat16 if (args.score_bf16 and device == "cuda") else None
            model, tok, meta = load_checkpoint(ck, device=device, dtype=dtype)
            t0 = time.time()
            res = score_choices(model, tok, meta, rows, samples=args.elbo_samples,
                                batch_size=args.score_batch)
            res.pop("per_task", None)
            res.update(checkpoint=ck.name, seconds=round(time.time() - t0, 1))
            out.append(res)
            (Path(args.out) / "choice.json").write_text(json.dumps(out, indent=1) + "\n")
            print(f"{obj} {ck.name}: {100 * res['accuracy']:.1f}% ± {100 * res['stderr']:.1f} "
                  f"({res['method']})", flush=True)
            del model
    return out


def summarize(args: argparse.Namespace, choice: list[dict]) -> str:
    from codediff.formats import run_record

    lines = [f"corpus {args.corpus}  total tokens {args.total_tokens:,}  preset {args.preset}"]
    for obj in ("ar", "mdm"):
        run = Path(args.runs) / obj
        meta = run_record(json.loads((run / "run.json").read_text()))  # either run.json major
        ms = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        vals = [m for m in ms if "val_loss" in m]
        best = min(vals, key=lambda m: m["val_loss"])
        speed = sorted(m["tokens_per_s"] for m in ms if m.get("tokens_per_s"))
        lines.append(f"{obj}: tokens/epoch {meta.get('epoch_tokens'):,}  epochs {meta.get('epochs')}  "
                     f"best val {best['val_loss']:.3f} at epoch {best['epochs']:.2f}  final val "
                     f"{vals[-1]['val_loss']:.3f}  median tok/s {speed[len(speed) // 2]:,.0f}")
        lines.append("  val loss by epoch: " + "  ".join(
            f"{m['epochs']:.2f}:{m['val_loss']:.3f}" for m in vals))
        for c in choice:
            if c["objective"] == obj:
                lines.append(f"  code choice {c['checkpoint']} (epoch {c['epochs']:.2f}): "
                             f"{100 * c['accuracy']:.1f}% ± {100 * c['stderr']:.1f}")
    return "\n".join(lines)


def main() -> None:
    from codediff.train_cli import _converter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--choices", required=True)
    ap.add_argument("--runs", required=True, help="folder for the two run dirs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--total-tokens", type=_converter("total_tokens", "int"), default=200_000_000)
    ap.add_argument("--eval-points", type=int, default=16)
    ap.add_argument("--checkpoint-points", type=int, default=6)
    ap.add_argument("--val-tokens", type=int, default=500_000)
    ap.add_argument("--elbo-samples", type=int, default=64)
    ap.add_argument("--score-batch", type=int, default=256)
    ap.add_argument("--score-bf16", action="store_true", help="score in bf16 on CUDA")
    ap.add_argument("--limit-choices", type=int, default=None, help="score only the first N rows")
    ap.add_argument("--sequential", dest="parallel", action="store_false")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("train_args", nargs="*", help="extra `codediff train` options after --")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not args.skip_train:
        train(args)
    print(f"trained in {time.time() - t0:.0f} s", flush=True)
    for obj in ("ar", "mdm"):  # curves first: they are kept even if scoring runs out of time
        dst = Path(args.out) / obj
        dst.mkdir(exist_ok=True)
        for f in ("metrics.jsonl", "run.json"):
            shutil.copy(Path(args.runs) / obj / f, dst / f)
    choice = score(args)
    text = summarize(args, choice)
    (Path(args.out) / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"total {time.time() - t0:.0f} s on {os.uname().nodename}")


if __name__ == "__main__":
    main()
