"""`codediff generate`: sample completions for a task and write samples.jsonl + samples.meta.json.

Work is a list of jobs (problem, completion_id), problems in task order with their n samples
side by side, so a batch mostly holds one prompt (no padding). Each job has its own random
generator seeded from (seed, task_id, completion_id): a sample does not depend on its batch,
on resuming or on how many GPUs shared the work.

Resuming: finished samples are appended (flushed and fsynced per batch) to `<out>.partial`
(`<out>.partial.rank<r>` under torchrun) together with `<out>.partial.meta.json`, the settings
they were made with. Rerunning the same command skips the jobs already there. When every job is
done the samples are merged in task order into `<out>` and the sidecar is written, both
atomically, and the partial files are removed.

Under `torchrun` (WORLD_SIZE > 1) each rank takes every WORLD_SIZE-th problem, and rank 0
merges once all ranks are done (a gloo barrier).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from codediff import __version__
from codediff.config import GenerateConfig
from codediff.errors import UserError, is_out_of_memory
from codediff.formats import (
    IDENTITIES,
    IDENTITY_IGNORES,
    SAMPLES_SCHEMA,
    JsonlStore,
    atomic_write_json,
    identity_diff,
    samples_meta,
)

if TYPE_CHECKING:
    from codediff.backends import Backend
    from codediff.infill import InfillPlan
    from codediff.sampling.common import Sample
    from codediff.sampling.dlm import DLMSettings


@dataclass
class Job:
    index: int          # position in the final file
    problem_index: int
    task_id: str
    completion_id: int
    prompt: str
    suffix: str = ""       # infill prompts: the text after the hole
    fill_tokens: int = 0   # --infill-length oracle: the reference fill's tokens (mdm masks)


# ----------------------------------------------------------------------------- paths

def meta_path(out: str | os.PathLike) -> Path:
    """samples.jsonl -> samples.meta.json (the judge looks for it the same way)."""
    return Path(out).with_suffix(".meta.json")


def _partial(out: Path, rank: int, world: int) -> Path:
    return out.with_name(out.name + (".partial" if world == 1 else f".partial.rank{rank}"))


def _partial_meta(out: Path) -> Path:
    return out.with_name(out.name + ".partial.meta.json")


def _partials(out: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(glob.escape(str(out)) + ".partial")
                  + glob.glob(glob.escape(str(out)) + ".partial.rank*"))


def _partial_store(out: Path, rank: int, world: int, header: dict | None = None) -> JsonlStore:
    """This rank's partial samples, under the identity in `<out>.partial.meta.json` (shared
    by all ranks; formats.IDENTITIES["samples"] lists its fields)."""
    return JsonlStore(_partial(out, rank, world), kind="samples", header_path=_partial_meta(out),
                      header=header, noun="an unfinished run with other settings",
                      fix="rerun with its options, or pass --overwrite")


def _fingerprint(ident: dict, legacy: bool = False) -> str:
    """sha256 of the identity, the device left out (torchrun ranks, and a resumed run, may use
    other GPUs) and the training corpus's U. `legacy`: as codediff computed it when the model's `epoch_tokens` was called
    `unique_tokens` (samples/1)."""
    # the corpus's U (checkpoint/2) is left out too: a fact about the training data that the
    # checkpoint already fixes, added after outputs with this fingerprint existed
    model = {k: v for k, v in ident["model"].items() if k not in ("device", "unique_tokens")}
    if legacy and "epoch_tokens" in model:
        model["unique_tokens"] = model.pop("epoch_tokens")
    stable = {**ident, "model": model}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


def _json_or_empty(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_rows(path: Path) -> list[dict]:
    """Complete JSON lines of a partial file (a torn last line from a kill is ignored)."""
    return JsonlStore(path).rows()


def _sidecar_model(ident: dict, backend: Any) -> dict:
    """The model record of a finished sidecar: the identity's, with `params` counting every
    parameter as run.json does. (The identity, and so the fingerprint, keeps the count without
    embedding and head that the FLOPs estimate uses: changing it would orphan finished runs.)"""
    return {**ident["model"], "params": backend.num_params()}


def _finished_differences(old: dict, ident: dict, model: dict, out: Path) -> list[str]:
    """What differs between a finished sidecar (either layout) and this run, compared like
    with like: `model` is this run's record as a sidecar keeps it (_sidecar_model), and the
    problems are the sidecar's count and the task ids in the samples file. Empty: the same run
    (its fingerprint may still differ, e.g. computed by another codediff version)."""
    old = samples_meta(old)
    old_model = old.get("model") if isinstance(old.get("model"), dict) else {}
    if old_model.get("params") is not None and old_model["params"] == ident["model"]["params"]:
        # sidecars written before model.params counted every parameter hold the identity's count
        model = {**model, "params": ident["model"]["params"]}
    fields = [f for f in IDENTITIES["samples"] if f != "problems"]  # the sidecar counts them
    # what the fingerprint leaves out (_fingerprint) is no difference here either
    ignore = (*IDENTITY_IGNORES["samples"], "model.unique_tokens")
    diffs = identity_diff(old, {**ident, "model": model}, fields, ignore=ignore)
    problems = ident["problems"]
    if old.get("problems") != len(problems):
        diffs.append(f"problems ({old.get('problems')} -> {len(problems)})")
    elif not diffs:  # as many problems: the samples file says which (read only when it decides)
        written = list(dict.fromkeys(r.get("task_id") for r in JsonlStore(out).rows()))
        if written != problems:
            # the first place they part (one may be a prefix of the other)
            i = next((k for k, (a, b) in enumerate(zip(written, problems, strict=False))
                      if a != b), min(len(written), len(problems)))
            was = written[i] if i < len(written) else "missing"
            now = problems[i] if i < len(problems) else "missing"
            diffs.append(f"problems (other task ids: {was} -> {now})")
    return diffs


# ----------------------------------------------------------------------------- settings

def _job_seed(seed: int, task_id: str, completion_id: int) -> int:
    h = hashlib.sha256(f"{seed}/{task_id}/{completion_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _sample_seed(cfg: GenerateConfig, job: Job) -> int:
    """A sample's generator seed: from (seed, task_id, completion_id), so a sample depends on
    nothing else; with --reference-rng --seed itself, as torch.manual_seed(seed) before the
    reference call seeds its global generator."""
    if cfg.reference_rng:  # a DLM option (refused for AR models)
        return cfg.seed
    return _job_seed(cfg.seed, job.task_id, job.completion_id)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def validate(cfg: GenerateConfig) -> None:
    """Reject bad options before anything is loaded or written (the bounds and choices of
    each option live in codediff.config.GenerateConfig)."""
    from codediff import options
    from codediff.sampling import RANDOM_SAMPLERS, SAMPLERS, STEP_RULES

    options.check(cfg)
    if cfg.gen_length % cfg.block_length:
        raise UserError(f"--gen-length {cfg.gen_length} must be a positive multiple of "
                        f"--block-length {cfg.block_length}")
    blocks = cfg.gen_length // cfg.block_length
    steps = cfg.gen_length if cfg.steps is None else cfg.steps
    fixed_steps = SAMPLERS[cfg.sampler][1] in STEP_RULES
    if fixed_steps and (steps < blocks or steps % blocks):
        raise UserError(f"--steps {steps} must be a positive multiple of the number of blocks "
                        f"({blocks} = gen-length / block-length)")
    # a sampler's own knob given with another sampler would be silently ignored
    for name, owner in (("tau", "threshold"), ("factor", "factor"),
                        ("gamma", "entropy_bounded")):
        if name in cfg.explicit and cfg.sampler != owner:
            raise UserError(f"--{name} applies to --sampler {owner} only (this run uses "
                            f"--sampler {cfg.sampler}); drop --{name} or pass --sampler {owner}")
    if "factor_rule" in cfg.explicit and cfg.sampler != "factor":
        raise UserError(f"--factor-rule applies to --sampler factor only (this run uses "
                        f"--sampler {cfg.sampler}); drop --factor-rule")
    if "step_schedule" in cfg.explicit and cfg.sampler == "origin":
        raise UserError("--step-schedule does not apply to --sampler origin (it commits each "
                        "mask with probability 1 - s/t over Dream's timesteps): drop "
                        "--step-schedule")
    if "step_schedule" in cfg.explicit and SAMPLERS[cfg.sampler][1] != "schedule":
        raise UserError(f"--step-schedule applies to the fixed-schedule samplers only; --sampler "
                        f"{cfg.sampler} decides its own steps: drop --step-schedule")
    if "steps" in cfg.explicit and not fixed_steps:
        raise UserError(f"--steps applies to the fixed-schedule samplers only; --sampler "
                        f"{cfg.sampler} decides its own steps: drop --steps")
    if cfg.reference_rng:
        if cfg.sampler not in RANDOM_SAMPLERS:
            raise UserError(f"--reference-rng applies to --sampler {' / '.join(RANDOM_SAMPLERS)} "
                            f"only (--sampler {cfg.sampler} draws no random numbers at "
                            f"--temperature 0): drop --reference-rng")
        if cfg.temperature != 0:
            raise UserError("--reference-rng reproduces the references' random numbers at "
                            "--temperature 0 only (their sampling noise is drawn otherwise): "
                            "use --temperature 0 or drop --reference-rng")
        if cfg.n > 1:
            raise UserError(f"--reference-rng seeds every sample with --seed itself, so -n "
                            f"{cfg.n} would repeat one sample: use -n 1 (and other --seed "
                            f"values for more samples) or drop --reference-rng")
    options.check_out(cfg.out, folder=False, overwrite=cfg.overwrite, reusable=True)
    options.check_device(cfg.device)


def _with_budget(cfg: GenerateConfig, plan: InfillPlan | None, mode: str) -> GenerateConfig:
    """The run's settings with the answer budget of its hole kind (codediff.infill.BUDGETS)
    where the user gave none."""
    if plan is None or plan.budget is None:
        return cfg
    if mode == "ar":
        return replace(cfg, max_new_tokens=plan.budget)
    out = replace(cfg, gen_length=plan.budget)
    validate(out)  # the budget must still split into blocks
    return out


def settings_of(cfg: GenerateConfig, mode: str) -> dict[str, Any]:
    """The options that decide the samples (what a resumed run must share)."""
    from codediff.sampling import SAMPLERS

    s: dict[str, Any] = {"mode": mode, "seed": cfg.seed, "n": cfg.n,
                         "token_healing": cfg.token_healing}
    if mode == "ar":
        s.update(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 top_p=cfg.top_p, top_k=cfg.top_k, kv_cache=cfg.kv_cache)
    else:
        s.update(sampler=cfg.sampler, gen_length=cfg.gen_length, block_length=cfg.block_length,
                 steps=cfg.gen_length if cfg.steps is None else cfg.steps,
                 temperature=cfg.temperature, cache=cfg.cache,
                 logits_eos_inf=cfg.logits_eos_inf, confidence_eos_inf=cfg.confidence_eos_inf,
                 early_stop=cfg.early_stop)
        if cfg.sampler == "threshold":
            s["tau"] = cfg.tau
        if cfg.sampler == "factor":
            s["factor"] = cfg.factor
            if cfg.factor_rule != "stated":  # absent by default: older runs resume as before
                s["factor_rule"] = cfg.factor_rule
        if cfg.step_schedule != "even" and SAMPLERS[cfg.sampler][1] == "schedule":
            s["step_schedule"] = cfg.step_schedule
        if cfg.sampler == "entropy_bounded":
            s["gamma"] = cfg.gamma
        if cfg.reference_rng:  # absent by default: older runs resume as before
            s["reference_rng"] = True
    recipe = _recipe_task(cfg)
    if recipe is not None:  # only then: fingerprints of runs without a recipe stay as they were
        s["recipe"] = cfg.recipe
        if recipe.style == "chat":
            s["prompt"] = {"style": "chat", "system": recipe.system, "user": recipe.user,
                           "assistant_prefix": recipe.assistant_prefix}
        if recipe.stop is not None:
            s["stop"] = list(recipe.stop)
    return s


def _recipe_task(cfg: GenerateConfig) -> Any:
    """The recipe's settings for this task (codediff.recipe.TaskRecipe), or None."""
    r = cfg.extra.get("recipe")
    return r.for_task(cfg.task) if r is not None else None


