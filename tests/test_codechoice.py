import ast
import json

from codediff.harness.codechoice import SCHEMA, variants
from codediff.harness.judge import Job, Judge
from codediff.harness.tasks import load_task

from codediff.cli import main


def test_variants_differ_from_reference_only_by_one_mutation():
    task = load_task("humaneval")
    p = task.problems[0]
    context, ref, muts = variants(task, p)
    assert context == p.prompt and len(muts) >= 3
    for m, desc in muts:
        ast.parse(p.prompt + m)  # still a program
        assert m != ref and desc
        diff = [a != b for a, b in zip(ref.splitlines(), m.splitlines(), strict=False)]
        assert sum(diff) == 1 or desc == "drop not"


def test_build_keeps_only_mutants_that_fail(tmp_path, monkeypatch):
    import codediff.harness.codechoice as cc

    real = cc.load_task

    def few(name, data=None):  # 12 problems keep the test quick
        t = real(name, data)
        t.problems = t.problems[:12]
        return t

    monkeypatch.setattr(cc, "load_task", few)
    out = tmp_path / "cc.jsonl"
    assert main(["codechoice", "--tasks", "humaneval", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) >= 6
    task = few("humaneval")
    jobs = []
    for i, r in enumerate(rows):
        assert r["schema"] == SCHEMA and len(r["options"]) == 4 and 0 <= r["answer"] < 4
        assert len(set(r["options"])) == 4
        for j, opt in enumerate(r["options"]):
            jobs.append((Job(f"{i}/{j}", r["task_id"], r["context"] + opt), j == r["answer"]))
    judge = Judge(task)
    verdicts = {job.key: v["status"] for job, v in judge.run(j for j, _ in jobs)}
    for job, is_answer in jobs:
        assert (verdicts[job.key] == "passed") == is_answer, job.key
    out2 = tmp_path / "cc2.jsonl"
    assert main(["codechoice", "--tasks", "humaneval", "--out", str(out2)]) == 0
    assert out2.read_bytes() == out.read_bytes()  # seeded: same file twice
