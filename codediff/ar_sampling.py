"""Autoregressive sampling: batched, left-padded prompts with a KV cache.

One loop serves every backend with a `forward` (native checkpoints, Hugging Face causal LMs):
prefill the left-padded prompts once, then feed one token per row per step. Rows stop at an
end-of-text token, a stop sequence (checked on the decoded text, so sequences spanning several
tokens are found) or `max_new_tokens`; once a quarter of the batch has stopped, those rows
leave it (with their cache rows), and the loop ends when every row has stopped.

Left padding keeps every row's next token in the same column; position ids count only real
tokens and the key-padding mask hides the pads, so a padded row computes what it would alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from codediff.samplers import sample_next


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


@dataclass
class Sample:
    """One generated answer and what it cost."""

    ids: list[int]                 # generated token ids before stop-sequence truncation
    completion: str                # text appended to the prompt (stop sequence cut off)
    raw: str                       # decoded generated text before truncation
    tokens: int                    # tokens that make up `completion`
    nfe: int                       # forward passes this sample took part in
    seconds: float                 # its share of the batch's wall time (see share_rest)
    flops: float                   # estimated forward FLOPs spent on it
    stop_reason: str               # "eos" | "stop" | "length"
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- shared helpers

def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [B, P], key mask [B, P] (True = real token), position ids [B, P] (0 at first real)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = True
    pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def cut_at_stop(text: str, stops: list[str] | tuple[str, ...]) -> tuple[str, bool]:
    """Text before the earliest stop sequence, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def tokens_for(tokenizer: Any, ids: list[int], completion: str) -> int:
    """Smallest n such that decode(ids[:n]) covers `completion` (binary search)."""
    if not completion:
        return 0
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid])) >= len(completion):
            hi = mid
        else:
            lo = mid + 1
    return lo


class StopWatcher:
    """Finds stop sequences in a growing token list by decoding only a recent window."""

    def __init__(self, tokenizer: Any, stops: list[str] | tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        # a stop sequence of c characters spans at most c tokens, +2 for split multi-byte chars
        self.window = max((len(s) for s in self.stops), default=0) + 2

    def hit(self, ids: list[int], new_from: int | None = None, skip: int = 0) -> bool:
        """Does a stop sequence end in ids[new_from:]? (default: only the last token is new).
        `skip` characters at the very start (a token-healing prefix) are not answer text."""
        if not self.stops or not ids:
            return False
        start = len(ids) - 1 if new_from is None else new_from
        lo = max(0, start - self.window)
        tail = self.tokenizer.decode(ids[lo:])
        if lo == 0 and skip:
            tail = tail[skip:]
        return any(s in tail for s in self.stops)


def finish(tokenizer: Any, ids: list[int], stops: list[str] | tuple[str, ...], reason: str,
           prefix: str = "") -> tuple[str, str, int, str]:
    """(completion, raw, tokens, stop_reason) from the generated ids (EOS already removed);
    `prefix` is the token-healing text the answer starts with, which belongs to the prompt."""
    raw = tokenizer.decode(ids)
    if prefix and raw.startswith(prefix):
        raw = raw[len(prefix):]
    completion, hit = cut_at_stop(raw, stops)
    if hit:
        reason = "stop"
    n = tokens_for(tokenizer, ids, prefix + completion) if hit else len(ids)
    return completion, raw, n, reason


# ----------------------------------------------------------------------------- token healing

@dataclass
class Healing:
    """Token healing: take the prompt's last token back and make the answer's first token start
    with its text.

    A prompt that ends inside what the tokenizer would merge with the answer puts the model off
    its training distribution: HumanEval prompts end with a bare "\n", but in code "\n" and the
    next line's indentation form one token, so after a bare "\n" token the model mostly starts
    a new top-level line and the completion comes out empty. Healed, the model may choose that
    merged token. The healed text belongs to the prompt and is removed from the completion.
    """

    prompts: list[list[int]]         # the prompts without their healed token
    prefix: list[str]                # per row, the text the answer must start with ("" = none)
    allowed: list[list[int] | None]  # per row, token ids allowed first (None = any)

    def mask(self, vocab: int, device: torch.device) -> torch.Tensor:
        """[B, vocab] bool: tokens allowed at the first answer position (built once)."""
        key = (vocab, str(device))
        cached = self.__dict__.setdefault("_masks", {})
        if key not in cached:
            m = torch.ones(len(self.allowed), vocab, dtype=torch.bool)
            for b, ids in enumerate(self.allowed):
                if ids is not None:
                    m[b] = False
                    m[b, [i for i in ids if i < vocab]] = True
            cached[key] = m.to(device)
        return cached[key]


def token_strings(tokenizer: Any) -> list[str]:
    """Each token id's text (cached on the tokenizer adapter); special tokens decode to ""."""
    cached = getattr(tokenizer, "_token_strings", None)
    if cached is None:
        cached = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size())]
        tokenizer._token_strings = cached
        tokenizer._extensions = {}
    return cached


