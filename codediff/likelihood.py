"""log p(continuation | context) for evaluations that rank options by likelihood.

- `exact` (AR): the sum of next-token log-probabilities of the continuation.
- `elbo` (MDM): a Monte Carlo evidence lower bound with M samples,
  E_t E_mask[(1/t) sum over masked continuation tokens of log p(token | context, unmasked rest)],
  the context always visible. Options of one question share their random numbers: the same t
  values and the same per-position mask uniforms, so the Monte Carlo noise largely cancels when
  options are compared (independent estimates rank close options at chance). Reports the standard
  error over the M samples.
- `pll` (MDM): pseudo-log-likelihood, masking one continuation token at a time (deterministic).

Sequences longer than the model's window keep the end of the context (left-truncated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METHODS = ("auto", "exact", "elbo", "pll")


@dataclass
class Score:
    logp: float  # estimate of log p(continuation | context), nats
    stderr: float  # Monte Carlo standard error of `logp` (0 for exact and pll)
    n_tokens: int
    method: str
    samples: int = 1


def _fit(context: list[int], cont: list[int], max_len: int) -> list[int]:
    if len(cont) >= max_len:
        raise ValueError(f"continuation of {len(cont)} tokens does not fit the model window "
                         f"{max_len}")
    keep = max_len - len(cont)
    return list(context[-keep:] if keep else []) + list(cont)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def ar_exact(model, context: list[int], continuations: list[list[int]], *, max_len: int,
             pad_id: int = 0, batch_size: int = 16) -> list[Score]:
    dev = _device(model)
    out = []
    for i in range(0, len(continuations), batch_size):
        chunk = continuations[i:i + batch_size]
        seqs = [_fit(context, c, max_len + 1) for c in chunk]
        width = max(len(s) for s in seqs) - 1
        x = torch.full((len(seqs), width + 1), pad_id, dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, :len(s)] = torch.tensor(s)
        x = x.to(dev)
        # right padding never reaches earlier positions of a causal model: no mask needed
        tok = _token_logp(model(x[:, :-1]), x[:, 1:])
        for r, (s, c) in enumerate(zip(seqs, chunk, strict=True)):
            lo = len(s) - len(c) - 1
            out.append(Score(float(tok[r, lo:len(s) - 1].sum()), 0.0, len(c), "exact"))
    return out


def _as_float(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def _token_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] without materialising the full log-softmax."""
    logits = _as_float(logits)
    return logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)


