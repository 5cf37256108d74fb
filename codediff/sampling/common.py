"""What AR decoding and DLM decoding share: the backend interface they use, the Sample they
return, left padding, stop sequences, token healing and the split of wall time over samples."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

# ----------------------------------------------------------------------------- the backend

class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def vocab_size(self) -> int: ...


class Flops(Protocol):
    def forward(self, n_query: int, n_key: int, n_logits: float | None = None) -> float: ...


class SamplingBackend(Protocol):
    """What a sampler needs from a model (codediff.backends.Backend implements it).

    `forward` returns float logits [B, S, V], logits[:, i] predicting token i for a DLM and
    token i + 1 for an AR model; `logits_range` (a, b) or `logits_at` (a device tensor of
    positions) restrict them to those input positions. A cache comes from `new_cache` and is
    read and written by `forward(cache=, update_cache=True)`; `select_rows` keeps some of its
    rows (AR decoding drops finished rows).
    """

    name: str
    tokenizer: Tokenizer
    device: torch.device
    eos_ids: list[int]
    pad_id: int
    mask_id: int | None        # DLMs: the mask token
    flops: Flops | None        # cost model (None: FLOPs are not estimated)
    # the output head runs only on the positions asked for (the FLOPs estimate counts it so)
    slices_head: bool
    # its cache can be rewritten in place at any position, as the DLM prefix / dual caches do
    # at every step (an append-only cache cannot)
    dlm_cache: bool
    # its forward can be captured in a CUDA graph (no host syncs inside) and takes a device
    # tensor for `start_pos` and `logits_at`, so one graph serves every block
    graphable: bool

    def forward(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, start_pos: int | torch.Tensor = 0,
                cache: Any = None, update_cache: bool = False,
                logits_range: tuple[int, int] | None = None,
                logits_at: torch.Tensor | None = None) -> torch.Tensor: ...

    def new_cache(self, batch: int, capacity: int) -> Any: ...

    def select_rows(self, cache: Any, rows: torch.Tensor) -> Any: ...


# ----------------------------------------------------------------------------- samples

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


# ----------------------------------------------------------------------------- prompts and stops

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


def tokens_for(tokenizer: Tokenizer, ids: list[int], completion: str) -> int:
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

    def __init__(self, tokenizer: Tokenizer, stops: list[str] | tuple[str, ...]):
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


def finish(tokenizer: Tokenizer, ids: list[int], stops: list[str] | tuple[str, ...], reason: str,
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


# ----------------------------------------------------------------------------- timing

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


def share(secs: list[float], who: list[bool], dt: float) -> None:
    """Split a step's wall time evenly over the rows that took part in it."""
    n = sum(who)
    if n:
        for b, w in enumerate(who):
            if w:
                secs[b] += dt / n