def heal_prompts(tokenizer: Any, prompts: list[list[int]]) -> Healing:
    """Heal the last token of each prompt when another token extends its text."""
    strings = token_strings(tokenizer)
    ext: dict[str, list[int]] = tokenizer._extensions
    out, prefix, allowed = [], [], []
    for p in prompts:
        text = strings[p[-1]] if len(p) >= 2 and 0 <= p[-1] < len(strings) else ""
        if text and text not in ext:
            ext[text] = [i for i, s in enumerate(strings) if s.startswith(text)]
        ids = ext.get(text, [])
        if len(ids) > 1:
            out.append(p[:-1])
            prefix.append(text)
            allowed.append(ids)
        else:
            out.append(p)
            prefix.append("")
            allowed.append(None)
    return Healing(out, prefix, allowed)


# ----------------------------------------------------------------------------- AR loop

@torch.no_grad()
def generate_ar(backend: Any, prompts: list[list[int]], settings: ARSettings,
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
    _share(secs, active, time.perf_counter() - t0)

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
            _share(secs, was_active, time.perf_counter() - t0)
            break
        if changed:
            dead = [j for j, r in enumerate(rows) if not active[r]]
            if 4 * len(dead) >= len(rows) and (cache is None or backend.can_select_rows):
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
        _share(secs, was_active, t1 - t0)  # sampling and bookkeeping: every row of this step
        t0 = t1
        logits = step(1, P + t + 1)
        for b in range(B):
            if active[b]:
                nfe[b] += 1
                n_key = lengths[b] + t + 1
                head = 1 if backend.slices_head else n_key
                cost[b] += (flops.forward(1, n_key) if cache is not None
                            else flops.forward(n_key, (n_key + 1) / 2, head)) if flops else 0.0
        _share(secs, active, time.perf_counter() - t0)  # the forward: rows still decoding

    out = []
    for b in range(B):
        pre = healing.prefix[b] if healing is not None else ""
        completion, raw, n, why = finish(backend.tokenizer, gen[b], stop_sequences, reason[b],
                                         pre)
        out.append(Sample(ids=gen[b], completion=completion, raw=raw, tokens=n, nfe=nfe[b],
                          seconds=secs[b], flops=cost[b], stop_reason=why,
                          extra={"healed": pre} if pre else {}))
    return share_rest(out, t_call)


def share_rest(samples: list[Sample], t_call: float) -> list[Sample]:
    """Give each sample an equal share of the call's time outside its steps (padding the
    prompts, between blocks, decoding the answers), so the samples' seconds add up to the wall
    time of the whole call: tokens / seconds is then the batch's throughput, and every sampler
    is timed the same way."""
    if samples:
        rest = time.perf_counter() - t_call - sum(s.seconds for s in samples)
        for s in samples:
            s.seconds += max(rest, 0.0) / len(samples)
    return samples


def _share(secs: list[float], who: list[bool], dt: float) -> None:
    """Split a step's wall time evenly over the rows that took part in it."""
    n = sum(who)
    if n:
        for b, w in enumerate(who):
            if w:
                secs[b] += dt / n
