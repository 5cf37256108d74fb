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


def by_prompt_length(tokenizer: Any, prompts: list[list[int]], gens: list[torch.Generator],
                     run: Callable[[list[list[int]], list[torch.Generator]], list[Sample]],
                     heal: bool = False) -> list[Sample]:
    """`run` on the rows of each prompt length (the length after token healing, which `run`
    applies again to the same prompts), the samples back in the order of `prompts`."""
    lengths = [len(p) for p in (heal_prompts(tokenizer, prompts).prompts if heal else prompts)]
    out: list[Sample | None] = [None] * len(prompts)
    for n in sorted(set(lengths)):
        rows = [i for i, m in enumerate(lengths) if m == n]
        for i, s in zip(rows, run([prompts[i] for i in rows], [gens[i] for i in rows]),
                        strict=True):
            out[i] = s
    return [s for s in out if s is not None]