def _prompt_text(task: Any, problem: Any, fmt: str, recipe: Any, backend: Any,
                 name: str | None) -> str:
    """The task's prompt, or a chat recipe's: the tokenizer's chat template over its messages."""
    if recipe is None or recipe.style != "chat":
        return task.prompt_for(problem, fmt)
    from codediff.harness.tasks import _fields
    from codediff.recipe import chat_prompt

    return chat_prompt(backend.tokenizer, recipe, _fields(problem), f"recipe {name}")


def environment(backend: Any) -> dict[str, Any]:
    """Library versions and the accelerator a run used (the sidecar's `environment`)."""
    import importlib.metadata as md
    import platform

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    dev = getattr(backend, "device", None)
    gpu = None
    if isinstance(dev, torch.device) and dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev)
    return {"codediff": __version__, "torch": torch.__version__,
            "transformers": version("transformers"), "python": platform.python_version(),
            "device": str(dev) if dev is not None else None, "gpu": gpu}


# ----------------------------------------------------------------------------- main

@dataclass(frozen=True)
class Generated:
    """What `generate_samples` did: the samples file, and whether this call wrote it (False:
    it was already complete with these settings, and nothing was touched)."""

    out: Path
    written: bool


def run_generate(cfg: GenerateConfig) -> Path:
    """Generate (or finish generating) cfg.out; returns its path."""
    return generate_samples(cfg).out


