"""Sampling: autoregressive decoding and parallel-decoding masked-diffusion samplers.

This `__init__` is torch-free: it holds the names that command-line options, settings and docs
share, so `codediff generate --help` lists them without loading torch. The tensor code lives in
the modules beside it: common (what AR and DLM decoding share, the backend Protocol), ar, rules
(DLM scores and commit rules), kernel (the fused greedy proposal), dlm (the DLM step loop),
caches (one step plan per cache mode) and graphs (CUDA graphs). docs/generation.md maps them.
"""

from __future__ import annotations

# DLM sampler name -> (score, commit rule); rules.py implements each score and rule.
SAMPLERS: dict[str, tuple[str, str]] = {
    "low_confidence": ("prob", "schedule"),
    "random": ("random", "schedule"),
    "margin": ("margin", "schedule"),
    "entropy": ("neg_entropy", "schedule"),
    "threshold": ("prob", "threshold"),
    "factor": ("prob", "factor"),
    "entropy_bounded": ("prob", "entropy_bounded"),
    "origin": ("random", "origin"),
}

# Commit rules whose number of denoising steps is fixed in advance (they take `--steps`):
# `schedule` commits a fixed count per step; `origin` (Dream's default `alg`) commits each masked
# position with probability 1 - s/t over Dream's timesteps, and all that are left at the last step.
STEP_RULES: tuple[str, ...] = ("schedule", "origin")

# The threshold sampler's confidence bar unless one is given (Fast-dLLM's setting).
DEFAULT_TAU = 0.9

# How a fixed-schedule sampler spreads a block's masks over its steps: `even` (LLaDA: the same
# count every step, the remainder first) or `dream` (Dream's diffusion_generate: n_mask * (1 - s/t)
# of the remaining masks over timesteps linspace(1, eps, steps + 1), all the rest at the last step).
DLM_SCHEDULES: tuple[str, ...] = ("even", "dream")
DREAM_EPS = 1e-3  # Dream's default eps (generation_config.eps)

# The factor sampler: `stated` follows the published rule (the n best while c_(n) >= 1 - f/(n+1));
# `fastdllm` is Fast-dLLM's code, which also commits the last candidate whenever the first one
# below its bar is the last one (so a block's last two masks always go together).
FACTOR_RULES: tuple[str, ...] = ("stated", "fastdllm")

# The samplers that draw random numbers at temperature 0 (their score is a uniform number):
# `--reference-rng` can reproduce the reference code's random stream for these.
RANDOM_SAMPLERS: tuple[str, ...] = tuple(n for n, (score, _) in SAMPLERS.items()
                                         if score == "random")

# KV cache modes of DLM decoding: none, prefix (Fast-dLLM) or dual (prefix + suffix).
CACHES: tuple[str, ...] = ("none", "prefix", "dual")
