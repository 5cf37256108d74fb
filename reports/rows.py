"""One table row per result, with every number a report or leaderboard shows about it.

Shared by the comparison report and the leaderboard so both show the same numbers, computed once:
coverage (problems judged / problems in the task), pass@k with 95% intervals for base and plus,
decoding settings, generation cost, training facts and the environment, each `None` when the
files do not record it."""

from __future__ import annotations

from pathlib import Path

from codediff.reports.load import Result
from codediff.reports.stats import pass_at_k_ci


def result_row(r: Result) -> dict:
    d = r.data
    phases = ("base", "plus") if "plus" in (d.get("pass_at_k") or {}) else ("base",)
    ks = list(d.get("k") or [])
    passk = {ph: {k: pass_at_k_ci(d, ph, k) for k in ks} for ph in phases}
    covered, total = d.get("problems_with_samples", 0), d.get("problems", 0)
    model, sampler, totals = r.model, r.sampler, r.totals
    gen = d.get("generation") or {}
    harness = d.get("harness") or {}
    env = gen.get("environment") or {}
    return {
        "label": r.label, "task": r.task, "path": str(r.path), "dir": r.path.name,
        "dataset": d.get("dataset") or {}, "format": d.get("prompt_format", ""),
        "n": d.get("n_per_task") or {}, "samples": (d.get("samples") or {}).get("count"),
        "samples_file": (d.get("samples") or {}).get("file", ""),
        "k": ks, "phases": phases, "pass": passk,
        # the ranking number: plus when the task has it (as EvalPlus ranks), pass@1 when reported
        "score": _score(passk, phases, ks),
        "covered": covered, "total": total, "partial": covered < total,
        "status": (d.get("status_counts") or {}).get("all") or {},
        # samples judged as other code than their raw text; "off" when judged raw (--no-sanitize)
        "sanitised": ("off" if harness.get("sanitize") is False
                      else harness.get("sanitizer_changed")),
        "decoding": decoding(sampler), "decoding_text": decoding_text(sampler),
        "nfe": totals.get("nfe"), "tokens_per_forward": totals.get("tokens_per_forward"),
        # `tokens` in the sidecar counts completion tokens only, so this is output tokens/s
        "out_tps": totals.get("tokens_per_second"), "gen_seconds": totals.get("seconds"),
        "flops_per_token": totals.get("flops_per_token"),
        "training": training(model),
        "recipe": (gen.get("recipe") or {}).get("name"),
        "published": published(gen.get("recipe"), passk),
        "env": {"device": env.get("gpu") or model.get("gpu") or model.get("device"),
                "torch": env.get("torch") or gen.get("torch"),
                "transformers": env.get("transformers"), "codediff": env.get("codediff"),
                "batch_size": gen.get("batch_size"),
                "harness": harness.get("version"),
                "dataset_sha": ((d.get("dataset") or {}).get("sha256") or "")[:12]},
        "model": model, "sampler": sampler, "totals": totals,
    }


def published(recipe: dict | None, passk: dict) -> dict | None:
    """The recipe's published number beside ours, as fractions like pass@k: {"metric", "phase",
    "value" (None when the recipe has not transcribed it), "ours", "source", "url", "text"}
    ("published 47.0, ours 45.1"), or None when the samples were made without a recipe."""
    pub = (recipe or {}).get("published")
    if not pub:
        return None
    k = int(str(pub.get("metric", "pass@1")).removeprefix("pass@") or 1)
    mine = (passk.get(pub.get("phase", "base")) or {}).get(k)
    ours = mine["v"] if mine else None
    value = pub.get("value")
    value = None if value is None else float(value) / 100
    text = (f"{pub.get('metric')} {pub.get('phase')}: published "
            + ("–" if value is None else f"{100 * value:.1f}")
            + ", ours " + ("–" if ours is None else f"{100 * ours:.1f}"))
    return {"metric": pub.get("metric"), "phase": pub.get("phase"), "value": value,
            "ours": ours, "source": pub.get("source"), "url": pub.get("url"), "text": text,
            "recipe": recipe.get("name")}


def _score(passk: dict, phases: tuple, ks: list[int]) -> dict | None:
    if not ks:
        return None
    return passk[phases[-1]][ks[0]]


def decoding(s: dict) -> dict:
    """The decoding settings that change results, under one set of names for AR and DLM."""
    if not s:
        return {}
    dlm = s.get("mode") == "dlm"
    return {"sampler": s.get("sampler") if dlm else "ar" + (" greedy" if not s.get("temperature")
                                                           else ""),
            "steps": s.get("steps") if dlm else None,
            "gen_length": s.get("gen_length") if dlm else s.get("max_new_tokens"),
            "block_length": s.get("block_length") if dlm else None,
            "threshold": s.get("tau") if dlm else None,
            "cache": s.get("cache") if dlm else ("kv" if s.get("kv_cache") else None),
            "temperature": s.get("temperature")}


def decoding_text(s: dict) -> str:
    d = decoding(s)
    if not d:
        return ""
    parts = [str(d["sampler"])]
    if d["threshold"] is not None:
        parts.append(f"τ={d['threshold']}")
    if d["steps"] is not None:
        parts.append(f"steps={d['steps']}")
    if d["gen_length"] is not None:
        parts.append(f"gen={d['gen_length']}")
    if d["block_length"] is not None:
        parts.append(f"block={d['block_length']}")
    if d["cache"]:
        parts.append(f"cache={d['cache']}")
    if d["temperature"]:
        parts.append(f"T={d['temperature']}")
    return " ".join(parts)


def training(model: dict) -> dict:
    """Training facts of a codediff-trained model, as far as the samples sidecar records them."""
    tokens, epochs = model.get("tokens"), model.get("epochs")
    unique = model.get("unique_tokens")
    if unique is None and tokens and epochs:
        unique = round(tokens / epochs)  # tokens seen / passes over the data
    return {"objective": model.get("objective"), "tokens": tokens, "epochs": epochs,
            "unique_tokens": unique, "params": model.get("params"),
            "checkpoint": Path(str(model["path"])).name if model.get("path") else None}
