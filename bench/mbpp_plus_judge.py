"""MBPP+ judging: codediff vs `evalplus.evaluate` (evalplus 0.3.1, the release on the index).

Writes one seeded MBPP+ samples file over every task of the data file (evalplus insists on a
sample for each task) with these kinds of sample:

  reference   prompt + canonical solution (every task)
  mutant      AST mutants of the canonical solution: a comparison loosened (`<` -> `<=`), an
              integer constant moved by one, `+` and `-` swapped, `and`/`or` swapped; many pass the
              base inputs and fail plus ones
  slow        the reference plus a busy loop per call: 2 s (fails under evalplus 0.3.1's 1 s
              floor, passes under a 4 s one) or forever
  printing    the reference printing its arguments and result on every call
  raising     raises on every call, or only on inputs longer than the base ones
  toplevel    the reference followed by top-level test code: the task's own asserts (true), a
              false assert, or a print of a call

then judges it with evalplus 0.3.1 and with `codediff evaluate` (bubblewrap on, one sandbox per
core, the task's time limits) in one run, both with their ground truth already cached, and prints
both rates, the ratio and the base/plus verdict agreement with every disagreement and its kind.
codediff judges the raw file (`--no-sanitize`, what evalplus does) and, as a second line, with its
sanitiser on, which strips top-level test code (the `toplevel` kind's false asserts then pass).

    python bench/mbpp_plus_judge.py --data MbppPlus.jsonl [--seed 0] [--workers N]
        [--ep-parallel N] [--keep DIR]

A plus verdict here is what both tools count for pass@k on plus: base and plus both passed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codediff.harness.evaluate import evaluate  # noqa: E402
from codediff.harness.judge import Judge  # noqa: E402
from codediff.harness.samples import read_samples  # noqa: E402
from codediff.harness.tasks import load_task  # noqa: E402

# ----------------------------------------------------------------------------- samples


class _Mutator(ast.NodeTransformer):
    """Apply the `target`-th applicable mutation (counting in visit order)."""

    SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}

    def __init__(self, target: int):
        self.target, self.seen, self.done = target, 0, False

    def _hit(self) -> bool:
        self.seen += 1
        if self.seen - 1 == self.target:
            self.done = True
            return True
        return False

    def visit_Compare(self, node):
        self.generic_visit(node)
        if type(node.ops[0]) in self.SWAP and self._hit():
            node.ops[0] = self.SWAP[type(node.ops[0])]()
        return node

    def visit_Constant(self, node):
        if type(node.value) is int and self._hit():
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, (ast.Add, ast.Sub)) and self._hit():
            node.op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        if self._hit():
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return node


def _mutants(code: str, rng: random.Random, n: int) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    counter = _Mutator(-1)
    counter.visit(ast.parse(code))
    sites = list(range(counter.seen))
    rng.shuffle(sites)
    out = []
    for site in sites[:n]:
        m = _Mutator(site)
        new = m.visit(ast.parse(code))
        if m.done:
            text = ast.unparse(ast.fix_missing_locations(new))
            if text != ast.unparse(tree):
                out.append(text + "\n")
    return out


def _wrap(code: str, entry: str, before: str) -> str:
    """Rename the entry point and define it again around the original with `before` first."""
    return (f"{code}\n\n_inner_{entry} = {entry}\n\n"
            f"def {entry}(*args, **kwargs):\n{before}"
            f"    return _inner_{entry}(*args, **kwargs)\n")


def make_samples(data: Path, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    out: list[dict] = []

    def add(r: dict, kind: str, solution: str) -> None:
        out.append({"task_id": r["task_id"], "solution": solution, "kind": kind})

    for r in rows:
        ref = r["prompt"] + r["canonical_solution"]
        ep = r["entry_point"]
        add(r, "reference", ref)
        for m in _mutants(r["canonical_solution"], rng, 4):
            add(r, "mutant", r["prompt"] + "\n" + m)
        for _ in range(2):
            roll = rng.random()
            if roll < 0.03:
                secs = rng.choice([2.0, None])
                loop = ("    import time as _t\n    _s = _t.perf_counter()\n"
                        f"    while _t.perf_counter() - _s < {secs}:\n        pass\n") if secs else \
                    "    while True:\n        pass\n"
                add(r, f"slow-{secs or 'forever'}", _wrap(ref, ep, loop))
            elif roll < 0.34:
                add(r, "printing", _wrap(ref, ep, "    print('args', args, kwargs)\n"))
            elif roll < 0.54:
                if rng.random() < 0.5:
                    add(r, "raising-always", _wrap(ref, ep, "    raise ValueError('no')\n"))
                else:
                    limit = max(len(repr(i)) for i in r["base_input"]) if r["base_input"] else 0
                    add(r, "raising-long", _wrap(ref, ep, f"    if len(repr(args)) > {limit}:\n"
                                                 "        raise ValueError('too long')\n"))
            elif roll < 0.90 and r.get("assertion"):
                which = rng.random()
                if which < 0.6:
                    add(r, "toplevel-asserts", ref + "\n" + r["assertion"].strip() + "\n")
                elif which < 0.8:
                    add(r, "toplevel-false", ref + f"\nassert {ep} is None\n")
                else:
                    first = r["assertion"].strip().splitlines()[0]
                    call = first[len("assert "):].split(" == ")[0] if " == " in first else first[7:]
                    add(r, "toplevel-print", ref + f"\nprint({call})\n")
    return out


# ----------------------------------------------------------------------------- running


def run_evalplus(samples: Path, parallel: int | None) -> tuple[float, dict]:
    from evalplus.evaluate import evaluate as ep_evaluate

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ep_evaluate("mbpp", samples=str(samples), parallel=parallel, i_just_wanna_run=True)
    secs = time.perf_counter() - t0
    res = json.loads(Path(str(samples).replace(".jsonl", "_eval_results.json")).read_text())
    verdicts = {}
    for tid, lst in res["eval"].items():
        for i, e in enumerate(lst):
            base = e["base_status"] == "pass"
            verdicts[(tid, i)] = (base, base and e["plus_status"] == "pass")
    return secs, verdicts


def run_codediff(task, samples: Path, out: Path, workers: int | None,
                 sanitize: bool) -> tuple[float, dict, dict]:
    parsed = read_samples(samples, set(task.by_id()), task.name)
    t0 = time.perf_counter()
    res = evaluate(task, parsed, out=out, samples_path=samples, ks=[1], workers=workers,
                   do_sanitize=sanitize)
    secs = time.perf_counter() - t0
    verdicts = {}
    for line in (out / "executions.jsonl").read_text().splitlines():
        r = json.loads(line)
        # No phase statuses: the program failed before any input ran (syntax error, top level).
        base = r.get("base_status") == "passed"
        verdicts[(r["task_id"], r["completion_id"])] = (base, base and r["plus_status"] == "passed")
    return secs, verdicts, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="MbppPlus jsonl (read in place)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="codediff sandboxes")
    ap.add_argument("--ep-parallel", type=int, default=None,
                    help="evalplus workers (default: its own, cores // 2)")
    ap.add_argument("--keep", default=None, help="keep the samples and results in this folder")
    ap.add_argument("--skip-evalplus", action="store_true", help="time codediff only")
    args = ap.parse_args()

    data = Path(args.data).resolve()
    os.environ["MBPP_OVERRIDE_PATH"] = str(data)  # evalplus reads it at import time
    task = load_task("mbpp+", data)
    rows = make_samples(data, args.seed)
    kinds = [r.pop("kind") for r in rows]

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mbpp-judge-"))
    work.mkdir(parents=True, exist_ok=True)
    samples = work / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys, seen = [], Counter()
    for r in rows:
        keys.append((r["task_id"], seen[r["task_id"]]))
        seen[r["task_id"]] += 1
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    print(f"samples: {len(rows)} over {len(seen)} tasks: "
          + ", ".join(f"{k} {v}" for k, v in sorted(Counter(kinds).items())))

    # Ground truth first, untimed, for both (each caches it on disk).
    Judge(task, workers=1).prepare()
    if not args.skip_evalplus:
        from evalplus.data import get_mbpp_plus, get_mbpp_plus_hash
        from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
        from evalplus.evaluate import get_groundtruth

        with contextlib.redirect_stdout(io.StringIO()):
            get_groundtruth(get_mbpp_plus(), get_mbpp_plus_hash(), MBPP_OUTPUT_NOT_NONE_TASKS)

    n = len(rows)
    runs = {}
    for name, sanitize in (("raw", False), ("sanitised", True)):
        out = work / f"codediff-{name}"
        shutil.rmtree(out, ignore_errors=True)
        secs, verdicts, res = run_codediff(task, samples, out, args.workers, sanitize)
        runs[name] = (secs, verdicts, res)
        print(f"codediff evaluate ({name}, bubblewrap, {res['harness']['workers']} sandboxes, "
              f"floor {res['harness']['min_time_limit']} s x{res['harness']['time_limit_factor']}"
              f"): {secs:7.2f} s {n / secs:7.1f} samples/s"
              + (f"  sanitiser changed {res['harness']['sanitizer_changed']}" if sanitize else ""))
    if args.skip_evalplus:
        return
    ep_secs, theirs = run_evalplus(samples, args.ep_parallel)
    print(f"evalplus 0.3.1 evaluate (parallel {args.ep_parallel or 'default'}): "
          f"{ep_secs:7.2f} s {n / ep_secs:7.1f} samples/s   load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, (secs, ours, _res) in runs.items():
        same_b = sum(ours[k][0] == theirs[k][0] for k in keys)
        same_p = sum(ours[k][1] == theirs[k][1] for k in keys)
        print(f"[{name}] ratio codediff / evalplus: {ep_secs / secs:.1f}x   base agree "
              f"{same_b}/{n} ({100 * same_b / n:.2f}%)   plus agree {same_p}/{n} "
              f"({100 * same_p / n:.2f}%)")
        for k, kind in zip(keys, kinds, strict=True):
            if ours[k] != theirs[k]:
                print(f"   {k[0]}#{k[1]} {kind}: codediff (base, plus) {ours[k]}, evalplus "
                      f"{theirs[k]}")
    print("evalplus verdicts by kind (base pass, plus pass / count): " + ", ".join(
        f"{kind} {sum(theirs[k][0] for k, kd in zip(keys, kinds, strict=True) if kd == kind)},"
        f"{sum(theirs[k][1] for k, kd in zip(keys, kinds, strict=True) if kd == kind)}/{c}"
        for kind, c in sorted(Counter(kinds).items())))


if __name__ == "__main__":
    main()
