"""Reference solutions pass and wrong ones fail, on the real benchmark data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from codediff.harness.evaluate import evaluate
from codediff.harness.samples import read_samples
from codediff.harness.tasks import load_task


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _judge(task, rows, tmp_path, name):
    f = _write(tmp_path / f"{name}.jsonl", rows)
    samples = read_samples(f, set(task.by_id()), task.name)
    res = evaluate(task, samples, out=tmp_path / name, samples_path=f, ks=[1])
    lines = [json.loads(x) for x in (tmp_path / name / "executions.jsonl").read_text().splitlines()]
    return res, {r["task_id"]: r for r in lines}


def test_humaneval_canonical_pass_and_wrong_fail(tmp_path):
    task = load_task("humaneval")
    rows = [{"task_id": p.task_id, "completion": p.reference[len(p.prompt):]}
            for p in task.problems]
    res, by = _judge(task, rows, tmp_path, "canonical")
    assert res["pass_at_k"]["base"]["pass@1"] == 1.0, [t for t, r in by.items()
                                                       if r["status"] != "passed"]
    wrong = [{"task_id": p.task_id, "completion": "    return None\n"} for p in task.problems]
    res, by = _judge(task, wrong, tmp_path, "wrong")
    assert res["pass_at_k"]["base"]["pass@1"] == 0.0
    assert res["status_counts"]["all"]["failed"] + res["status_counts"]["all"]["error"] == 164


def test_mbpp_reference_solutions_pass(tmp_path, data_dir):
    """All 500 test-split references pass. Task 367 passes because its `test_setup_code` (which
    builds the trees its asserts use) is run; harnesses that drop it see a NameError."""
    task = load_task("mbpp", data_dir)
    rows = [{"task_id": p.task_id, "solution": p.reference} for p in task.problems]
    res, by = _judge(task, rows, tmp_path, "mbpp")
    failing = {t: r["detail"] for t, r in by.items() if r["status"] != "passed"}
    assert failing == {}
    assert res["pass_at_k"]["base"]["pass@1"] == 1.0
    wrong = [{"task_id": p.task_id, "solution": f"def {p.entry_point}(*a):\n    return None\n"}
             for p in task.problems]
    res, _ = _judge(task, wrong, tmp_path, "mbpp-wrong")
    assert res["pass_at_k"]["base"]["pass@1"] == 0.0


@pytest.mark.slow
def test_mbpp_plus_oracles_pass_their_plus_inputs(tmp_path, data_dir):
    task = load_task("mbpp+", data_dir)
    rows = [{"task_id": p.task_id, "solution": p.reference} for p in task.problems]
    res, by = _judge(task, rows, tmp_path, "mbpp-plus")
    failing = {t: (r["base_status"], r["plus_status"], r["detail"]) for t, r in by.items()
               if r["status"] != "passed"}
    assert failing == {}
    assert res["pass_at_k"]["plus"]["pass@1"] == 1.0
    assert res["problems"] == 399


def test_mbpp_plus_differential_catches_wrong_outputs(tmp_path, data_dir):
    task = load_task("mbpp+", data_dir)
    keep = {"Mbpp/2", "Mbpp/3", "Mbpp/4", "Mbpp/6", "Mbpp/7"}
    task.problems = [p for p in task.problems if p.task_id in keep]
    # A solution that memorised the base inputs' answers and is wrong elsewhere.
    p3 = task.by_id()["Mbpp/3"]
    ref: dict = {}
    exec(p3.reference, ref)  # the dataset's own reference: trusted
    memo = {inp[0]: ref["is_not_prime"](inp[0]) for inp in p3.base_input}
    rows = [{"task_id": p.task_id, "solution": p.reference} for p in task.problems]
    rows.append({"task_id": "Mbpp/3", "completion_id": 1, "solution":
                 f"def is_not_prime(n):\n    return {memo!r}.get(n, None)\n"})
    res, _ = _judge(task, rows, tmp_path, "diff")
    lines = [json.loads(x) for x in (tmp_path / "diff" / "executions.jsonl").read_text()
             .splitlines()]
    tricky = next(r for r in lines if r["task_id"] == "Mbpp/3" and r["completion_id"] == 1)
    ref = next(r for r in lines if r["task_id"] == "Mbpp/3" and r["completion_id"] == 0)
    assert ref["base_status"] == ref["plus_status"] == "passed"
    assert tricky["base_status"] == "passed" and tricky["plus_status"] == "failed"
    assert res["per_task"]["Mbpp/3"]["base"] == 2 and res["per_task"]["Mbpp/3"]["plus"] == 1


def test_humaneval_plus_from_release_format_file(tmp_path):
    rows = [{"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
             "entry_point": "add", "canonical_solution": "    return a + b\n",
             "base_input": [[1, 2]], "plus_input": [[3, 4], [-1, 1], [0.1, 0.2]], "atol": 0,
             "contract": "", "test": ""}]
    data = _write(tmp_path / "HumanEvalPlus.jsonl", rows)
    task = load_task("humaneval+", data)
    samples = [{"task_id": "HumanEval/0", "completion": "    return a + b\n"},
               {"task_id": "HumanEval/0", "completion": "    return a + b if a >= 0 else a\n"}]
    res, _ = _judge(task, samples, tmp_path, "heplus")
    t = res["per_task"]["HumanEval/0"]
    assert t["n"] == 2 and t["base"] == 2 and t["plus"] == 1


def test_oracle_cache_of_a_cut_task_serves_a_later_larger_one(tmp_path, monkeypatch, data_dir):
    """The plus-input oracles are cached per dataset; a task cut to some problems must not make
    a later run over other problems fail (it computes the missing ones and keeps the union)."""
    monkeypatch.setenv("CODEDIFF_CACHE", str(tmp_path / "cache"))

    def judge(n: int, out: str) -> dict:
        task = load_task("mbpp+", data_dir)
        task.problems = task.problems[:n]
        rows = [{"task_id": p.task_id, "solution": p.reference} for p in task.problems]
        f = tmp_path / f"{out}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return evaluate(task, read_samples(f, set(task.by_id()), task.name),
                        out=tmp_path / out, samples_path=f, ks=[1])

    assert judge(2, "two")["problems"] == 2
    (cached,) = (tmp_path / "cache" / "oracles").glob("*.pkl")
    import pickle

    assert len(pickle.loads(cached.read_bytes())) == 2
    assert judge(4, "four")["problems"] == 4  # KeyError here before the fix
    assert len(pickle.loads(cached.read_bytes())) == 4
