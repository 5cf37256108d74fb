"""Infilling tasks: a hole in a real solution, judged by the problem's own tests.

Two loader kinds (docs/judge.md, "Infilling tasks"):
- `humaneval-infilling` reads the HumanEval infilling files of Bavarian et al. 2022 (rows with
  `prompt` = text before the hole, `suffix` = text after it, `canonical_solution` = the hole,
  `test`, `entry_point`), keeping their task ids, so samples made for the original benchmark
  judge unchanged: the program is prompt + completion + suffix, then the test, then
  `check(entry_point)`, as upstream's `evaluate_infilling_functional_correctness` runs it.
- `mbpp-infill` builds single-line holes from the MBPP test split's reference solutions, in
  memory at load time (no execution, well under a second): each non-blank line of a function
  body is a hole, under the problem text as a docstring. Holes that an empty fill or `pass`
  also passes measure nothing; which they are needs the sandbox, so the list is computed once
  (`trivial_holes`, scripts/mbpp_infill_trivial.py), shipped in `tasks/mbpp_infill_trivial.py`
  with the hash of the candidate holes it was made from, and checked by the tests. The built
  rows' hash is the task's dataset sha256.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from codediff.harness.tasks import (
    DatasetId,
    Problem,
    Task,
    TaskSpec,
    _dataset_id,
    _mbpp_problem,
)

from codediff.errors import UserError

TRIVIAL_MODULE = "codediff.tasks.mbpp_infill_trivial"
REFRESH = "run scripts/mbpp_infill_trivial.py to recompute the trivial holes"


def load(spec: TaskSpec, rows: list[dict], path: Path | None) -> Task:
    if spec.loader == "humaneval-infilling":
        return humaneval_infilling(spec, rows, path)
    return mbpp_infill(spec, rows, path)


# ----------------------------------------------------------------------------- HumanEval

def humaneval_infilling(spec: TaskSpec, rows: list[dict], path: Path) -> Task:
    problems = []
    for r in rows:
        # upstream runs prompt + completion + suffix + "\n" + test + "\n" + check(entry_point);
        # the sandbox runs the program, then "\n" + test (compiled on its own), the same code
        problems.append(Problem(
            task_id=r["task_id"], prompt=r["prompt"], suffix=r["suffix"],
            entry_point=r["entry_point"],
            reference=r["prompt"] + r["canonical_solution"] + r["suffix"],
            test=f"{r['test']}\ncheck({r['entry_point']})\n"))
    return Task(spec, problems, _dataset_id(spec, path))


# ----------------------------------------------------------------------------- MBPP

def normalized_code(code: str) -> str:
    """MBPP code with Unix line ends (three test-split rows end lines in a bare CR) and a final
    line break, so every line, the last included, is a whole line."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    return code if code.endswith("\n") else code + "\n"


def hole_lines(code: str) -> list[int]:
    """0-based numbers of the lines of `code` that are holes: every non-blank line inside the
    body of a function defined at top level or in a top-level class (nested functions are part
    of the body around them). Never a hole: `def` lines and their signatures, decorators, a body
    written on the `def` line, class lines and class-level statements, imports and other
    top-level code (they stay in the prompt or the suffix as written)."""
    lines = code.split("\n")
    holes: set[int] = set()

    def visit(nodes: Iterable[ast.stmt]) -> None:
        for n in nodes:
            if isinstance(n, ast.ClassDef):
                visit(n.body)
            elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                first = n.body[0]
                head = lines[first.lineno - 1].encode()[:first.col_offset]
                if head.strip():  # `def f(x): return x`: the body shares the header's line
                    continue
                holes.update(range(first.lineno - 1, n.end_lineno))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes in the references' strings
        tree = ast.parse(code)
    visit(tree.body)
    return sorted(i for i in holes if lines[i].strip())


def mbpp_candidates(spec: TaskSpec, rows: list[dict]) -> list[Problem]:
    """Every hole of the recipe, before trivial holes are dropped (the rows' `task_id` may be
    11 or "Mbpp/11"; the test split's range comes from the spec)."""
    quirks = importlib.import_module(f"codediff.tasks.quirks_{spec.quirks}")
    by_num = {int(str(r["task_id"]).removeprefix("Mbpp/")): r for r in rows}
    lo, hi = spec.task_ids or (min(by_num), max(by_num))
    missing = [i for i in range(lo, hi + 1) if i not in by_num]
    if missing:
        raise UserError(f"MBPP data lacks task ids {missing[:5]}...; use the original 974-row "
                        "mbpp.jsonl")
    out = []
    for num in range(lo, hi + 1):
        if num in quirks.EXCLUDED:
            continue
        base = _mbpp_problem(by_num[num])
        code = normalized_code(by_num[num]["code"])
        header = spec.header.format(text=base.text.strip(),
                                    first_test=base.tests[0] if base.tests else "")
        lines = code.split("\n")
        for i in hole_lines(code):
            out.append(Problem(
                task_id=f"SingleLineInfilling/Mbpp/{num}/L{i}",
                prompt=header + "".join(ln + "\n" for ln in lines[:i]),
                suffix="\n".join(lines[i + 1:]),  # ends with the code's final line break
                entry_point=base.entry_point, reference=header + code, test=base.test,
                text=base.text, tests=base.tests, setup=base.setup))
    return out


