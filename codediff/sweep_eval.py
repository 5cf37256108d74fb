"""Score every kept checkpoint of a sweep cell (`codediff sweep --stage eval`).

Per checkpoint, one JSON file (`cells/<id>/eval/tokens-<N>.json`, schema codediff.sweep-eval/1)
holding each metric as {"value", "stderr", "settings", "seconds", ...}:

- `val_loss`: nats/token on the cell's validation windows (AR NLL, MDM negative ELBO), the
  number `codediff train` logged at that step when it validated there, else computed the same
  way (same windows, batch, masking draws and seed).
- `codechoice`: accuracy on the code-choice set (AR exact log-likelihood, MDM coupled ELBO), with
  its binomial standard error.
- any task name, or `task:format` for one of its prompt formats: pass@1 of one greedy sample
  per problem (`codediff generate`, then `codediff evaluate` in its sandbox), generic over the
  task: the infilling tasks (`:prefix`, `:infill`), or `humaneval`. `task_limit` takes that
  many problems spread evenly over the task. An `infill` prompt for an `ar` model trained
  without fill-in-the-middle is recorded as skipped (value null, the reason).

The model is loaded once per checkpoint and every metric reuses it; the file is rewritten after
each metric, so a killed evaluation redoes at most one metric of one checkpoint.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from codediff.errors import UserError
from codediff.formats import (
    SWEEP_EVAL_SCHEMA,
    atomic_write_json,
    identity_diff,
    read_json_or_none,
)
from codediff.sweep import cell_dir, cell_state
from codediff.sweep_spec import Spec


def _settings_check(path: Path, name: str, old: dict, new: dict) -> None:
    diffs = identity_diff({"settings": old}, {"settings": new}, ["settings"])
    if diffs:
        raise UserError(f"{path}: {name} was scored with other settings (" + "; ".join(diffs[:4])
                        + "); restore the spec's [eval] or remove that file to score anew")


def _val_windows(corpus_dir: Path, seq_len: int, val_tokens: int):
    from codediff.data import open_corpus, val_windows

    c = open_corpus(corpus_dir)
    return val_windows(c.val, seq_len, val_tokens), c


def evaluate_cell(spec: Spec, out: Path, cell_id: str, *, device: str | None = None,
                  progress: bool = False, unsafe_no_sandbox: bool = False) -> int:
    """Score the cell's checkpoints that lack a metric; returns how many it scored."""
    import torch

    from codediff.checkpoints import load_checkpoint

    d = cell_dir(out, cell_id)
    cell = read_json_or_none(d / "cell.json")
    run = read_json_or_none(d / "run" / "run.json")
    if cell is None or run is None:
        raise UserError(f"cell {cell_id}: not trained yet in {out}; run the sweep's train stage "
                        "first")
    ev = spec.eval
    metrics = ev.metrics
    st = cell_state(out, cell_id, metrics)
    todo = [n for n in st["checkpoints"] if n not in st["evaluated"]
            and (d / "run" / "checkpoints" / n).is_dir()]
    if not todo:
        return 0
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    logged = {}
    for line in (d / "run" / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "val_loss" in r:
            logged[r["step"]] = r["val_loss"]
    train = run["train"]
    val_settings = {"val_tokens": train["val_tokens"], "seq_len": run["seq_len"],
                    "mdm_val_samples": train["mdm_val_samples"], "val_seed": train["val_seed"],
                    "val_batch": train.get("val_batch") or run.get("micro_batch")}
    windows = corpus = None
    rows = None
    manifest = read_json_or_none(out / "sweep.json") or {}
    sweep_eval = manifest.get("eval") or {}
    if ev.codechoice:
        from codediff.codechoice_score import read_choices

        # a file inside the sweep dir is recorded relative to it; one the spec names elsewhere
        # relative to the folder codediff runs in (as the spec gave it)
        f = Path(manifest["codechoice"]["file"])
        cc_file = out / f if not f.is_absolute() and (out / f).is_file() else f
        rows = read_choices(cc_file)[: ev.codechoice.limit]
    written = 0
    for name in todo:
        ck = d / "run" / "checkpoints" / name
        path = d / "eval" / f"{name}.json"
        rec = read_json_or_none(path) or {}
        model, tok, meta = load_checkpoint(ck, device=device)
        model.eval()
        rec.update({"schema": SWEEP_EVAL_SCHEMA, "cell": cell_id, "checkpoint": name,
                    "objective": meta["objective"], "tokens": meta["tokens"],
                    "epochs": meta.get("epochs"), "step": meta.get("step")})
        have = rec.setdefault("metrics", {})
        save = _saver(path, rec, f"{cell_id} {name}" if progress else None)

        # ---- validation loss
        if ev.val_loss:
            if "val_loss" in have:
                _settings_check(path, "val_loss", have["val_loss"].get("settings", {}),
                                val_settings)
            else:
                t0 = time.time()
                step = meta.get("step")
                if step in logged:
                    save("val_loss", {"value": logged[step], "stderr": None,
                                      "source": "metrics.jsonl", "settings": val_settings,
                                      "seconds": 0.0})
                else:
                    if windows is None:
                        windows, corpus = _val_windows(out / cell["corpus"], run["seq_len"],
                                                       train["val_tokens"])
                    v = _val_loss(model, windows, meta, corpus, val_settings, device)
                    save("val_loss", {"value": v, "stderr": None, "source": "computed",
                                      "settings": val_settings,
                                      "seconds": round(time.time() - t0, 2)})
        # ---- code choice
        if ev.codechoice:
            cc = ev.codechoice
            settings = sweep_eval.get("codechoice") or {}
            if "codechoice" in have:
                _settings_check(path, "codechoice", have["codechoice"].get("settings", {}),
                                settings)
            else:
                from codediff.codechoice_score import score_choices

                t0 = time.time()
                res = score_choices(model, tok, meta, rows, samples=cc.mc_samples, seed=cc.seed,
                                    batch_size=cc.batch_size)
                save("codechoice", {"value": res["accuracy"], "stderr": res["stderr"],
                                    "n": res["n"], "method": res["method"],
                                    "samples": res["samples"], "chance": res["chance"],
                                    "accuracy_per_token": res["accuracy_per_token"],
                                    "settings": settings,
                                    "seconds": round(time.time() - t0, 2)})
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        # ---- execution-judged tasks (generation loads the checkpoint itself)
        for task in ev.tasks:
            settings = sweep_eval.get(task) or {"limit": ev.task_limit,
                                                "generate": ev.generate}
            if task in have:
                _settings_check(path, task, have[task].get("settings", {}), settings)
                continue
            t0 = time.time()
            skip = _cannot_infill(task, meta)
            if skip:
                save(task, {"value": None, "stderr": None, "skipped": skip,
                            "settings": settings, "seconds": 0.0})
                continue
            save(task, {**pass_at_1(ck, task, d / "eval" / name / task.replace(":", "-"),
                                    ev.task_limit, ev.generate, device, progress,
                                    unsafe_no_sandbox),
                        "settings": settings, "seconds": round(time.time() - t0, 2)})
        if progress:
            got = ", ".join(f"{k} {v['value']:.4g}" for k, v in have.items()
                            if v.get("value") is not None)
            print(f"{cell_id} {name}: {got}", file=sys.stderr, flush=True)
        written += 1
    return written


def _saver(path: Path, rec: dict, say: str | None = None):
    """save(metric, value): put one metric into the checkpoint's record and rewrite the file
    (atomically), so a kill loses at most the metric being computed. With `say` (the cell and
    checkpoint), one line per metric as it lands: what a sweep's eval.log shows."""
    def save(metric: str, value: dict) -> None:
        rec["metrics"][metric] = value
        atomic_write_json(path, rec)
        if say is not None:
            v = value.get("value")
            got = (f"skipped ({value['skipped']})" if value.get("skipped") else
                   "no value" if v is None else f"{v:.4g}")
            print(f"{say}: {metric} {got} ({value.get('seconds', 0):.1f} s)", file=sys.stderr,
                  flush=True)
    return save


def _val_loss(model, windows, meta: dict, corpus, s: dict, device: str) -> float:
    import torch

    from codediff.objectives import ar_nll, mdm_neg_elbo

    x = torch.from_numpy(windows).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None
    with torch.no_grad():
        if amp is not None:
            amp.__enter__()
        try:
            if meta["objective"] == "ar":
                return ar_nll(model, x, s["val_batch"])
            return mdm_neg_elbo(model, x, s["val_batch"], corpus.mask_id, s["mdm_val_samples"],
                                seed=s["val_seed"])
        finally:
            if amp is not None:
                amp.__exit__(None, None, None)


def split_task(entry: str) -> tuple[str, str | None]:
    """`task` or `task:format` (an eval.tasks entry) -> (task, prompt format or None)."""
    task, _, fmt = entry.partition(":")
    return task, (fmt or None)


def _cannot_infill(entry: str, meta: dict) -> str:
    """Why a checkpoint cannot be scored on this entry ("" if it can): an `infill` prompt needs
    an `mdm` model or an `ar` model trained with fill-in-the-middle (codediff.generate refuses
    the rest), so such a metric is recorded as skipped, not failed."""
    _, fmt = split_task(entry)
    if fmt == "infill" and meta.get("objective") == "ar" and not (meta.get("fim_rate") or 0) > 0:
        return "ar model trained without fill-in-the-middle (fim_rate 0): no infill prompt"
    return ""


def spread(ids: list[str], limit: int | None) -> list[str] | None:
    """`limit` task ids spread evenly over the task's order (None: all of them). The first N
    would be a few HumanEval problems' holes; every (len/N)-th covers the whole set."""
    if limit is None or limit >= len(ids):
        return None
    return [ids[(i * len(ids)) // limit] for i in range(limit)]


def pass_at_1(checkpoint: Path, entry: str, folder: Path, limit: int | None,
              generate: dict[str, Any], device: str, progress: bool,
              unsafe_no_sandbox: bool = False) -> dict[str, Any]:
    """pass@1 of one greedy sample per problem: `codediff generate` in this process (the model
    is small; generation resumes a partial file), then `codediff evaluate` in its own process
    (the judge's sandbox; resumes its results dir)."""
    from dataclasses import fields

    from codediff.config import GenerateConfig
    from codediff.generate import run_generate
    from codediff.harness.tasks import load_task

    task, fmt = split_task(entry)
    folder.mkdir(parents=True, exist_ok=True)
    samples = folder / "samples.jsonl"
    # one [eval.generate] table serves both kinds: keep the options of this model's kind
    meta = json.loads((checkpoint / "config.json").read_text()).get("codediff") or {}
    kind = "ar" if meta.get("objective") == "ar" else "dlm"
    kinds = {f.name: f.metadata.get("kind") for f in fields(GenerateConfig)}
    opts = {"batch_size": 64, **{k: v for k, v in generate.items() if kinds.get(k) in (None, kind)}}
    if fmt is not None:
        opts["prompt_format"] = fmt
    ids = spread([p.task_id for p in load_task(task).problems], limit)
    cfg = GenerateConfig(model=str(checkpoint), task=task, out=str(samples), n=1,
                         task_ids=ids, device=device, progress=False, **opts)
    cfg.explicit = set(opts) | {"n", "device"} | ({"task_ids"} if ids else set())
    run_generate(cfg)
    results = folder / "results"
    cmd = [sys.executable, "-m", "codediff.cli", "evaluate", "--task", task, "--samples",
           str(samples), "--out", str(results), "--k", "1", "--no-progress"]
    if unsafe_no_sandbox:
        cmd.append("--unsafe-no-sandbox")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(f"judging {samples} failed: "
                        + (r.stderr.strip().splitlines() or ["?"])[-1])
    res = json.loads((results / "results.json").read_text())
    pk = res["pass_at_k"]
    phase = "plus" if "plus" in pk else "base"
    v = pk[phase]["pass@1"]
    n = res.get("problems_with_samples") or 1
    return {"value": v, "stderr": math.sqrt(v * (1 - v) / n), "n": n, "phase": phase,
            "dataset_sha256": (res.get("dataset") or {}).get("sha256")}
