"""`make demo`: the whole codediff pipeline on an embedded default, on a CPU, in a few minutes.

1. judge HumanEval's canonical solutions and wrong ones in the sandbox (the judge works);
2. build a tiny capped corpus from the standard library (100K unique tokens);
3. train an `ar` and an `mdm` model on it for 10 epochs, side by side;
4. generate HumanEval completions from both (AR with a KV cache; DLM threshold decoding with
   the dual cache) and judge them;
5. render an HTML report with the training curves and the results.

Every step is a plain `codediff` command, printed before it runs, so it can be rerun by hand.
Outputs go to demo-out/. Steps whose outputs exist are resumed or skipped.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
sys.path.insert(0, str(ROOT))

MODEL = ["--preset", "tiny", "--n-layer", "2", "--d-model", "128", "--n-head", "4",
         "--max-seq-len", "256", "--batch-size", "8", "--total-tokens", "1M",
         "--val-tokens", "50k", "--eval-points", "10", "--checkpoint-points", "2"]


def codediff(*args: str, env: dict | None = None, background: bool = False):
    cmd = [sys.executable, "-m", "codediff.cli", *args]
    print("$ codediff " + " ".join(shlex.quote(a) for a in args), flush=True)
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(cmd, check=True, env=env)
    return None


def judge_showcase() -> None:
    from codediff.harness.selfcheck import mixed_samples
    from codediff.harness.tasks import load_task

    rows = mixed_samples(load_task("humaneval").problems)
    samples = OUT / "judge-check.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"\n== 1. the judge: {len(rows)} HumanEval samples (canonical, wrong, one-operator "
          "mutants)", flush=True)
    check = OUT / "results" / "judge-check"
    shutil.rmtree(check, ignore_errors=True)  # two seconds of work: always judged afresh
    codediff("evaluate", "--task", "humaneval", "--samples", str(samples), "--out", str(check),
             "--k", "1,2")


def main() -> int:
    t0 = time.time()
    OUT.mkdir(exist_ok=True)
    judge_showcase()

    print("\n== 2. a capped corpus: 100K unique tokens of the standard library", flush=True)
    corpus = OUT / "corpus"
    if not (corpus / "manifest.json").exists():
        codediff("corpus", "--source", "stdlib", "--unique-tokens", "100k", "--val-tokens", "50k",
                 "--vocab-size", "2048", "--out", str(corpus))

    print("\n== 3. train ar and mdm for 1M tokens = 10 epochs (two processes, one core each)",
          flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [codediff("train", "--corpus", str(corpus), "--objective", obj, *MODEL, "--out",
                      str(OUT / "runs" / obj), "--no-progress", env=env, background=True)
             for obj in ("ar", "mdm")]
    if any(p.wait() for p in procs):
        print("training failed; rerun `make demo` to resume", file=sys.stderr)
        return 1

    print("\n== 4. generate 10 HumanEval completions from each model and judge them", flush=True)
    gen = {"ar": ["--max-new-tokens", "96"],
           "mdm": ["--sampler", "threshold", "--tau", "0.9", "--gen-length", "96",
                   "--block-length", "32", "--cache", "dual"]}
    for obj, extra in gen.items():
        samples = OUT / "samples" / f"{obj}.jsonl"
        codediff("generate", "--model", str(OUT / "runs" / obj), "--task", "humaneval",
                 "--limit", "10", "--out", str(samples), "--no-progress", *extra)
        codediff("evaluate", "--task", "humaneval", "--samples", str(samples), "--out",
                 str(OUT / "results" / obj), "--k", "1", "--quiet")

    print("\n== 5. the report", flush=True)
    codediff("report", "--results", f"ar={OUT / 'results' / 'ar'}",
             f"mdm={OUT / 'results' / 'mdm'}", "--runs", f"ar={OUT / 'runs' / 'ar'}",
             f"mdm={OUT / 'runs' / 'mdm'}", "--title", "codediff demo: ar vs mdm on 100K tokens",
             "--out", str(OUT / "report.html"))
    print(f"\ndone in {time.time() - t0:.0f} s. Open {OUT / 'report.html'}; a tiny model trained "
          "for two minutes passes no HumanEval problem, but its validation curves already show "
          "the pattern: AR's loss turns up after a few epochs, MDM's keeps falling. The real "
          "experiment: docs/benchmarks.md#crossover-small-scale.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