def rows_sha256(problems: list[Problem]) -> str:
    """Hash of what a built task consists of: the judged pieces of every row, in order."""
    rows = [[p.task_id, p.prompt, p.suffix, p.reference, p.entry_point, p.test]
            for p in problems]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def mbpp_infill(spec: TaskSpec, rows: list[dict], path: Path | None) -> Task:
    candidates = mbpp_candidates(spec, rows)
    trivial = importlib.import_module(TRIVIAL_MODULE)
    if rows_sha256(candidates) != trivial.CANDIDATES_SHA256:
        raise UserError(f"{path or spec.hub}: its MBPP rows give other holes than the ones "
                        f"{spec.name}'s list of trivial holes was made from (is it the "
                        f"original 974-row mbpp.jsonl?); pass that file, or {REFRESH}")
    problems = [p for p in candidates if p.task_id not in trivial.TRIVIAL]
    quirks = importlib.import_module(f"codediff.tasks.quirks_{spec.quirks}")
    reasons = {"empty": "an empty fill passes", "pass": "a `pass` fill passes"}
    notes = [f"{spec.name}: {len(problems)} holes kept of {len(candidates)}; dropped "
             + ", ".join(f"{sum(v == k for v in trivial.TRIVIAL.values())} where {why}"
                         for k, why in reasons.items())]
    notes += [f"{spec.name}: Mbpp/{num} excluded: {why}" for num, why in quirks.EXCLUDED.items()]
    where = str(path) if path else spec.hub
    dataset = DatasetId(spec.name, spec.version, rows_sha256(problems), where)
    return Task(spec, problems, dataset, notes=notes)


# ----------------------------------------------------------------------------- trivial holes

def trivial_fills(p: Problem) -> dict[str, str]:
    """The fills a hole must not pass: nothing, and `pass` at the hole's indentation."""
    line = p.canonical_fill
    indent = line[:len(line) - len(line.lstrip(" \t"))]
    return {"empty": "", "pass": f"{indent}pass\n"}


# A trivial fill that passes does about the canonical fill's work; one that loops (an empty fill
# where a loop's counter was) would hold a sandbox for the whole per-sample limit. So trivial
# fills get max(floor, factor x the canonical fill's time), at most the task's limit.
TRIVIAL_FLOOR_S = 1.0
TRIVIAL_FACTOR = 20.0


def judge_fills(task: Task, kinds: tuple[str, ...] = ("empty", "pass"), *,
                workers: int | None = None, unsafe: bool = False) -> dict[str, dict[str, dict]]:
    """Judge every row's canonical fill (at the task's limit), then the trivial fills named in
    `kinds` (trivial_fills), all of a kind in one batched judge run. {task_id: {kind: verdict}}."""
    from codediff.harness.judge import Job, Judge

    out: dict[str, dict[str, dict]] = {p.task_id: {} for p in task.problems}

    def run(kind: str, limits: dict[str, float] | None = None) -> None:
        judge = Judge(task, workers=workers, unsafe=unsafe)
        judge.prepare()
        if limits:
            judge.timeouts.update(limits)
        jobs = (Job(p.task_id, p.task_id,
                    p.prompt + (p.canonical_fill if kind == "canonical" else
                                trivial_fills(p)[kind]) + p.suffix) for p in task.problems)
        for job, verdict in judge.run(jobs):
            out[job.task_id][kind] = verdict

    run("canonical")
    limits = {tid: min(task.spec.timeout,
                       max(TRIVIAL_FLOOR_S, TRIVIAL_FACTOR * v["canonical"].get("seconds", 0.0)))
              for tid, v in out.items()}
    for kind in kinds:
        run(kind, limits)
    return out


def trivial_holes(verdicts: dict[str, dict[str, dict]]) -> dict[str, str]:
    """{task_id: "empty" | "pass"} for the rows whose empty (else `pass`) fill passes."""
    trivial = {}
    for tid, v in verdicts.items():
        for kind in ("empty", "pass"):
            if v.get(kind, {}).get("status") == "passed":
                trivial[tid] = kind
                break
    return trivial


def write_trivial_module(path: str | os.PathLike, candidates: list[Problem],
                         trivial: dict[str, str]) -> None:
    """Write `tasks/mbpp_infill_trivial.py` (generated; the tests recompute and compare it)."""
    order = {p.task_id: i for i, p in enumerate(candidates)}
    lines = ['"""Holes of mbpp-infill-single that an empty or `pass` fill also passes (dropped).',
             "", "Generated by scripts/mbpp_infill_trivial.py from the candidate holes whose",
             "rows hash to CANDIDATES_SHA256; do not edit by hand (tests/test_infill_tasks.py",
             'recomputes it)."""', "",
             f'CANDIDATES_SHA256 = "{rows_sha256(candidates)}"', "",
             "# task id -> the fill that passes (`empty` is tried first)",
             "TRIVIAL = {"]
    for tid in sorted(trivial, key=order.__getitem__):
        lines.append(f'    "{tid}": "{trivial[tid]}",')
    lines.append("}")
    Path(path).write_text("\n".join(lines) + "\n")