def generate_samples(cfg: GenerateConfig) -> Generated:
    """Generate (or finish generating) cfg.out; says whether anything was written."""
    validate(cfg)
    from codediff.harness.tasks import load_task

    task = load_task(cfg.task, cfg.data)
    fmt = task.format(cfg.prompt_format)
    stops = task.stop_sequences(fmt.name)
    recipe = _recipe_task(cfg)
    if recipe is not None and recipe.stop is not None:  # the published stop sequences
        stops = list(recipe.stop)
    problems = task.problems
    if cfg.task_ids:
        wanted = set(cfg.task_ids)
        unknown = wanted - {p.task_id for p in problems}
        if unknown:
            raise UserError(f"--task-ids: {sorted(unknown)[:3]} not in task {task.name}")
        problems = [p for p in problems if p.task_id in wanted]
    if cfg.limit is not None:
        problems = problems[: cfg.limit]
    out = Path(cfg.out)
    rank, world = _distributed()

    from codediff.backends import load_backend

    backend = load_backend(cfg.model, backend=cfg.backend, kind=cfg.kind,
                           convention=cfg.convention, mask_id=cfg.mask_id, device=cfg.device,
                           dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    mode = backend.kind
    if mode == "dlm" and cfg.cache != "none" and not backend.dlm_cache:
        raise UserError(f"{cfg.model}: this model has no KV cache for diffusion steps; "
                        "use --cache none")
    from codediff.options import check_kind

    check_kind(GenerateConfig, cfg.explicit, mode, cfg.model)
    if recipe is not None and cfg.extra["recipe"].kind != mode:
        raise UserError(f"recipe {cfg.recipe} is for {cfg.extra['recipe'].kind} models and "
                        f"{cfg.model} runs as {mode}; choose a recipe for this model")
    plan, sentinels, stops = _infill_setup(cfg, task, fmt, backend, mode, stops)
    cfg = _with_budget(cfg, plan, mode)
    if plan is None or plan.length_rule != "oracle":  # oracle: checked per problem
        _prompt_budget(cfg, backend, mode)  # the answer must fit the context: check first
    settings = settings_of(cfg, mode)
    if plan is not None:  # ordinary tasks keep their settings (and fingerprints) as they were
        settings["infill"] = plan.settings()
    ident = {"model": backend.describe(), "task": task.name, "dataset": task.dataset.as_dict(),
             "prompt_format": fmt.name, "problems": [p.task_id for p in problems],
             "settings": settings}
    fingerprint = _fingerprint(ident)
    # what codediff wrote before `epoch_tokens` had its own name: the same run
    legacy = {fingerprint, _fingerprint(ident, legacy=True)}

    # ---- already finished, or a different run in the way?
    if out.exists() and meta_path(out).exists() and not cfg.overwrite:
        old = _json_or_empty(meta_path(out))
        diffs = ([] if old.get("fingerprint") in legacy
                 else _finished_differences(old, ident, _sidecar_model(ident, backend), out))
        if diffs:
            raise UserError(f"{out} exists from a run with other settings ("
                            + "; ".join(diffs[:6]) + "); pass --overwrite or choose another "
                            "--out")
        if rank == 0:
            print(f"{out}: already complete ({old.get('samples')} samples with these "
                  "settings); nothing was written (--overwrite generates it again)",
                  file=sys.stderr)
        return Generated(out, written=False)
    pmeta = _partial_meta(out)
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)  # validated above; now we write
    _barrier(world)
    if cfg.overwrite and rank == 0:
        for p in _partials(out):
            p.unlink()
        if pmeta.exists():
            pmeta.unlink()
    _barrier(world)
    header = {"fingerprint": fingerprint, **ident}
    adopt = pmeta.exists() and _json_or_empty(pmeta).get("fingerprint") in legacy - {fingerprint}
    _barrier(world)
    if adopt and rank == 0:  # an unfinished run from before the rename: same settings
        atomic_write_json(pmeta, header)
    _barrier(world)
    store = _partial_store(out, rank, world, header)
    if rank == 0 or pmeta.exists():
        store.claim(f"{out}: {pmeta.name}")
    _barrier(world)
    if rank != 0:
        store.claim(f"{out}: {pmeta.name}")  # written by rank 0 now: checks, never writes

    # ---- jobs
    jobs = []
    for pi, p in enumerate(problems):
        prompt = _prompt_text(task, p, fmt.name, recipe, backend, cfg.recipe)
        suffix = task.suffix_for(p, fmt.name) if plan is not None and plan.infill else ""
        fill = _oracle_tokens(backend, p) if plan is not None and plan.length_rule == "oracle" \
            else 0
        for c in range(cfg.n):
            jobs.append(Job(len(jobs), pi, p.task_id, c, prompt, suffix, fill))
    done = set()
    for path in _partials(out):
        done |= {(r["task_id"], r["completion_id"]) for r in _read_rows(path)}
    mine = [j for j in jobs if j.problem_index % world == rank
            and (j.task_id, j.completion_id) not in done]

    _generate_jobs(cfg, backend, mine, stops, store, mode, show=cfg.progress and rank == 0,
                   plan=plan, sentinels=sentinels)

    _barrier(world)
    if rank == 0:
        _merge(cfg, out, jobs, fingerprint, ident, fmt, stops, backend, world)
    _barrier(world)
    return Generated(out, written=True)


