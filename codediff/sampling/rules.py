"""Commit rules for masked-diffusion decoding: which masked positions to fill at each step.

Every DLM sampler in the literature does the same thing at a denoising step: predict a token x0
for every masked position, score each prediction, then *commit* some of them (replace the mask by
x0) and leave the rest masked for later steps. Samplers differ only in the score and in how many
to commit. This module keeps the two apart:

score (`Score`)      what it measures                             used by
  prob               softmax probability of the proposed token    LLaDA `low_confidence`, Fast-dLLM
  random             a uniform random number                      LLaDA `random`, Dream `origin`
  margin             top-1 minus top-2 probability                Dream `topk_margin`
  neg_entropy        minus the entropy of the predictive dist.    Dream `entropy`

commit rule          how many
  schedule           a fixed count per step (the block's masks split evenly over its steps)
  threshold tau      every candidate with score >= tau, at least the best one (Fast-dLLM)
  factor f           the n best while the n-th best has score >= 1 - f/(n+1) (Fast-dLLM)
  entropy_bounded g  best-first while sum(H) - max(H) <= g over the chosen set (EB-sampler)
  origin             each candidate whose uniform score is below 1 - s/t over Dream's
                     timesteps, all of them at the last step (Dream's `alg='origin'`)

All functions are pure tensor functions on [B, L] scores and [B, L] bool candidate masks (masked
positions inside the current block); they never commit a non-candidate and, where any candidate
exists, the adaptive rules always commit at least one (so decoding always progresses; the
fixed-step rules may commit none at a step and fill the block by their last step).

The random score's numbers are drawn here per row (one generator per row: a row's numbers do not
depend on its batch), or, for Dream's `origin` and for `--reference-rng`, in the shapes the
reference code draws them (`uniform_over_sequence`, `uniform_over_masked`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codediff.sampling import (  # noqa: F401 - SAMPLERS: name -> (score, rule)
    DEFAULT_TAU,
    DLM_SCHEDULES,
    DREAM_EPS,
    FACTOR_RULES,
    SAMPLERS,
    STEP_RULES,
    kernel,
)

NEG_INF = float("-inf")


@dataclass(frozen=True)
class CommitRule:
    """A named DLM sampler and its one knob (tau, factor or gamma; unused for schedule rules)."""

    name: str = "low_confidence"
    tau: float = DEFAULT_TAU  # threshold
    factor: float = 1.0       # factor
    gamma: float = 0.01       # entropy_bounded (nats)
    factor_rule: str = "stated"  # factor: "stated" or Fast-dLLM's code ("fastdllm"; FACTOR_RULES)

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.factor_rule not in FACTOR_RULES:
            raise ValueError(f"factor_rule must be one of {', '.join(FACTOR_RULES)}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        if self.factor < 0 or self.gamma < 0:
            raise ValueError("factor and gamma must be >= 0")

    @property
    def score(self) -> str:
        return SAMPLERS[self.name][0]

    @property
    def rule(self) -> str:
        return SAMPLERS[self.name][1]

    @property
    def fixed_schedule(self) -> bool:
        """True when the number of commits per step is fixed in advance (`steps` matters)."""
        return self.rule == "schedule"

    @property
    def fixed_steps(self) -> bool:
        """True when the number of steps is fixed in advance (`steps` matters): the schedule
        rules and `origin`, whose commits per step are random but whose last step fills the
        block."""
        return self.rule in STEP_RULES


# ----------------------------------------------------------------------------- proposals

def gumbel_perturb(logits: torch.Tensor, temperature: float,
                   generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Logits plus temperature-scaled Gumbel noise, in float64; argmax = a sample at `temperature`.

    argmax(l + T*g) with g ~ Gumbel(0, 1) samples softmax(l / T). It equals LLaDA's
    argmax(exp(l) / (-log u)^T) but stays in log space. The noise is float64 on purpose: with
    low-precision Gumbel noise masked diffusion models generate worse text (arXiv:2409.02908),
    as LLaDA notes. One generator per batch row keeps a row's randomness independent of its
    batch neighbours, so batched sampling equals unbatched sampling for the same seeds.
    Temperature 0 returns the logits unchanged (argmax = greedy).
    """
    if temperature == 0:
        return logits
    u = _uniform(logits.shape, logits.device, generators)
    # u in (0, 1): clamp away from 0 and 1 so both logs are finite
    tiny = torch.finfo(torch.float64).tiny
    u = u.clamp(min=tiny, max=1.0 - 1e-16)
    return logits.to(torch.float64) - temperature * torch.log(-torch.log(u))


def _uniform(shape: torch.Size | tuple[int, ...], device: torch.device,
             generators: list[torch.Generator] | None) -> torch.Tensor:
    """float64 U(0, 1) of `shape`; row b drawn from generators[b] when given."""
    if generators is None:
        return torch.rand(shape, dtype=torch.float64, device=device)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.stack([torch.rand(tuple(shape[1:]), dtype=torch.float64, device=device,
                                   generator=g) for g in generators])


