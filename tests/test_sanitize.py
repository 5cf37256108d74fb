from codediff.harness.sanitize import extract_fenced, sanitize
from codediff.harness.tasks import load_task

PROMPT = 'from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    """Sum."""\n'


def _run(program: str, call: str):
    g: dict = {}
    exec(program, g)  # test-local, trusted snippets only
    return eval(call, g)


def test_clean_completion_keeps_meaning():
    s = sanitize("    return sum(xs)\n", entry_point="add", prompt=PROMPT)
    assert _run(s.program, "add([1, 2])") == 3
    assert "from typing import List" in s.program


def test_fenced_chat_answer():
    raw = ("Sure! Here is the function:\n\n```python\ndef add(xs):\n    return sum(xs)\n```\n"
           "It adds the numbers. Example:\n```\nprint(add([1]))\n```\n")
    assert extract_fenced(raw, "add").startswith("def add")
    s = sanitize(raw, entry_point="add", prompt=PROMPT)
    assert _run(s.program, "add([4, 5])") == 9
    assert "print(" not in s.program and "code taken from markdown fence" in s.notes


def test_test_code_prints_and_main_guard_dropped_helpers_kept():
    raw = ("    return helper(xs)\n\n\ndef helper(xs):\n    return sum(xs) + OFFSET\n\n"
           "OFFSET = 0\n\nprint(add([1]))\nassert add([1]) == 2\n"
           "if __name__ == '__main__':\n    raise SystemExit(1)\n")
    s = sanitize(raw, entry_point="add", prompt=PROMPT)
    assert "print(" not in s.program and "__main__" not in s.program
    assert "assert add" not in s.program
    assert _run(s.program, "add([1, 2])") == 3


def test_truncated_generation_cut_at_stop_or_error():
    raw = "    return sum(xs)\n\n\ndef other(:\n    broken"
    s = sanitize(raw, entry_point="add", prompt=PROMPT, stop=["\ndef "])
    assert _run(s.program, "add([2])") == 2
    raw = "    return sum(xs)\nThis function returns the sum of xs, as requested."
    s = sanitize(raw, entry_point="add", prompt=PROMPT, stop=[])
    assert _run(s.program, "add([2, 2])") == 4


def test_solution_mode_and_mbpp_three_shot_answer(data_dir):
    task = load_task("mbpp", data_dir)
    p = task.by_id()["Mbpp/11"]
    raw = p.reference + "\n[DONE]\n\nYou are an expert Python programmer, and here is"
    s = sanitize(raw, entry_point=p.entry_point, completion=False,
                 stop=task.stop_sequences("3shot"))
    assert "[DONE]" not in s.program
    g: dict = {}
    exec(s.program + "\n" + p.test, g)  # the reference passes its own tests


def test_humaneval_canonical_programs_unchanged_in_meaning():
    task = load_task("humaneval")
    for p in task.problems:
        s = sanitize(p.reference[len(p.prompt):], entry_point=p.entry_point, prompt=p.prompt)
        compile(s.program, "x", "exec")
        assert f"def {p.entry_point}" in s.program
