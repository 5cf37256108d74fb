import json

import pytest
from codediff.harness.tasks import available_tasks, contamination_texts, file_sha256, load_task

from codediff.errors import UserError


def test_specs_declared():
    assert set(available_tasks()) == {"humaneval", "humaneval+", "mbpp", "mbpp+",
                                      "humaneval-infill-single", "humaneval-infill-multi",
                                      "humaneval-infill-span", "humaneval-infill-span-light",
                                      "mbpp-infill-single"}


def test_humaneval_ships_with_package():
    t = load_task("humaneval")
    assert len(t.problems) == 164
    assert t.dataset.sha256 == file_sha256(t.dataset.path)
    p = t.problems[0]
    assert t.prompt_for(p) == p.prompt
    assert "\ndef " in t.stop_sequences()


def test_mbpp_test_split_and_prompts(data_dir):
    t = load_task("mbpp", data_dir)
    ids = [int(p.task_id.split("/")[1]) for p in t.problems]
    assert ids == list(range(11, 511))
    assert [p.task_id for p in t.fewshot] == ["Mbpp/2", "Mbpp/3", "Mbpp/4"]
    p = t.by_id()["Mbpp/11"]
    prompt = t.prompt_for(p, "3shot")
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3
    assert prompt.startswith("You are an expert Python programmer, and here is your task: ")
    assert prompt.endswith("[BEGIN]\n") and p.tests[0] in prompt
    zero = t.prompt_for(p, "docstring")
    assert zero.startswith('"""\n') and p.tests[0] in zero and "[BEGIN]" not in zero
    assert t.stop_sequences("3shot")[0] == "[DONE]"
    assert t.dataset.sha256 == file_sha256(data_dir / "mbpp" / "mbpp.jsonl")


def test_mbpp_plus_snapshot(data_dir):
    t = load_task("mbpp+", data_dir)
    assert len(t.problems) == 399
    p = t.by_id()["Mbpp/106"]  # serialised inputs come back as tuples
    assert all(isinstance(inp[1], tuple) for inp in p.base_input)
    p = t.by_id()["Mbpp/124"]
    assert all(isinstance(inp[1], complex) for inp in p.plus_input)


def test_humaneval_plus_release_format(tmp_path):
    row = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
           "entry_point": "add", "canonical_solution": "    return a + b\n",
           "base_input": [[1, 2]], "plus_input": [[3, 4], [-1, 1]], "atol": 0,
           "contract": "", "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    f = tmp_path / "HumanEvalPlus.jsonl"
    f.write_text(json.dumps(row) + "\n")
    t = load_task("humaneval+", f)
    assert t.spec.differential and t.problems[0].plus_input == [[3, 4], [-1, 1]]
    assert t.dataset.sha256 == file_sha256(f)


def test_missing_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no data file for task mbpp"):
        load_task("mbpp", tmp_path)
    with pytest.raises(UserError, match="no such file"):
        load_task("mbpp", tmp_path / "nope.jsonl")


def test_contamination_texts_cover_all_mbpp_rows(data_dir):
    seen = {(task, tid) for task, tid, _ in contamination_texts(data_dir)}
    assert sum(1 for task, _ in seen if task == "mbpp") == 974
    assert sum(1 for task, _ in seen if task == "humaneval") == 164


def test_tasks_command_marks_each_default_format(data_dir, capsys):
    """`codediff tasks`: each task's prompt formats with its default one marked `*`, and the
    output says what the mark means."""
    from codediff.cli import main

    assert main(["tasks", "--data", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "formats (* default)" in lines[0]
    assert lines[-1].startswith("* the task's default prompt format")
    rows = {ln.split()[0]: ln.split()[2] for ln in lines[1:-1]}
    specs = available_tasks()
    assert set(rows) == set(specs)
    for name, spec in specs.items():
        shown = rows[name].split(",")
        assert shown == [f + ("*" if f == spec.default_format else "") for f in spec.formats]
        assert sum(f.endswith("*") for f in shown) == 1
    assert rows["mbpp"] == "3shot*,docstring" and rows["humaneval-infill-single"] == "infill*,prefix"
    # the data column starts in one place on every row
    assert len({ln.index(ln.split()[3], len(ln.split()[0]) + 1) for ln in lines[1:-1]}) == 1