def _generate_jobs(cfg: GenerateConfig, backend: Any, jobs: list[Job], stops: list[str],
                   store: JsonlStore, mode: str, show: bool, plan: InfillPlan | None = None,
                   sentinels: tuple[int, int, int] | None = None) -> None:
    from tqdm import tqdm

    if not jobs:
        return
    tok = backend.tokenizer
    budget = _prompt_budget(cfg, backend, mode)
    bar = tqdm(total=len(jobs), desc=f"generate {mode}", unit="sample", disable=not show,
               dynamic_ncols=True)
    n_tok = 0
    n_sec = 0.0
    with store:  # a torn line from a kill is trimmed first
        for batch in _batches(jobs, cfg.batch_size):
            if plan is None:
                encoded = [tok.encode(j.prompt) for j in batch]
                truncated = [budget if budget is not None and len(e) > budget else None
                             for e in encoded]
                prompts = [e[-budget:] if t else e
                           for e, t in zip(encoded, truncated, strict=True)]
                suffixes = None
            else:
                encoded, prompts, suffixes, truncated = _encode_infill(
                    tok, batch, plan, mode, sentinels, backend)
            try:
                samples = _run_batch(cfg, backend, batch, prompts, stops, mode, suffixes)
            except RuntimeError as e:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(e):
                    raise
                longest = max(len(x) for x in prompts)
                fix = (f"pass a smaller --batch-size (e.g. {cfg.batch_size // 2})"
                       if cfg.batch_size > 1 else
                       "lower --max-new-tokens / --gen-length, or use a larger GPU")
                raise UserError(
                    f"out of memory at --batch-size {cfg.batch_size} (prompts up to {longest} "
                    f"tokens); {fix}; the samples finished so far are kept and the command "
                    "resumes") from None
            if plan is not None and plan.end_rule == "line":
                _end_lines(tok, samples)
            rows = []
            for j, s, e, t in zip(batch, samples, encoded, truncated, strict=True):
                row = {"task_id": j.task_id, "completion_id": j.completion_id,
                       "completion": s.completion, "raw": s.raw, "tokens": s.tokens,
                       "nfe": s.nfe, "tokens_per_forward": round(s.tokens / max(s.nfe, 1), 4),
                       "seconds": round(s.seconds, 6), "flops": s.flops,
                       "stop_reason": s.stop_reason, "prompt_tokens": len(e)}
                if s.extra.get("healed"):
                    row["healed"] = s.extra["healed"]
                if t:
                    row["prompt_truncated_to"] = t
                if plan is not None:
                    if plan.infill:
                        row["suffix_tokens"] = len(tok.encode(j.suffix)) if j.suffix else 0
                    if mode == "dlm":
                        row["answer_budget"] = j.fill_tokens or cfg.gen_length
                rows.append(row)
                n_tok += s.tokens
                n_sec += s.seconds
            store.append(rows, ensure_ascii=False)  # flushed and fsynced per batch
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_tok / max(n_sec, 1e-9):.0f}")
    bar.close()