def _masked_logp(model, x0: torch.Tensor, am: torch.Tensor, sel: torch.Tensor, mask_id: int,
                 batch_size: int) -> torch.Tensor:
    """Rows of tokens `x0` [N, L] (real where `am`), positions `sel` masked -> float64 [N]: the
    sum over masked positions of log p(true token). Only masked positions reach the softmax."""
    dev = _device(model)
    out = []
    for i in range(0, x0.shape[0], batch_size):
        xb, ab, sb = (t[i:i + batch_size].to(dev) for t in (x0, am, sel))
        logits = model(torch.where(sb, mask_id, xb), attention_mask=None if bool(ab.all())
                       else ab)
        rows, cols = sb.nonzero(as_tuple=True)
        lp = _token_logp(logits[rows, cols], xb[rows, cols]).double()
        out.append(torch.zeros(sb.shape[0], dtype=torch.float64, device=dev)
                   .index_add_(0, rows, lp).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _rows(context: list[int], continuations: list[list[int]], max_len: int, repeat: list[int],
          pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Each option's sequence `repeat[o]` times, right-padded: tokens, key mask, and per option
    the first row and the continuation's start position."""
    seqs = [_fit(context, c, max_len) for c in continuations]
    width = max(len(s) for s in seqs)
    n = sum(repeat)
    x0 = torch.full((n, width), pad_id, dtype=torch.long)
    am = torch.zeros((n, width), dtype=torch.bool)
    first, starts, r = [], [], 0
    for seq, c, k in zip(seqs, continuations, repeat, strict=True):
        x0[r:r + k, :len(seq)] = torch.tensor(seq)
        am[r:r + k, :len(seq)] = True
        first.append(r)
        starts.append(len(seq) - len(c))
        r += k
    return x0, am, first, starts


@torch.no_grad()
def mdm_elbo(model, context: list[int], continuations: list[list[int]], *, mask_id: int,
             max_len: int, samples: int = 64, seed: int = 0, pad_id: int = 0,
             batch_size: int = 32, eps: float = 1e-3) -> list[Score]:
    """Coupled ELBO estimates: sample m uses t_m and uniforms U[m, j] for every option, so the
    option with continuation token j masked under sample m is the same across options."""
    g = torch.Generator().manual_seed(seed)
    longest = max(len(c) for c in continuations)
    # stratified t: one draw per stratum of (0, 1), shared by all options
    t = eps + (1 - eps) * ((torch.rand(samples, generator=g) + torch.arange(samples)) / samples)
    u = torch.rand(samples, longest, generator=g)
    masked = u < t[:, None]  # [samples, longest]: the same draws for every option
    x0, am, first, starts = _rows(context, continuations, max_len,
                                  [samples] * len(continuations), pad_id)
    sel = torch.zeros_like(am)
    for o, c in enumerate(continuations):
        r, s0 = first[o], starts[o]
        sel[r:r + samples, s0:s0 + len(c)] = masked[:, :len(c)]
    lps = _masked_logp(model, x0, am, sel, mask_id, batch_size)
    per = (lps.view(len(continuations), samples) / t.double()[None, :])
    out = []
    for o, c in enumerate(continuations):
        est = per[o].mean().item()
        se = per[o].std(unbiased=True).item() / math.sqrt(samples) if samples > 1 else math.inf
        out.append(Score(est, se, len(c), "elbo", samples))
    return out


@torch.no_grad()
def mdm_pll(model, context: list[int], continuations: list[list[int]], *, mask_id: int,
            max_len: int, pad_id: int = 0, batch_size: int = 32) -> list[Score]:
    x0, am, first, starts = _rows(context, continuations, max_len,
                                  [len(c) for c in continuations], pad_id)
    sel = torch.zeros_like(am)
    for o, c in enumerate(continuations):  # row j of option o masks continuation token j
        rows = torch.arange(len(c))
        sel[first[o] + rows, starts[o] + rows] = True
    lps = _masked_logp(model, x0, am, sel, mask_id, batch_size)
    total = [float(lps[first[o]:first[o] + len(c)].sum()) for o, c in enumerate(continuations)]
    return [Score(total[o], 0.0, len(c), "pll") for o, c in enumerate(continuations)]


def score(model, context: list[int], continuations: list[list[int]], *, objective: str,
          method: str = "auto", mask_id: int | None = None, samples: int = 64, seed: int = 0,
          pad_id: int = 0, batch_size: int = 32, max_len: int | None = None) -> list[Score]:
    """Score each continuation of one context; `method` auto = exact (ar) or elbo (mdm)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")
    if max_len is None:
        from codediff.checkpoints import unwrap

        max_len = unwrap(model).config.max_seq_len
    if method == "auto":
        method = "exact" if objective == "ar" else "elbo"
    if method == "exact":
        if objective != "ar":
            raise ValueError("exact likelihood needs an ar model; use elbo or pll for mdm")
        return ar_exact(model, context, continuations, max_len=max_len, pad_id=pad_id,
                        batch_size=batch_size)
    if objective != "mdm":
        raise ValueError(f"{method} needs an mdm model; use exact for ar")
    if mask_id is None:
        raise ValueError(f"{method} needs the mask token id")
    if method == "elbo":
        return mdm_elbo(model, context, continuations, mask_id=mask_id, max_len=max_len,
                        samples=samples, seed=seed, pad_id=pad_id, batch_size=batch_size)
    return mdm_pll(model, context, continuations, mask_id=mask_id, max_len=max_len,
                   pad_id=pad_id, batch_size=batch_size)


def rank(scores: list[Score], normalize: bool = False) -> int:
    """Index of the best option (highest log-likelihood; per token when `normalize`)."""
    keys = [s.logp / s.n_tokens if normalize else s.logp for s in scores]
    return max(range(len(keys)), key=keys.__getitem__)
