"""A code-choice set: pick the right solution among the reference and three near-miss mutants.

Small models trained on a few million tokens pass almost no HumanEval problem, so pass@k cannot
show the crossover at that scale. Ranking four continuations of one prompt by likelihood can:
a calibration run of the paper's small-scale recipe measured 37-53% (chance 25%) on
17M-parameter models (docs/benchmarks.md). Each row holds a
prompt, the reference continuation and three AST mutants of it (one operator, constant or
boolean changed) that the sandbox proved to fail the task's tests, in a seeded order.

Row (schema `codediff.codechoice/1`, JSONL):
  {"task": "humaneval", "task_id": "HumanEval/0", "context": "<prompt>",
   "options": ["<continuation>", ...4], "answer": 2, "mutations": ["Lt->LtE", ...]}
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import random
from pathlib import Path

from codediff.harness.judge import Job, Judge
from codediff.harness.tasks import Problem, Task, load_task

from codediff.formats import CODECHOICE_SCHEMA as SCHEMA
from codediff.formats import atomic_write_text

_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
             ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
             ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mod,
             ast.Mod: ast.FloorDiv, ast.Div: ast.Mult, ast.Pow: ast.Mult}
_BOOL_SWAP = {ast.And: ast.Or, ast.Or: ast.And}


def _sites(tree: ast.AST) -> list[tuple[int, str]]:
    """Every place one small mutation can be made: (index in ast.walk order, kind)."""
    out = []
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP_SWAP:
            out.append((i, "cmp"))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            out.append((i, "bin"))
        elif isinstance(node, ast.BoolOp) and type(node.op) in _BOOL_SWAP:
            out.append((i, "bool"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            out.append((i, "int"))
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            out.append((i, "boolconst"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append((i, "not"))
    return out


def mutate(source: str, site: tuple[int, str]) -> tuple[str, str] | None:
    """Apply one mutation; returns (new source, description) or None if it changes nothing."""
    tree = ast.parse(source)
    index, kind = site
    node = list(ast.walk(tree))[index]
    if kind == "cmp":
        old = type(node.ops[0])
        node.ops[0] = _CMP_SWAP[old]()
        desc = f"{old.__name__}->{type(node.ops[0]).__name__}"
    elif kind == "bin":
        old = type(node.op)
        node.op = _BIN_SWAP[old]()
        desc = f"{old.__name__}->{type(node.op).__name__}"
    elif kind == "bool":
        old = type(node.op)
        node.op = _BOOL_SWAP[old]()
        desc = f"{old.__name__}->{type(node.op).__name__}"
    elif kind == "int":
        desc = f"{node.value}->{node.value + 1}"
        node.value = node.value + 1
    elif kind == "boolconst":
        desc = f"{node.value}->{not node.value}"
        node.value = not node.value
    elif kind == "not":  # `not x` -> `x`, replaced through the parent
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, node.operand)
                elif isinstance(value, list) and any(v is node for v in value):
                    setattr(parent, field, [node.operand if v is node else v for v in value])
        desc = "drop not"
    else:
        return None
    new = ast.unparse(tree)
    return (new, desc) if new != ast.unparse(ast.parse(source)) else None


_WRAP = "def __codechoice__():\n"


def _as_body(wrapped: str) -> str:
    """Unparsed `def __codechoice__(): ...` back to a 4-space indented function body."""
    fn = ast.parse(wrapped).body[0]
    text = "\n".join(ast.unparse(stmt) for stmt in fn.body)
    return "".join("    " + line + "\n" if line else "\n" for line in text.splitlines())


def variants(task: Task, p: Problem, seed: int = 0, most: int = 12
             ) -> tuple[str, str, list[tuple[str, str]]]:
    """(context, reference continuation, [(mutant continuation, description)]).

    Reference and mutants both go through ast.unparse, so they differ only where mutated and
    formatting cannot give the answer away."""
    if task.spec.loader == "humaneval":  # the continuation is the function body
        context = p.prompt
        source = _WRAP + p.reference[len(p.prompt):]
        to_text = _as_body
    else:  # the continuation is the whole program after a zero-shot docstring prompt
        context = task.prompt_for(p, "docstring") if "docstring" in task.spec.formats \
            else task.prompt_for(p)
        source = p.reference
        to_text = lambda src: ast.unparse(ast.parse(src)) + "\n"  # noqa: E731
    ref = to_text(ast.unparse(ast.parse(source)))
    sites = _sites(ast.parse(source))
    random.Random(f"{seed}/{p.task_id}").shuffle(sites)
    muts: list[tuple[str, str]] = []
    for site in sites:
        got = mutate(source, site)
        if got is not None:
            text = to_text(got[0])
            if text != ref and all(text != m for m, _ in muts):
                muts.append((text, got[1]))
        if len(muts) >= most:
            break
    return context, ref, muts


# Seconds of CPU a program may use before it counts as "too slow" (not "fails the tests"): the
# judge's wall-clock limit would make a verdict depend on how busy the machine is (two builds under
# load gave 415 and 414 rows). RLIMIT_CPU counts whole seconds.
def _cpu_budget(task: Task) -> int:
    return max(1, math.ceil(min(task.spec.timeout, 5.0)))


def _cpu_capped(program: str, seconds: int) -> str:
    """The program with its CPU time capped: SIGXCPU after `seconds` of CPU, however long the
    wait for a core (the zygote reports that as a timeout, "CPU time limit")."""
    return ("import resource as _cc_rl\n"
            "_cc_hard = _cc_rl.getrlimit(_cc_rl.RLIMIT_CPU)[1]\n"
            f"_cc_rl.setrlimit(_cc_rl.RLIMIT_CPU, ({seconds} if _cc_hard < 0 else "
            f"min({seconds}, _cc_hard), _cc_hard))\n"
            "del _cc_rl, _cc_hard\n" + program)


def _slow_not_wrong(v: dict) -> bool:
    """A verdict that says "the machine was slow" rather than anything about the program: a
    wall-clock timeout, or the harness losing its sandbox."""
    if v.get("status") == "timeout":
        return v.get("detail") != "CPU time limit"
    return v.get("status") == "crash" and str(v.get("detail", "")).startswith("harness:")


def verify(task: Task, jobs: list[Job], *, workers: int | None = None,
           wall_seconds: float | None = None, bar=None) -> dict[str, str]:
    """job key -> status, as if judged with only a CPU-time limit (so the same on any machine).

    First pass: CPU cap = budget, wall limit = `wall_seconds` (default twice the budget, so an
    idle machine gives every verdict here). A program the wall clock stopped before the CPU cap
    could is judged again with a generous wall limit; an endless loop still ends at the CPU cap."""
    cpu = _cpu_budget(task)
    by_key = {j.key: j for j in jobs}
    rounds = [wall_seconds or 2.0 * cpu, max(120.0, 30.0 * cpu)]
    todo, statuses = list(jobs), {}
    for wall in rounds:
        judge = Judge(task, workers=workers, timeout=wall)
        judge.prepare()
        capped = [Job(j.key, j.task_id, _cpu_capped(j.program, cpu)) for j in todo]
        retry = []
        for job, v in judge.run(capped):
            statuses[job.key] = v["status"]
            if _slow_not_wrong(v):
                retry.append(by_key[job.key])
            elif bar is not None:
                bar.update(1)
        todo = retry
        if not todo:
            break
    if bar is not None:
        bar.update(len(todo))
    for key in (j.key for j in todo):  # too slow even with time to spare: not verified
        statuses[key] = "timeout"
    return statuses


def build(tasks: list[str], out: Path, *, data: str | os.PathLike | None = None, seed: int = 0,
          limit: int | None = None, workers: int | None = None, progress: bool = False,
          wall_seconds: float | None = None) -> dict:
    """Write the code-choice JSONL; every kept mutant was run and fails its task's tests.

    Whether a mutant fails is decided under a CPU-time limit (`verify`), so the same inputs give
    the same file on a busy or an idle machine; `wall_seconds` (tests) shortens the first pass's
    wall-clock limit, as on a hopelessly slow machine."""
    from tqdm import tqdm

    rows: list[dict] = []
    stats: dict[str, dict] = {}
    for name in tasks:
        task = load_task(name, data)
        cands = []
        for p in task.problems:
            try:
                cands.append((p, *variants(task, p, seed)))
            except SyntaxError:
                continue
        jobs, meta = [], {}
        for p, _context, ref, muts in cands:
            glue = p.prompt if task.spec.loader == "humaneval" else ""
            for j, (m, desc) in enumerate(muts):
                key = f"{p.task_id}#{j}"
                jobs.append(Job(key, p.task_id, glue + m))
                meta[key] = (p.task_id, m, desc)
            jobs.append(Job(f"{p.task_id}#ref", p.task_id, glue + ref))
        with tqdm(total=len(jobs), desc=f"{name}: verifying mutants", unit="run",
                  disable=not progress, leave=False) as bar:
            verdicts = verify(task, jobs, workers=workers, wall_seconds=wall_seconds, bar=bar)
        failing: dict[str, list[tuple[str, str]]] = {}
        for key, (tid, m, desc) in meta.items():
            if verdicts.get(key) in ("failed", "error"):  # not timeouts: those are slow, not wrong
                failing.setdefault(tid, []).append((m, desc))
        kept = 0
        for p, context, ref, _ in cands:
            if verdicts.get(f"{p.task_id}#ref") != "passed":
                continue
            wrong = failing.get(p.task_id, [])
            uniq = list(dict.fromkeys(wrong))
            if len(uniq) < 3:
                continue
            rng = random.Random(f"{seed}/{p.task_id}/pick")
            picked = rng.sample(uniq, 3)
            options = [ref] + [m for m, _ in picked]
            order = list(range(4))
            rng.shuffle(order)
            rows.append({"schema": SCHEMA, "task": task.name, "task_id": p.task_id,
                         "context": context, "options": [options[i] for i in order],
                         "answer": order.index(0),
                         "mutations": [picked[i - 1][1] if i else "" for i in order]})
            kept += 1
        stats[name] = {"problems": len(task.problems), "rows": kept,
                       "dataset_sha256": task.dataset.sha256}
    if limit is not None:
        rows = rows[:limit]
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"rows": len(rows), "per_task": stats, "sha256": digest}