def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Batches of up to `size` jobs in order; a batch never mixes answer lengths (the oracle
    length of infilling differs per problem)."""
    out: list[list[Job]] = []
    for j in jobs:
        if out and len(out[-1]) < size and out[-1][0].fill_tokens == j.fill_tokens:
            out[-1].append(j)
        else:
            out.append([j])
    return out


def _infill_setup(cfg: GenerateConfig, task: Any, fmt: Any, backend: Any, mode: str,
                  stops: list[str]) -> tuple[InfillPlan | None, tuple[int, int, int] | None,
                                             list[str]]:
    """For a task with holes: the plan (prompt, length rule, budget, end rule), the FIM
    sentinel ids of an `ar` infill run, and the stop sequences with the end rule's. Refuses
    what cannot run, before anything is written."""
    from codediff.infill import plan_for

    if "infill_length" in cfg.explicit and not (getattr(task.spec, "hole", "")
                                                 or getattr(fmt, "suffix", "")):
        raise UserError(f"--infill-length applies to infilling tasks only (task {task.name} has "
                        "no holes); drop it")
    answer = "max_new_tokens" if mode == "ar" else "gen_length"
    plan = plan_for(task, fmt, mode=mode, length_rule=cfg.infill_length,
                    answer_tokens=getattr(cfg, answer), explicit=answer in cfg.explicit)
    if plan is None:
        return None, None, stops
    sentinels = None
    if plan.infill and backend.samples_itself:
        raise UserError(f"--backend {backend.name} samples from prompt text and cannot show a "
                        "suffix; use --backend hf or native, or --prompt-format prefix")
    if plan.infill and mode == "ar":
        sentinels = _ar_infill_sentinels(backend)
    if plan.end_rule == "line" and "\n" not in stops:
        stops = [*stops, "\n"]  # decoding stops at the end of the line (end_of_line keeps it)
    return plan, sentinels, stops


def _ar_infill_sentinels(backend: Any) -> tuple[int, int, int]:
    """(prefix, suffix, middle) sentinel ids of the PSM prompt an `ar` model reads, or a
    UserError naming the fix. The tokenizer is checked first: without the sentinels no
    --fim-rate training can help (it is refused on such a corpus), so "train it with --fim-rate"
    would send the user in a circle. Both spellings count (codediff's, StarCoder's), as
    training accepted them."""
    from codediff.fim import (
        fim_token_ids,
        missing_sentinels_fix,
        run_corpus_manifest,
        spellings_text,
    )
    from codediff.infill import fim_rate_of

    ids = fim_token_ids(backend.tokenizer)
    meta = getattr(backend, "meta", None)  # a codediff checkpoint's record; None otherwise
    if ids is None:
        head = (f"{backend.path}: its tokenizer has no fill-in-the-middle sentinels "
                f"({spellings_text()}), so it cannot read an infill prompt")
        if meta is None:
            raise UserError(f"{head}; use --prompt-format prefix, or a model trained for "
                            "fill-in-the-middle whose tokenizer has them")
        fix = missing_sentinels_fix(run_corpus_manifest(backend.path))
        raise UserError(f"{head}, and --fim-rate training needs them too; use --prompt-format "
                        f"prefix, or a model trained with --fim-rate on a corpus that has them: "
                        f"{fix}")
    if meta is not None and fim_rate_of(meta, backend.path) <= 0:
        raise UserError(f"{backend.path}: this ar model was not trained with fill-in-the-middle, "
                        "so it cannot read an infill prompt; train it with --fim-rate 0.5 (its "
                        "tokenizer has the sentinels), or use --prompt-format prefix")
    return ids.prefix, ids.suffix, ids.middle


def _oracle_tokens(backend: Any, problem: Any) -> int:
    """--infill-length oracle (an ablation): the reference fill's token count (at least 1)."""
    from codediff.infill import reference_fill

    return max(1, len(backend.tokenizer.encode(reference_fill(problem))))


