"""Batches for models whose code ignores the padding mask: one prompt length at a time.

Fast-dLLM's and the hub's LLaDA code build a padding bias but never pass it to attention, and
Dream numbers positions 0..L-1 whatever it is given: in a left-padded batch the short rows attend
to pads and answer differently than alone (3 of 4 rows changed at batch 4). Running the rows of
each (token-healed) prompt length together leaves nothing to pad, so a sample never depends on
its batch neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from codediff.sampling.common import Sample, heal_prompts

Run = Callable[[list[list[int]], list[torch.Generator], list[list[int]] | None], list[Sample]]


def by_prompt_length(tokenizer: Any, prompts: list[list[int]], gens: list[torch.Generator],
                     run: Run, heal: bool = False,
                     suffixes: list[list[int]] | None = None) -> list[Sample]:
    """`run` on the rows of each prompt length (the length after token healing, which `run`
    applies again to the same prompts) and, for infill prompts, each suffix length (suffixes
    are right-padded), the samples back in the order of `prompts`."""
    lengths = [len(p) for p in (heal_prompts(tokenizer, prompts).prompts if heal else prompts)]
    keys = [(n, len(suffixes[i]) if suffixes is not None else 0) for i, n in enumerate(lengths)]
    out: list[Sample | None] = [None] * len(prompts)
    for key in sorted(set(keys)):
        rows = [i for i, k in enumerate(keys) if k == key]
        sfx = [suffixes[i] for i in rows] if suffixes is not None else None
        for i, s in zip(rows, run([prompts[i] for i in rows], [gens[i] for i in rows], sfx),
                        strict=True):
            out[i] = s
    return [s for s in out if s is not None]