def propose(logits: torch.Tensor, temperature: float, score: str,
            generators: list[torch.Generator] | None = None, need_entropy: bool = True,
            uniform: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Proposed tokens x0 [B, L], their scores [B, L] (float64) and entropies [B, L] (nats;
    None when not `need_entropy` and the score does not use it).

    x0 is the argmax of the Gumbel-perturbed logits. Scores come from the unperturbed
    distribution softmax(logits) computed in float64, as in LLaDA / Fast-dLLM. `uniform` [B, L]:
    the `random` score's numbers when the caller has drawn them (in a reference's shapes);
    otherwise they are drawn here, [B, L] per step.
    """
    if temperature == 0 and score == "prob" and not need_entropy \
            and kernel.usable(logits):
        # greedy with the probability score on a GPU: one fused pass (kernel.py)
        x0, conf = kernel.argmax_prob(logits)
        return x0, conf, None
    x0 = gumbel_perturb(logits, temperature, generators).argmax(dim=-1)
    logp = F.log_softmax(logits.to(torch.float64), dim=-1)
    # the whole distribution only where a score needs it: `prob` exponentiates just the chosen
    # entries (the same values, one full pass over [B, L, vocab] fewer per step)
    p = logp.exp() if need_entropy or score in ("neg_entropy", "margin") else None
    entropy = None
    if need_entropy or score == "neg_entropy":
        entropy = -(p * logp).nan_to_num(0.0).sum(dim=-1)
    if score == "prob":
        conf = logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1).exp()
    elif score == "random":
        conf = (uniform.to(torch.float64) if uniform is not None
                else _uniform(x0.shape, x0.device, generators))
    elif score == "margin":
        top2 = p.topk(2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    elif score == "neg_entropy":
        conf = -entropy
    else:
        raise ValueError(f"unknown score {score!r}")
    return x0, conf, entropy


def uniform_over_sequence(lengths: list[int], offsets: list[int], s: int, e: int,
                          generators: list[torch.Generator] | None, device: torch.device
                          ) -> torch.Tensor:
    """LLaDA `generate(remasking='random')`'s draw: per row one float32 `torch.rand` over the
    row's whole sequence (prompt and answer, as if decoded alone: `lengths[b]` real tokens that
    start at column `offsets[b]` of the padded batch), of which the block [s, e) is read.
    [B, e - s] float64. Without generators the global generator draws, row after row."""
    rows = []
    for b, (n, off) in enumerate(zip(lengths, offsets, strict=True)):
        g = generators[b] if generators is not None else None
        rows.append(torch.rand(n, device=device, generator=g)[s - off:e - off])
    return torch.stack(rows).to(torch.float64)


def uniform_over_masked(masked: torch.Tensor, lengths: list[int], offsets: list[int], s: int,
                        e: int, generators: list[torch.Generator] | None) -> torch.Tensor:
    """Dream `diffusion_generate(alg='origin')`'s draw: per row one float32 `torch.rand` with one
    number per masked position of the row's whole sequence (`masked` [B, W], the row's real
    tokens `lengths[b]` from column `offsets[b]`), in position order; a row without masks draws
    nothing. The block [s, e) is returned, [B, e - s] float64, 1.0 where no mask is."""
    rows = []
    for b, (n, off) in enumerate(zip(lengths, offsets, strict=True)):
        g = generators[b] if generators is not None else None
        m = masked[b, off:off + n]
        full = torch.ones(n, device=masked.device)
        full[m] = torch.rand(int(m.sum()), device=masked.device, generator=g)
        rows.append(full[s - off:e - off])
    return torch.stack(rows).to(torch.float64)


# ----------------------------------------------------------------------------- schedules

def origin_probabilities(steps: int, eps: float = DREAM_EPS,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """[steps] float32: the probability that `origin` commits a masked position at each step,
    1 - t[i+1] / t[i] over Dream's timesteps t = linspace(1, eps, steps + 1), 1 at the last.

    Computed in float32 on the model's device, as Dream does, because a uniform number is
    compared with it: the last bit decides some commits."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    t = torch.linspace(1, eps, steps + 1, device=device)
    p = 1 - t[1:] / t[:-1]
    p[-1] = 1.0
    return p