def _oracle_settings(settings: DLMSettings, n: int) -> DLMSettings:
    """An oracle-length batch: `n` masks decoded as one block; a fixed schedule keeps its rate
    of steps per answer token (default: one token per step)."""
    steps = None if settings.steps is None else max(1, round(n * settings.steps
                                                            / settings.gen_length))
    return replace(settings, gen_length=n, block_length=n, steps=steps)


def _encode_infill(tok: Any, batch: list[Job], plan: InfillPlan, mode: str,
                   sentinels: tuple[int, int, int] | None, backend: Any
                   ) -> tuple[list[list[int]], list[list[int]], list[list[int]] | None,
                              list[int | None]]:
    """Token ids of a batch of hole prompts: (prompt as encoded, model prompts, suffixes for
    the mdm answer region or None, per row the room it was cut to or None). `prefix`: the text
    before the hole. `infill`: mdm reads prefix, masks, suffix; ar reads the PSM prompt. Prefix
    and suffix are encoded apart (the hole's edges are token boundaries, as in FIM training)."""
    from codediff.infill import fit, psm

    encoded, prompts, suffixes, cut = [], [], [], []
    for j in batch:
        pre = tok.encode(j.prompt)
        suf = tok.encode(j.suffix) if plan.infill and j.suffix else []
        room = None
        if backend.max_seq_len is not None:
            answer = j.fill_tokens or (plan.budget or 0)
            room = int(backend.max_seq_len) - answer - (3 if sentinels is not None else 0)
            if room < 1:
                raise UserError(f"{j.task_id}: an answer of {answer} tokens leaves no room for "
                                f"the prompt in the model's {backend.max_seq_len}-token "
                                "context; lower --gen-length / --max-new-tokens")
        p, q, was_cut = fit(pre, suf, room)
        if mode == "dlm" and not p:  # nothing before the hole: start as a document does
            p = [backend.eos_ids[0]] if backend.eos_ids else [backend.pad_id]
        encoded.append(pre)
        cut.append(room if was_cut else None)
        if sentinels is not None:
            prompts.append(psm(p, q, sentinels))
        else:
            prompts.append(p)
            suffixes.append(q)
    return encoded, prompts, (suffixes if mode == "dlm" and plan.infill else None), cut


