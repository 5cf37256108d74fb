"""Results dirs for the leaderboard tests, made by really judging small HumanEval samples files:
full runs (all 164 problems) from two decoding settings of one checkpoint (same default label),
an AR run with one sample per problem, and a run judged on 3 problems only. The sidecars'
generation totals are set by hand (no model runs here); every pass@k is the judge's."""

from __future__ import annotations

import json
from pathlib import Path

from codediff.harness.evaluate import evaluate
from codediff.harness.samples import read_samples
from codediff.harness.tasks import load_task

CKPT = "runs/mdm/checkpoints/tokens-100352"

SPECS = {
    # name: (model path, objective, sampler, tokens/s, samples per problem, good(i, j), problems)
    "mdm-tau0.9": (CKPT, "mdm", {"mode": "dlm", "sampler": "threshold", "tau": 0.9,
                                 "steps": 96, "gen_length": 96, "block_length": 32,
                                 "cache": "dual", "temperature": 0.0},
                   1920.0, 2, lambda i, j: i % 5 != 0, None),
    "mdm-tau0.7": (CKPT, "mdm", {"mode": "dlm", "sampler": "threshold", "tau": 0.7,
                                 "steps": 96, "gen_length": 96, "block_length": 32,
                                 "cache": "dual", "temperature": 0.0},
                   4100.0, 2, lambda i, j: (i + j) % 3 == 0, None),
    "ar": ("runs/ar/checkpoints/tokens-100352", "ar", {"mode": "ar", "max_new_tokens": 96,
                                                       "temperature": 0.0, "kv_cache": True},
           950.0, 1, lambda i, j: i % 2 == 0, None),
    "partial": ("runs/big/checkpoints/tokens-9000000", "mdm",
                {"mode": "dlm", "sampler": "low_confidence", "steps": 96, "gen_length": 96,
                 "block_length": 32, "cache": None, "temperature": 0.0},
                120.0, 1, lambda i, j: True, 3),
}


def judge(folder: Path, name: str) -> Path:
    model, objective, sampler, tps, n, good, limit = SPECS[name]
    task = load_task("humaneval")
    problems = task.problems[:limit] if limit else task.problems
    rows = []
    for i, p in enumerate(problems):
        for j in range(n):
            rows.append({"task_id": p.task_id, "completion_id": j, "completion":
                         p.reference[len(p.prompt):] if good(i, j) else "    return None\n"})
    f = folder / f"{name}.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = 40 * len(rows)
    nfe = tokens // 4 if objective == "mdm" else tokens
    (folder / f"{name}.meta.json").write_text(json.dumps({
        "schema": "codediff.samples/1", "prompt_format": "completion",
        "model": {"path": model, "objective": objective, "kind": "dlm" if objective == "mdm"
                  else "ar", "device": "cuda", "tokens": 100352 * 10, "epochs": 10.0},
        "sampler": {**sampler, "n": n}, "torch": "2.13.0",
        "totals": {"nfe": nfe, "tokens": tokens, "seconds": tokens / tps,
                   "tokens_per_second": tps, "tokens_per_forward": tokens / nfe,
                   "flops_per_token": 3.4e7}}))
    samples = read_samples(f, set(task.by_id()), task.name)
    out = folder / "results" / name
    evaluate(task, samples, out=out, samples_path=f, ks=[1, 2] if n > 1 else [1])
    return out


def make_all(folder: Path) -> dict[str, Path]:
    return {name: judge(folder, name) for name in SPECS}
