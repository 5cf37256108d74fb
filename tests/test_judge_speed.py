"""MBPP+ judging as evalplus 0.3.1 judges it: its time limits, huge outputs, the sanitiser switch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from codediff.harness.evaluate import evaluate
from codediff.harness.judge import Judge
from codediff.harness.samples import read_samples
from codediff.harness.tasks import EVALPLUS_TIME_LIMITS, get_spec, load_spec, load_task

from codediff.errors import UserError


def _judge(task, rows, tmp_path: Path, name: str, **kw) -> tuple[dict, list[dict]]:
    f = tmp_path / f"{name}.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = read_samples(f, set(task.by_id()), task.name)
    res = evaluate(task, samples, out=tmp_path / name, samples_path=f, ks=[1], **kw)
    lines = [json.loads(x) for x in (tmp_path / name / "executions.jsonl").read_text().splitlines()]
    return res, sorted(lines, key=lambda r: (r["task_id"], r["completion_id"]))


def _slow(p, seconds: float) -> str:
    """The reference, spending `seconds` of busy CPU on every call."""
    return (p.reference + f"\n_ref = {p.entry_point}\n\ndef {p.entry_point}(*a):\n"
            "    import time\n    t = time.perf_counter()\n"
            f"    while time.perf_counter() - t < {seconds}:\n        pass\n"
            "    return _ref(*a)\n")


def test_plus_tasks_follow_evalplus_031_time_limits():
    for name in ("mbpp+", "humaneval+"):
        spec = get_spec(name)
        assert spec.evalplus_version == "0.3.1"
        assert (spec.min_time_limit, spec.gt_time_limit_factor) == EVALPLUS_TIME_LIMITS["0.3.1"]
        assert (spec.min_time_limit, spec.gt_time_limit_factor) == (1.0, 4.0)


def test_unknown_evalplus_version_is_a_user_error(tmp_path):
    toml = (Path(__file__).resolve().parent.parent / "tasks" / "mbpp_plus.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(toml.replace('evalplus_version = "0.3.1"', 'evalplus_version = "9.9"'))
    with pytest.raises(UserError, match="evalplus_version '9.9'"):
        load_spec(bad)
    explicit = tmp_path / "explicit.toml"
    explicit.write_text(toml.replace('evalplus_version = "0.3.1"', 'evalplus_version = "0.3.1"\n'
                                     "min_time_limit = 2.5"))
    assert load_spec(explicit).min_time_limit == 2.5  # an explicit value wins


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_time_limit_settings_are_user_errors(bad, data_dir):
    task = load_task("mbpp+", data_dir)
    with pytest.raises(UserError, match="--min-time-limit"):
        Judge(task, unsafe=True, min_time_limit=bad)
    with pytest.raises(UserError, match="--time-limit-factor"):
        Judge(task, unsafe=True, time_limit_factor=bad)


def _small_mbpp_plus(data_dir: Path, tmp_path: Path, cuts: dict[str, Callable[[list], list]]):
    """The real rows of the tasks in `cuts`, each with its plus inputs cut, as a data file."""
    rows = []
    for line in (data_dir / "evalplus" / "MbppPlus-2023-11-16.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["task_id"] in cuts:
            row["plus_input"] = cuts[row["task_id"]](row["plus_input"])
            rows.append(row)
    f = tmp_path / "MbppPlus-cut.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_task("mbpp+", f)


def test_floor_decides_a_slow_sample_and_is_recorded(tmp_path, data_dir):
    """A sample taking ~1.5 s per input fails under evalplus 0.3.1's 1 s floor (as evalplus
    fails it) and passes under a 4 s one; the floor is part of the results identity."""
    task = _small_mbpp_plus(data_dir, tmp_path, {"Mbpp/3": lambda xs: xs[:1]})
    rows = [{"task_id": "Mbpp/3", "solution": _slow(task.problems[0], 1.5)}]
    res, (row,) = _judge(task, rows, tmp_path, "floor1")
    assert row["base_status"] == "timeout" and row["plus_status"] == "failed"
    assert res["harness"]["min_time_limit"] == 1.0 and res["harness"]["time_limit_factor"] == 4.0
    assert res["harness"]["evalplus_version"] == "0.3.1"
    assert json.loads((tmp_path / "floor1" / "run.json").read_text())["min_time_limit"] == 1.0
    res, (row,) = _judge(task, rows, tmp_path, "floor4", min_time_limit=4.0)  # 4 inputs, 6 s
    assert row["base_status"] == "passed" and row["plus_status"] == "passed"
    assert res["harness"]["min_time_limit"] == 4.0
    # The same folder with another floor is another result: refused, not mixed.
    with pytest.raises(UserError, match="other samples or settings"):
        _judge(task, rows, tmp_path, "floor4", min_time_limit=1.0)


def test_huge_reference_outputs_pass_in_one_worker(tmp_path, data_dir):
    """Mbpp/255's expected outputs total 360 MB: evalplus 0.3.1 then fails the references of
    Mbpp/255 and Mbpp/392 with a MemoryError (its worker holds them all under a 4 GiB limit).
    codediff recomputes a huge output next to the sample's, one input at a time."""
    # All of Mbpp/255, and Mbpp/392 with its base inputs and its three largest plus inputs (the
    # memory-hungry ones; all 106 would take seconds more).
    task = _small_mbpp_plus(data_dir, tmp_path, {
        "Mbpp/255": lambda xs: xs, "Mbpp/392": lambda xs: sorted(xs, key=lambda x: x[0])[-3:]})
    p255 = task.problems[0]
    wrong = p255.reference.replace("list(combinations_with_replacement(l, n))",
                                   "list(combinations_with_replacement(l, n))[:-1] or [()]")
    assert wrong != p255.reference
    rows = [{"task_id": p.task_id, "solution": p.reference} for p in task.problems]
    rows.append({"task_id": "Mbpp/255", "solution": wrong})
    res, rows_out = _judge(task, rows, tmp_path, "huge", workers=1)
    verdicts = [(r["task_id"], r["base_status"], r["plus_status"]) for r in rows_out]
    assert verdicts == [("Mbpp/255", "passed", "passed"), ("Mbpp/255", "failed", "failed"),
                        ("Mbpp/392", "passed", "passed")]
    assert res["dataset_notes"] == []