def _end_lines(tok: Any, samples: list[Sample]) -> None:
    """A single-line hole's end rule (codediff.infill.end_of_line), in place."""
    from codediff.infill import end_of_line
    from codediff.sampling.common import tokens_for

    for s in samples:
        s.completion = end_of_line(s.completion)
        healed = s.extra.get("healed", "")
        s.tokens = tokens_for(tok, s.ids, healed + s.completion) if s.ids else s.tokens


def _prompt_budget(cfg: GenerateConfig, backend: Any, mode: str) -> int | None:
    """Prompt tokens that fit the model's context with the answer (older tokens are cut)."""
    if backend.max_seq_len is None:  # vLLM's too: it takes the prompt text
        return None
    answer = cfg.max_new_tokens if mode == "ar" else cfg.gen_length
    budget = int(backend.max_seq_len) - answer
    if budget < 1:
        length_flag = "--max-new-tokens" if mode == "ar" else "--gen-length"
        raise UserError(f"{length_flag} {answer} leaves no room for the prompt in the model's "
                        f"{backend.max_seq_len}-token context; lower it")
    return budget


def _run_batch(cfg: GenerateConfig, backend: Backend, batch: list[Job],
               prompts: list[list[int]], stops: list[str], mode: str,
               suffixes: list[list[int]] | None = None) -> list[Sample]:
    gens = [torch.Generator(device=backend.device).manual_seed(_sample_seed(cfg, j))
            for j in batch]
    if backend.samples_itself:
        return _run_vllm(cfg, backend, batch, stops)
    if mode == "ar":
        from codediff.sampling.ar import ARSettings, generate_ar

        s = ARSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_p=cfg.top_p, top_k=cfg.top_k, use_cache=cfg.kv_cache)
        return generate_ar(backend, prompts, s, stops, gens, heal=cfg.token_healing)
    from codediff.sampling.dlm import generate_dlm
    from codediff.sampling.groups import by_prompt_length

    settings = _dlm_settings(cfg)
    if batch[0].fill_tokens:  # --infill-length oracle: one block of the fill's length
        settings = _oracle_settings(settings, batch[0].fill_tokens)

    def run(ps: list[list[int]], gs: list[torch.Generator],
            sfx: list[list[int]] | None) -> list[Sample]:
        return generate_dlm(backend, ps, settings, stops, gs, heal=cfg.token_healing,
                            suffixes=sfx)

    if not getattr(backend, "pads", True):
        # the model's code ignores the padding mask: rows of one prompt (and suffix) length at
        # a time, so the batch size never changes a sample
        return by_prompt_length(backend.tokenizer, prompts, gens, run, heal=cfg.token_healing,
                                suffixes=suffixes)
    return run(prompts, gens, suffixes)


