"""Autoregressive sampling: batched, left-padded prompts with a KV cache.

One loop serves every backend with a `forward` (native checkpoints, Hugging Face causal LMs):
prefill the left-padded prompts once, then feed one token per row per step. Rows stop at an
end-of-text token, a stop sequence (checked on the decoded text, so sequences spanning several
tokens are found) or `max_new_tokens`; once a quarter of the batch has stopped, those rows
leave it (with their cache rows), and the loop ends when every row has stopped.

Left padding keeps every row's next token in the same column; position ids count only real
tokens and the key-padding mask hides the pads, so a padded row computes what it would alone.
The next token comes from `sample_next` (greedy, or temperature with top-k / top-p), at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from codediff.sampling.common import (
    Sample,
    SamplingBackend,
    StopWatcher,
    finish,
    heal_prompts,
    left_pad,
    share,
    share_rest,
)
from codediff.sampling.rules import NEG_INF, gumbel_perturb


@dataclass(frozen=True)
class ARSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0   # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0             # 0 = off
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


# ----------------------------------------------------------------------------- AR loop

@torch.no_grad()
def generate_ar(backend: SamplingBackend, prompts: list[list[int]], settings: ARSettings,
                stop_sequences: list[str] | tuple[str, ...] = (),
                generators: list[torch.Generator] | None = None,
                heal: bool = False) -> list[Sample]:
    """Sample one continuation per prompt. `generators` (one per row) make sampling
    reproducible and independent of batch composition; `heal` turns on token healing."""
    t_call = time.perf_counter()
    dev = backend.device
    healing = heal_prompts(backend.tokenizer, prompts) if heal else None
    if healing is not None:
        prompts = healing.prompts
    skip = [len(x) for x in healing.prefix] if healing is not None else [0] * len(prompts)
    ids, mask, pos = left_pad(prompts, backend.pad_id, dev)
    B, P = ids.shape
    T = settings.max_new_tokens
    padded = not bool(mask.all())
    full_mask = torch.cat([mask, torch.ones(B, T, dtype=torch.bool, device=dev)], dim=1)
    full_pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, T + 1, device=dev)], dim=1)
    watcher = StopWatcher(backend.tokenizer, stop_sequences)
    lengths = [len(p) for p in prompts]
    flops = backend.flops

    gen: list[list[int]] = [[] for _ in range(B)]
    reason = ["length"] * B
    active = [True] * B                  # by original row
    rows = list(range(B))                # original row of each batch position
    gens = list(generators) if generators is not None else None
    alive = torch.ones(B, dtype=torch.bool, device=dev)  # device copy of `active`, by position
    eos_set = set(backend.eos_ids)
    nfe = [0] * B
    secs = [0.0] * B
    cost = [0.0] * B
    seq = torch.full((B, P + T), backend.pad_id, dtype=torch.long, device=dev)
    seq[:, :P] = ids

    def step(n_new: int, cur: int) -> torch.Tensor:
        """Logits [B, V] for the token after the first `cur` positions of `seq`."""
        am = full_mask[:, :cur] if padded else None
        if cache is not None:
            pids = full_pos[:, cur - n_new:cur] if padded else None
            out = backend.forward(seq[:, cur - n_new:cur], attention_mask=am, position_ids=pids,
                                  start_pos=cur - n_new, cache=cache, update_cache=True,
                                  logits_range=(n_new - 1, n_new))
        else:
            out = backend.forward(seq[:, :cur], attention_mask=am,
                                  position_ids=full_pos[:, :cur] if padded else None,
                                  logits_range=(cur - 1, cur))
        return out[:, -1]

    cache = backend.new_cache(B, P + T) if settings.use_cache else None
    t0 = time.perf_counter()
    logits = step(P, P)
    for b in range(B):
        nfe[b] = 1
        n = lengths[b]
        cost[b] += flops.forward(n, (n + 1) / 2, 1 if backend.slices_head else n) \
            if flops else 0.0
    share(secs, active, time.perf_counter() - t0)

    for t in range(T):
        t0 = time.perf_counter()
        was_active = list(active)
        if t == 0 and healing is not None:
            allowed = healing.mask(logits.shape[-1], dev)[torch.tensor(rows, device=dev)]
            logits = logits.masked_fill(~allowed, float("-inf"))
        tok = sample_next(logits, settings.temperature, settings.top_k, settings.top_p, gens)
        tok = tok.masked_fill(~alive, backend.pad_id)
        seq[:, P + t] = tok
        changed = False
        for j, tid in enumerate(tok.tolist()):  # the step's one host-device sync
            b = rows[j]
            if not active[b]:
                continue
            if tid in eos_set:
                active[b], reason[b], changed = False, "eos", True
                continue
            gen[b].append(tid)
            if watcher.hit(gen[b], skip=skip[b]):
                active[b], reason[b], changed = False, "stop", True
            elif len(gen[b]) >= T:
                active[b], changed = False, True
        if not any(active):
            share(secs, was_active, time.perf_counter() - t0)
            break
        if changed:
            dead = [j for j, r in enumerate(rows) if not active[r]]
            if 4 * len(dead) >= len(rows):
                # a quarter of the batch has finished: drop those rows (and their cache) so the
                # remaining steps stop computing answers nobody reads
                keep = [j for j, r in enumerate(rows) if active[r]]
                idx = torch.tensor(keep, device=dev)
                seq, full_mask, full_pos = seq[idx], full_mask[idx], full_pos[idx]
                if cache is not None:
                    cache = backend.select_rows(cache, idx)
                rows = [rows[j] for j in keep]
                gens = [gens[j] for j in keep] if gens is not None else None
            alive = torch.tensor([active[r] for r in rows], device=dev)
        t1 = time.perf_counter()
        share(secs, was_active, t1 - t0)  # sampling and bookkeeping: every row of this step
        t0 = t1
        logits = step(1, P + t + 1)
        for b in range(B):
            if active[b]:
                nfe[b] += 1
                n_key = lengths[b] + t + 1
                head = 1 if backend.slices_head else n_key
                cost[b] += (flops.forward(1, n_key) if cache is not None
                            else flops.forward(n_key, (n_key + 1) / 2, head)) if flops else 0.0
        share(secs, active, time.perf_counter() - t0)  # the forward: rows still decoding

    out = []
    for b in range(B):
        pre = healing.prefix[b] if healing is not None else ""
        completion, raw, n, why = finish(backend.tokenizer, gen[b], stop_sequences, reason[b],
                                         pre)
        out.append(Sample(ids=gen[b], completion=completion, raw=raw, tokens=n, nfe=nfe[b],
                          seconds=secs[b], flops=cost[b], stop_reason=why,
                          extra={"healed": pre} if pre else {}))
    return share_rest(out, t_call)


# ----------------------------------------------------------------------------- next-token sampling

def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k logits and the smallest nucleus with mass >= top_p; others -> -inf.

    top_k = 0 and top_p = 1 disable the filters. The most likely token always survives.
    """
    out = logits
    if top_k and top_k > 0 and top_k < out.shape[-1]:
        kth = out.topk(top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(dim=-1)
        # drop a token when the mass strictly before it already reaches top_p
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        drop[..., 0] = False
        out = out.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), NEG_INF)
    return out


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, generators: list[torch.Generator] | None = None
                ) -> torch.Tensor:
    """Next token [B] from last-position logits [B, V]: greedy at temperature 0, else sampled."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = filter_logits(logits.to(torch.float64) / temperature, top_k, top_p)
    return gumbel_perturb(scaled, 1.0, generators).argmax(dim=-1)