def test_sanitiser_effect_is_counted_and_switchable(tmp_path, data_dir):
    """A trailing top-level assert: the sanitiser strips it (counted in results.json and the
    summary); with sanitising off the raw file runs as evalplus runs it, assert included."""
    from codediff.harness.evaluate import summary_table

    task = load_task("mbpp+", data_dir)
    p = task.by_id()["Mbpp/3"]
    task.problems = [p]
    rows = [{"task_id": p.task_id, "solution": p.reference},
            {"task_id": p.task_id, "solution": p.reference + "\nassert is_not_prime(2) is None\n"}]
    res, out = _judge(task, rows, tmp_path, "on")
    assert [r["status"] for r in out] == ["passed", "passed"]
    assert res["harness"]["sanitizer_changed"] == 1
    assert out[1]["raw"] != out[1]["program"] and "assert" not in out[1]["program"]
    assert "sanitiser changed 1 of 2 samples" in summary_table(res)
    res, out = _judge(task, rows, tmp_path, "off", do_sanitize=False)
    assert [r["status"] for r in out] == ["passed", "failed"]
    assert res["harness"]["sanitizer_changed"] == 0
    # ... and the HTML report shows both: the count, and "off" for the raw run.
    from codediff.cli import main

    html = tmp_path / "r.html"
    assert main(["report", "--results", str(tmp_path / "on"), str(tmp_path / "off"),
                 "--out", str(html)]) == 0
    text = html.read_text()
    assert ">sanitised</th>" in text and '<td data-v="1">1</td>' in text
    assert '<td data-v="-1">off</td>' in text


def test_plus_inputs_are_not_run_after_a_base_failure(tmp_path, data_dir):
    """plus counts only with base passed (both tools), so a base failure ends the sample:
    its plus status says so instead of spending the plus inputs' time."""
    task = load_task("mbpp+", data_dir)
    p = task.by_id()["Mbpp/3"]
    task.problems = [p]
    rows = [{"task_id": p.task_id, "solution": "def is_not_prime(n):\n    return None\n"}]
    _, (row,) = _judge(task, rows, tmp_path, "basefail")
    assert row["base_status"] == "failed" and row["plus_status"] == "failed"
    assert row["detail"] == "wrong output on input 0"


def test_a_sample_hanging_at_top_level_costs_the_base_budget_only(tmp_path, data_dir):
    """Top-level code runs outside any per-input limit; base must answer within its own budget
    (sum of base limits + 1 s, as evalplus times a phase), not the base and plus budgets."""
    task = load_task("mbpp+", data_dir)
    p = task.by_id()["Mbpp/3"]
    task.problems = [p]
    rows = [{"task_id": p.task_id, "solution": p.reference + "\nwhile True:\n    pass\n"},
            {"task_id": p.task_id, "solution": p.reference}]
    _, (hung, ok) = _judge(task, rows, tmp_path, "hang", workers=1, do_sanitize=False)
    # Mbpp/3 has 5 base inputs at the 1 s floor: a 6 s budget (base and plus: over 60 s)
    assert hung["status"] == "timeout" and hung["seconds"] < len(p.base_input) + 2.0
    assert ok["base_status"] == "passed" and ok["plus_status"] == "passed"
