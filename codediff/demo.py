"""`codediff demo` (and `make demo`): the whole pipeline on an embedded default, on a CPU, in a
few minutes.

1. judge HumanEval's canonical solutions and wrong ones in the sandbox (the judge works);
2. build a tiny capped corpus from the standard library (100K unique tokens);
3. train an `ar` and an `mdm` model on it for 10 epochs, side by side;
4. generate HumanEval completions from both (AR with a KV cache; DLM threshold decoding with
   the dual cache) and judge them;
5. render an HTML report with the training curves and the results, and the leaderboard site.

Every step is a plain `codediff` command, printed before it runs, so it can be rerun by hand.
Outputs go to --out (default demo-out/). Steps whose outputs exist are resumed or skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODEL = ["--preset", "tiny", "--n-layer", "2", "--d-model", "128", "--n-head", "4",
         "--max-seq-len", "256", "--batch-size", "8", "--total-tokens", "1M",
         "--val-tokens", "50k", "--eval-points", "10", "--checkpoint-points", "2"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-out", help="folder for everything the demo "
                        "makes (default: demo-out)")


def codediff(*args: str, env: dict | None = None, background: bool = False):
    cmd = [sys.executable, "-m", "codediff.cli", *args]
    print("$ codediff " + " ".join(shlex.quote(a) for a in args), flush=True)
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(cmd, check=True, env=env)
    return None


def judge_showcase(out: Path) -> None:
    from codediff.harness.selfcheck import mixed_samples
    from codediff.harness.tasks import load_task

    rows = mixed_samples(load_task("humaneval").problems)
    samples = out / "judge-check.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"\n== 1. the judge: {len(rows)} HumanEval samples (canonical, wrong, one-operator "
          "mutants)", flush=True)
    check = out / "results" / "judge-check"
    shutil.rmtree(check, ignore_errors=True)  # two seconds of work: always judged afresh
    codediff("evaluate", "--task", "humaneval", "--samples", str(samples), "--out", str(check),
             "--k", "1,2")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(Path(args.out).resolve())
    except subprocess.CalledProcessError as e:
        print(f"codediff: error: a demo step failed (exit {e.returncode}); rerun `codediff demo` "
              "to resume", file=sys.stderr)
        return 1


def _run(out: Path) -> int:
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    judge_showcase(out)

    print("\n== 2. a capped corpus: 100K unique tokens of the standard library", flush=True)
    corpus = out / "corpus"
    if not (corpus / "manifest.json").exists():
        codediff("corpus", "--source", "stdlib", "--unique-tokens", "100k", "--val-tokens", "50k",
                 "--vocab-size", "2048", "--out", str(corpus))

    print("\n== 3. train ar and mdm for 1M tokens = 10 epochs (two processes, one core each)",
          flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [codediff("train", "--corpus", str(corpus), "--objective", obj, *MODEL, "--out",
                      str(out / "runs" / obj), "--no-progress", env=env, background=True)
             for obj in ("ar", "mdm")]
    if any(p.wait() for p in procs):
        print("training failed; rerun `codediff demo` to resume", file=sys.stderr)
        return 1

    print("\n== 4. generate 10 HumanEval completions from each model and judge them", flush=True)
    gen = {"ar": ["--max-new-tokens", "96"],
           "mdm": ["--sampler", "threshold", "--tau", "0.9", "--gen-length", "96",
                   "--block-length", "32", "--cache", "dual"]}
    for obj, extra in gen.items():
        samples = out / "samples" / f"{obj}.jsonl"
        codediff("generate", "--model", str(out / "runs" / obj), "--task", "humaneval",
                 "--limit", "10", "--out", str(samples), "--no-progress", *extra)
        codediff("evaluate", "--task", "humaneval", "--samples", str(samples), "--out",
                 str(out / "results" / obj), "--k", "1", "--no-progress")

    print("\n== 5. the report", flush=True)
    codediff("report", "--results", f"ar={out / 'results' / 'ar'}",
             f"mdm={out / 'results' / 'mdm'}", "--runs", f"ar={out / 'runs' / 'ar'}",
             f"mdm={out / 'runs' / 'mdm'}", "--title", "codediff demo: ar vs mdm on 100K tokens",
             "--out", str(out / "report.html"), "--overwrite")  # rebuilt on every demo
    print("\n== 6. the leaderboard site (the judge check ranks; the two models' 10-problem "
          "runs are listed below it as partial)", flush=True)
    check = out / "results" / "judge-check"
    codediff("leaderboard", f"judge check: canonical+wrong+mutant={check}",
             f"ar={out / 'results' / 'ar'}", f"mdm={out / 'results' / 'mdm'}", "--overwrite",
             "--title", "codediff demo leaderboard", "--out", str(out / "leaderboard"))
    print(f"\ndone in {time.time() - t0:.0f} s. A tiny model trained for two minutes passes "
          "(almost) no HumanEval problem; the demo shows the machinery, the validation curves "
          "in the report show what the two objectives did on repeated data. The real "
          "experiment: docs/benchmarks.md#crossover-small-scale.")
    print(f"report:      {out / 'report.html'}")
    print(f"leaderboard: {out / 'leaderboard' / 'index.html'}")
    return 0
