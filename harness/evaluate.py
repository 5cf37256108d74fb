"""`codediff evaluate`: judge a samples file and write a results dir.

    codediff evaluate --task humaneval --samples samples.jsonl --out results/x [--k 1,10,100]

Writes `DIR/executions.jsonl` as verdicts arrive (one line per sample, flushed), and
`DIR/results.json` once all samples are judged. Rerun with the same `--out` to resume after a
kill: judged samples are not run again and no line is duplicated or lost. See docs/formats.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from codediff.harness import __version__ as HARNESS_VERSION
from codediff.harness.judge import Job, Judge
from codediff.harness.passk import pass_at_k, reportable_ks
from codediff.harness.samples import Sample, read_samples
from codediff.harness.sandbox import Limits
from codediff.harness.sanitize import names_used, sanitize
from codediff.harness.tasks import Task, available_tasks, file_sha256, load_task

from codediff.errors import UserError
from codediff.fileio import atomic_write_text

RESULTS_SCHEMA = "codediff.results/1"
STATUSES = ("passed", "failed", "error", "timeout", "oom", "crash", "syntax_error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=sorted(available_tasks()),
                        help="benchmark task")
    parser.add_argument("--samples", required=True, help="samples JSONL (task_id + completion "
                        "or solution per line)")
    parser.add_argument("--out", required=True, help="results dir (created; resumed if present)")
    parser.add_argument("--k", default="1,10,100", help="pass@k values, comma separated "
                        "(those above the samples per task are left out)")
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxes "
                        "(default: all cores)")
    parser.add_argument("--data", default=None, help="task data file or folder (default: "
                        "$CODEDIFF_DATA, then files shipped in packages)")
    parser.add_argument("--format", default=None, help="prompt format the samples were made "
                        "with (default: samples.meta.json beside the samples, else the task's)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per sample "
                        "(default: the task's)")
    parser.add_argument("--min-time-limit", type=float, default=None, help="+ tasks: seconds "
                        "per test input at least (default: the task's evalplus release's)")
    parser.add_argument("--time-limit-factor", type=float, default=None, help="+ tasks: per-input "
                        "limit as a multiple of the canonical solution's time (default: the task's)")
    parser.add_argument("--no-sanitize", action="store_true",
                        help="judge the raw text as it is (no fence/chatter removal)")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_bytes >> 20,
                        help="address-space limit per sample process")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run model code without bubblewrap (only for trusted samples)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        ks = sorted({int(x) for x in str(args.k).split(",") if x.strip()})
    except ValueError as e:
        raise UserError(f"--k {args.k!r}: give whole numbers like 1,10,100") from e
    if not ks or min(ks) < 1:
        raise UserError(f"--k {args.k!r}: every k must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    task = load_task(args.task, args.data)
    samples = read_samples(args.samples, set(task.by_id()), task.name)
    fmt = args.format or _format_from_meta(args.samples) or task.spec.default_format
    task.format(fmt)  # validates the name
    results = evaluate(task, samples, out=Path(args.out), samples_path=Path(args.samples),
                       ks=ks, workers=args.workers, fmt=fmt, timeout=args.timeout,
                       do_sanitize=not args.no_sanitize, unsafe=args.unsafe_no_sandbox,
                       limits=Limits(memory_bytes=args.memory_mb << 20),
                       min_time_limit=args.min_time_limit,
                       time_limit_factor=args.time_limit_factor,
                       progress=not args.quiet and sys.stderr.isatty())
    print(summary_table(results))
    return 0


def samples_meta(samples_path: str | os.PathLike | None) -> dict:
    """The generation sidecar (`samples.meta.json`) beside a samples file, or {}."""
    if samples_path is None:
        return {}
    meta = Path(samples_path).with_suffix(".meta.json")
    if not meta.is_file():
        return {}
    try:
        out = json.loads(meta.read_text())
    except (ValueError, OSError):
        return {}
    return out if isinstance(out, dict) else {}


def _format_from_meta(samples_path: str) -> str | None:
    return samples_meta(samples_path).get("prompt_format")


def build_program(task: Task, s: Sample, fmt: str, do_sanitize: bool) -> tuple[str, list[str]]:
    problem = task.by_id()[s.task_id]
    completion_mode = s.solution is None and task.format(fmt).program == "prompt+completion"
    prompt = problem.prompt if completion_mode else ""
    if not do_sanitize:
        return task.program_for(problem, completion=s.completion, solution=s.solution,
                                fmt=fmt), []
    result = sanitize(s.raw, entry_point=problem.entry_point, prompt=prompt,
                      completion=completion_mode, stop=task.stop_sequences(fmt),
                      test_names=names_used(problem.test) if problem.test else None)
    return result.program, result.notes


def evaluate(task: Task, samples: list[Sample], *, out: Path, samples_path: Path | None = None,
             ks: list[int] = (1, 10, 100), workers: int | None = None, fmt: str | None = None,
             timeout: float | None = None, do_sanitize: bool = True, unsafe: bool = False,
             limits: Limits | None = None, progress: bool = False,
             min_time_limit: float | None = None, time_limit_factor: float | None = None) -> dict:
    fmt = fmt or task.spec.default_format
    t0 = time.time()
    samples_sha = file_sha256(samples_path) if samples_path else ""
    identity = {"task": task.name, "dataset_sha256": task.dataset.sha256,
                "samples_sha256": samples_sha, "prompt_format": fmt, "sanitize": do_sanitize}
    judge = Judge(task, workers=workers, limits=limits, unsafe=unsafe, timeout=timeout,
                  min_time_limit=min_time_limit, time_limit_factor=time_limit_factor)
    if task.spec.differential:  # the per-input limits decide verdicts: a resume must match them
        identity.update(min_time_limit=judge.min_time_limit,
                        time_limit_factor=judge.time_limit_factor)
    done = _open_store(out, identity)
    judge.prepare(progress=progress)
    by_key = {f"{s.task_id}#{s.completion_id}": s for s in samples}
    todo = [key for key in by_key if key not in done]
    programs: dict[str, tuple[str, list[str]]] = {}
    made: dict[tuple[str, str], tuple[str, list[str]]] = {}  # identical samples: sanitise once

    def jobs():
        for key in todo:
            s = by_key[key]
            ident = (s.task_id, s.raw if s.solution is None else "\0" + s.raw)
            if ident not in made:
                made[ident] = build_program(task, s, fmt, do_sanitize)
            programs[key] = made[ident]
            yield Job(key, s.task_id, programs[key][0])

    from tqdm import tqdm

    bar = tqdm(total=len(by_key), initial=len(by_key) - len(todo), desc=f"judging {task.name}",
               unit="sample", disable=not progress)
    with open(out / "executions.jsonl", "a", encoding="utf-8") as log:
        for job, verdict in judge.run(jobs()):
            s = by_key[job.key]
            program, notes = programs[job.key]
            row = {"task_id": s.task_id, "completion_id": s.completion_id,
                   "status": verdict.get("status", "crash"), "detail": verdict.get("detail", ""),
                   "seconds": verdict.get("seconds", 0.0)}
            if "base_status" in verdict:
                row["base_status"] = verdict["base_status"]
                row["plus_status"] = verdict["plus_status"]
            row.update(sanitizer=notes, program=program, raw=s.raw)
            log.write(json.dumps(row) + "\n")
            log.flush()
            done[job.key] = row
            bar.update(1)
    bar.close()
    results = _aggregate(task, samples, done, ks)
    results.update(
        prompt_format=fmt,
        samples={"file": samples_path.name if samples_path else "", "sha256": samples_sha,
                 "count": len(samples)},
        harness={"version": HARNESS_VERSION, "sandbox": "none" if unsafe else "bubblewrap",
                 "workers": judge.workers, "sanitize": do_sanitize,
                 "timeout": judge.timeout, "limits": vars(judge.limits),
                 **({"evalplus_version": task.spec.evalplus_version,
                     "min_time_limit": judge.min_time_limit,
                     "time_limit_factor": judge.time_limit_factor}
                    if task.spec.differential else {}),
                 "sanitizer_changed": _sanitizer_changed(task, samples, done, fmt)},
        generation=samples_meta(samples_path),
        dataset_notes=judge.notes,
        wall_seconds=round(time.time() - t0, 3),
    )
    _write_json_atomic(out / "results.json", results)
    return results


def _sanitizer_changed(task: Task, samples: list[Sample], rows: dict[str, dict], fmt: str) -> int:
    """How many samples were judged as code other than the raw program (0 with --no-sanitize);
    trailing spaces and blank lines the sanitiser tidies away do not count."""
    def norm(text: str) -> list[str]:
        return [ln.rstrip() for ln in text.splitlines() if ln.strip()]

    by_id = task.by_id()
    return sum(norm(rows[f"{s.task_id}#{s.completion_id}"].get("program") or "") != norm(
        task.program_for(by_id[s.task_id], completion=s.completion, solution=s.solution,
                         fmt=fmt)) for s in samples)


def _open_store(out: Path, identity: dict) -> dict[str, dict]:
    """Create or resume a results dir; return the verdicts already on disk."""
    out.mkdir(parents=True, exist_ok=True)
    ident_path = out / "run.json"
    if ident_path.is_file():
        old = json.loads(ident_path.read_text())
        if {k: old.get(k) for k in identity} != identity:
            raise UserError(f"--out {out} holds results for other samples or settings; "
                            "choose a new --out or delete that folder")
    else:
        _write_json_atomic(ident_path, {"schema": "codediff.results-run/1", **identity})
    done: dict[str, dict] = {}
    log = out / "executions.jsonl"
    if log.is_file():
        raw = log.read_bytes()
        good_end = raw.rfind(b"\n") + 1  # a line cut by a kill is dropped and re-judged
        if good_end < len(raw):
            with open(log, "r+b") as f:
                f.truncate(good_end)
        for line in raw[:good_end].decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[f"{row['task_id']}#{row['completion_id']}"] = row
    return done


def _aggregate(task: Task, samples: list[Sample], rows: dict[str, dict], ks: list[int]) -> dict:
    differential = task.spec.differential
    per_task: dict[str, dict] = {}
    for s in samples:
        row = rows[f"{s.task_id}#{s.completion_id}"]
        t = per_task.setdefault(s.task_id, {"n": 0, "base": 0, "plus": 0})
        t["n"] += 1
        if differential:
            base_ok = row.get("base_status") == "passed"
            t["base"] += base_ok
            t["plus"] += base_ok and row.get("plus_status") == "passed"
        else:
            t["base"] += row["status"] == "passed"
    ns = [t["n"] for t in per_task.values()]
    ks_ok = reportable_ks(ns, ks)
    phases = ("base", "plus") if differential else ("base",)
    overall = {ph: {} for ph in phases}
    for ph in phases:
        for k in ks_ok:
            vals = [pass_at_k(t["n"], t[ph], k) for t in per_task.values()]
            overall[ph][f"pass@{k}"] = sum(vals) / len(vals)
        for _tid, t in per_task.items():
            t.setdefault("pass_at_k", {})[ph] = {f"pass@{k}": pass_at_k(t["n"], t[ph], k)
                                                  for k in ks_ok}
    status = Counter(rows[f"{s.task_id}#{s.completion_id}"]["status"] for s in samples)
    breakdown = {"all": {st: status.get(st, 0) for st in STATUSES}}
    if differential:
        for ph in phases:
            c = Counter(rows[f"{s.task_id}#{s.completion_id}"].get(f"{ph}_status", "failed")
                        for s in samples)
            breakdown[ph] = {st: c.get(st, 0) for st in STATUSES}
    missing_tasks = len(task.problems) - len(per_task)
    return {
        "schema": RESULTS_SCHEMA,
        "task": task.name,
        "dataset": task.dataset.as_dict(),
        "problems": len(task.problems),
        "problems_with_samples": len(per_task),
        "problems_without_samples": missing_tasks,
        "n_per_task": {"min": min(ns), "max": max(ns)},
        "k": ks_ok,
        "k_dropped": [k for k in ks if k not in ks_ok],
        "pass_at_k": overall,
        "status_counts": breakdown,
        "per_task": per_task,
    }


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def summary_table(r: dict) -> str:
    lines = [f"task {r['task']}  ({r['dataset']['name']} {r['dataset']['version']}, "
             f"sha256 {r['dataset']['sha256'][:12]})",
             f"samples {r['samples']['count']}  problems {r['problems_with_samples']}/"
             f"{r['problems']}  n/task {r['n_per_task']['min']}-{r['n_per_task']['max']}  "
             f"wall {r['wall_seconds']:.1f}s"]
    head = f"{'':8}" + "".join(f"{k:>10}" for k in (f"pass@{k}" for k in r["k"]))
    lines.append(head)
    for ph, vals in r["pass_at_k"].items():
        lines.append(f"{ph:8}" + "".join(f"{100 * v:9.2f}%" for v in vals.values()))
    h = r.get("harness", {})
    if h.get("sanitize"):
        lines.append(f"sanitiser changed {h.get('sanitizer_changed', 0)} of "
                     f"{r['samples']['count']} samples (--no-sanitize judges the raw text)")
    sc = r["status_counts"]["all"]
    lines.append("status  " + "  ".join(f"{k} {v}" for k, v in sc.items() if v))
    if r["k_dropped"]:
        lines.append(f"(pass@{','.join(map(str, r['k_dropped']))} left out: fewer samples per "
                     "task than k)")
    for note in r.get("dataset_notes", [])[:5]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