def _dlm_settings(cfg: GenerateConfig) -> DLMSettings:
    from codediff.sampling.dlm import DLMSettings
    from codediff.sampling.rules import CommitRule

    rule = CommitRule(cfg.sampler, tau=cfg.tau, factor=cfg.factor, gamma=cfg.gamma,
                      factor_rule=cfg.factor_rule)
    return DLMSettings(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.steps,
                       schedule=cfg.step_schedule,
                       temperature=cfg.temperature, rule=rule, cache=cfg.cache,
                       logits_eos_inf=cfg.logits_eos_inf,
                       confidence_eos_inf=cfg.confidence_eos_inf, early_stop=cfg.early_stop,
                       cuda_graphs=cfg.cuda_graphs, reference_rng=cfg.reference_rng)


def _graphs_used(cfg: GenerateConfig, backend: Backend, mode: str) -> bool:
    """Whether the samples' steps ran as CUDA graphs (for the sidecar), not just asked for."""
    from codediff.sampling.dlm import graphs_used

    return mode == "dlm" and graphs_used(backend, _dlm_settings(cfg))


def _run_vllm(cfg: GenerateConfig, backend: Backend, batch: list[Job], stops: list[str]
              ) -> list[Sample]:
    from codediff.sampling.common import Sample

    t0 = time.perf_counter()
    outs = []
    for j in batch:  # one request per job so each has its own seed
        outs.append(backend.generate_texts(
            [j.prompt], n=1, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
            max_new_tokens=cfg.max_new_tokens, stop=stops,
            seed=_job_seed(cfg.seed, j.task_id, j.completion_id))[0][0])
    dt = (time.perf_counter() - t0) / max(len(batch), 1)
    return [Sample(ids=[], completion=o["text"], raw=o["text"], tokens=o["tokens"],
                   nfe=o["tokens"], seconds=dt, flops=0.0, stop_reason=o["finish_reason"])
            for o in outs]


def _merge(cfg: GenerateConfig, out: Path, jobs: list[Job], fingerprint: str, ident: dict,
           fmt: Any, stops: list[str], backend: Any, world: int) -> None:
    rows: dict[tuple[str, int], dict] = {}
    for path in _partials(out):
        for r in _read_rows(path):
            rows[(r["task_id"], r["completion_id"])] = r
    missing = [(j.task_id, j.completion_id) for j in jobs
               if (j.task_id, j.completion_id) not in rows]
    if missing:
        raise UserError(f"{out}: {len(missing)} samples are missing after generation (e.g. "
                        f"{missing[0]}); rerun the same command to finish them")
    ordered = [rows[(j.task_id, j.completion_id)] for j in jobs]
    JsonlStore(out).rewrite(ordered, ensure_ascii=False)
    tot = {k: sum(r.get(k, 0) or 0 for r in ordered)
           for k in ("nfe", "tokens", "seconds", "flops")}
    meta = {
        "schema": SAMPLES_SCHEMA,
        "fingerprint": fingerprint,
        "model": _sidecar_model(ident, backend),
        "task": ident["task"],
        "dataset": ident["dataset"],
        "prompt_format": fmt.name,
        "program": fmt.program,
        "stop_sequences": stops,
        "settings": ident["settings"],
        # how, not what: outside the fingerprint; whether the steps ran as CUDA graphs
        "cuda_graphs": _graphs_used(cfg, backend, ident["settings"]["mode"]),
        "seed": cfg.seed,
        "seeding": ("per sample: seed itself, draws in the reference's shapes "
                    "(--reference-rng)" if cfg.reference_rng
                    else "per sample: sha256(seed/task_id/completion_id)"),
        "n": cfg.n,
        "problems": len(ident["problems"]),
        "samples": len(ordered),
        "prompts_truncated": sum(1 for r in ordered if "prompt_truncated_to" in r),
        "totals": {**tot,
                   "tokens_per_second": tot["tokens"] / tot["seconds"] if tot["seconds"] else None,
                   "tokens_per_forward": tot["tokens"] / tot["nfe"] if tot["nfe"] else None,
                   "flops_per_token": tot["flops"] / tot["tokens"] if tot["tokens"] else None},
        "world_size": world,
        "batch_size": cfg.batch_size,
        "recipe": (cfg.extra["recipe"].record(ident["task"]) if cfg.extra.get("recipe")
                   else None),
        "environment": environment(backend),
        "created_by": f"codediff {__version__}",
        "torch": torch.__version__,
    }
    atomic_write_json(meta_path(out), meta)
    for p in _partials(out):
        p.unlink()
    _partial_meta(out).unlink(missing_ok=True)


def _barrier(world: int) -> None:
    """Wait for all ranks (gloo works for CPU and GPU runs alike)."""
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    dist.barrier()