def transfer_schedule(n_masked: torch.Tensor, steps: int, kind: str = "even",
                      eps: float = DREAM_EPS) -> torch.Tensor:
    """[B, steps] commits per step for blocks of n_masked[b] masks (`kind`: DLM_SCHEDULES).

    even: LLaDA's linear noise schedule makes the expected number of unmasked tokens per step
    constant, so a block of M masks over S steps commits M // S per step plus one more in the
    first M % S steps.
    dream: Dream's `diffusion_generate`: over timesteps t = linspace(1, eps, S + 1), step i
    commits int(M_i * (1 - t[i+1] / t[i])) of the M_i masks still left, and the last step all
    of them. It is computed in float32 as Dream does (the rounding decides the counts: with
    S = M the first step commits nothing and the last two).
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if kind not in DLM_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(DLM_SCHEDULES)}")
    n = n_masked.reshape(-1).to(torch.long)
    if kind == "dream":
        t = torch.linspace(1, eps, steps + 1, dtype=torch.float32)
        left = n.cpu().to(torch.float32)
        cols = []
        for i in range(steps):
            k = left.clone() if i == steps - 1 else (left * (1 - t[i + 1] / t[i])).to(torch.long)
            k = k.to(torch.long)
            cols.append(k)
            left = left - k
        return torch.stack(cols, dim=1).to(n.device)
    base = torch.div(n, steps, rounding_mode="floor")
    rem = n - base * steps
    cols = torch.arange(steps, device=n.device).unsqueeze(0)
    return base.unsqueeze(1) + (cols < rem.unsqueeze(1)).to(torch.long)


# ----------------------------------------------------------------------------- commit rules

def _ranked(conf: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores with non-candidates at -inf, sorted descending: (sorted values, their positions).

    The sort is stable so ties keep left-to-right order; positions are what topk would return.
    """
    masked = conf.to(torch.float64).masked_fill(~candidates, NEG_INF)
    values, order = torch.sort(masked, dim=-1, descending=True, stable=True)
    return values, order


def _first_k(order: torch.Tensor, k: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: the first k[b] positions of order[b], restricted to candidates."""
    ranks = torch.empty_like(order)
    ar = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    ranks.scatter_(-1, order, ar)
    return (ranks < k.unsqueeze(-1)) & candidates


def _at_least_one(k: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    n = candidates.sum(dim=-1)
    return torch.minimum(torch.where(n > 0, k.clamp(min=1), k), n)


def select_topk(conf: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Commit the k[b] best-scored candidates of row b (k may be 0; capped at the candidates)."""
    _, order = _ranked(conf, candidates)
    k = torch.minimum(k.to(torch.long), candidates.sum(dim=-1))
    return _first_k(order, k, candidates)


def select_threshold(conf: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """Commit every candidate with score >= tau, and the best candidate even if below tau."""
    values, order = _ranked(conf, candidates)
    k = _at_least_one((values >= tau).sum(dim=-1), candidates)
    return _first_k(order, k, candidates)


def select_factor(conf: torch.Tensor, candidates: torch.Tensor, factor: float,
                  rule: str = "stated") -> torch.Tensor:
    """Fast-dLLM's factor rule: commit the n best while the n-th best c_(n) >= 1 - f/(n+1).

    n counts from 1; the best is always committed. (Fast-dLLM's derivation: committing n tokens
    in parallel is safe when (n + 1)(1 - c_(n)) < f.) rule "fastdllm" is Fast-dLLM's code: when
    the first candidate below its bar is the last candidate, it is committed too.
    """
    values, order = _ranked(conf, candidates)
    n = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=torch.float64)
    ok = values >= (1.0 - factor / (n + 1.0))
    ok[..., 0] = True
    k = ok.to(torch.long).cumprod(dim=-1).sum(dim=-1)  # length of the all-ok prefix
    if rule == "fastdllm":
        n_cand = candidates.sum(dim=-1)
        k = torch.where(k == n_cand - 1, n_cand, k)
    return _first_k(order, _at_least_one(k, candidates), candidates)


def select_entropy_bounded(conf: torch.Tensor, entropy: torch.Tensor, candidates: torch.Tensor,
                           gamma: float) -> torch.Tensor:
    """EB-sampler: best-first, the largest prefix U with sum(H_U) - max(H_U) <= gamma.

    gamma = 0 commits one token per step unless several are (numerically) certain; larger gamma
    trades error for fewer steps.
    """
    values, order = _ranked(conf, candidates)
    h = entropy.to(torch.float64).gather(-1, order)
    h = torch.where(torch.isfinite(values), h, torch.zeros_like(h))
    ok = (h.cumsum(dim=-1) - h.cummax(dim=-1).values) <= gamma
    ok &= torch.isfinite(values)
    k = ok.to(torch.long).cumprod(dim=-1).sum(dim=-1)
    return _first_k(order, _at_least_one(k, candidates), candidates)


def select_origin(u: torch.Tensor, candidates: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Dream's `origin`: commit each candidate whose uniform number u is below the step's
    probability p [B] (1 at the last step: every candidate). May commit none."""
    return candidates & (u < p.to(torch.float64).unsqueeze(-1))


def select(rule: CommitRule, conf: torch.Tensor, entropy: torch.Tensor | None,
           candidates: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on the rule; `k` [B] is required for the fixed-step rules: the step's commit
    count (schedule) or its commit probability (origin)."""
    if rule.rule in STEP_RULES and k is None:
        raise ValueError(f"sampler {rule.name} needs a per-step count or probability k")
    if rule.rule == "schedule":
        return select_topk(conf, candidates, k)
    if rule.rule == "origin":
        return select_origin(conf, candidates, k)
    if rule.rule == "threshold":
        return select_threshold(conf, candidates, rule.tau)
    if rule.rule == "factor":
        return select_factor(conf, candidates, rule.factor, rule.factor_rule)
    if entropy is None:
        raise ValueError("entropy_bounded needs the entropies (propose(..., need_entropy=True))")
    return select_entropy_bounded(conf, entropy, candidates, rule.gamma)
