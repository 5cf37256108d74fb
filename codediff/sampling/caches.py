"""DLM cache modes as step plans: what a diffusion step runs, and on which part of the sequence.

Every mode shares the step loop (dlm.py) and differs only in its forward:
  none    every step runs the whole sequence (exact).
  prefix  a block start runs the whole sequence and fills the cache; each step then runs the
          block and everything after it, reading the prefix keys/values from the cache.
  dual    like prefix, but the suffix after the block is read from the cache too, so each step
          runs only the block.
A plan is one object per mode: `PLANS[name]`. Adding a cache mode is a subclass here, an entry
in PLANS and its name in codediff.sampling.CACHES.

`Block` holds what the steps of one block read. A graphable backend (see
common.SamplingBackend) takes the block's positions as a device tensor (`Block.at`), so the
steps of every block have one form and one CUDA graph serves them all; other backends take
Python slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from codediff.sampling import CACHES
from codediff.sampling.common import SamplingBackend


@dataclass
class Block:
    """What the steps of one block read: the sequence's masks and positions, the block's
    columns s..e, and the run's cache."""

    backend: SamplingBackend
    attention_mask: torch.Tensor | None  # None when no row is padded
    positions: torch.Tensor              # [B, whole sequence]
    s: int
    e: int
    at: torch.Tensor | None              # arange(s, e) on the device (graphable backends)
    cache: Any = None

    @property
    def position_ids(self) -> torch.Tensor | None:
        return self.positions if self.attention_mask is not None else None

    def of_block(self, t: torch.Tensor) -> torch.Tensor:
        """The block's columns of `t`, a [B, whole sequence] tensor."""
        return t.index_select(1, self.at) if self.at is not None else t[:, self.s:self.e]

    def head(self) -> dict[str, Any]:
        """The forward's argument for scoring the block's positions of the whole sequence."""
        return {"logits_at": self.at} if self.at is not None else {"logits_range": (self.s, self.e)}


class StepPlan:
    """A cache mode: the input window of a step and its forward."""

    name: ClassVar[str]
    cached: ClassVar[bool] = True  # a block start (one full forward) refreshes the cache
    # the step's form changes from block to block, so a graph serves one block only
    graph_per_block: ClassVar[bool] = False

    def window(self, s: int, e: int, length: int) -> tuple[int, int]:
        """Columns lo..hi of the sequence that a step (not a block start) runs."""
        raise NotImplementedError

    def forward(self, blk: Block, win: torch.Tensor) -> torch.Tensor:
        """A step's logits for the block's positions [B, e - s, V] from its window."""
        raise NotImplementedError

    def block_tokens(self, blk: Block, win: torch.Tensor) -> torch.Tensor:
        """The block's tokens in a step's window: a cached window starts at the block (its
        first columns, the same in every block)."""
        return win[:, :blk.e - blk.s]

    def start(self, blk: Block, x: torch.Tensor) -> torch.Tensor:
        """A block start: one full pass (also this step's prediction) rewrites the cache; the
        output head runs on the block's positions only."""
        return blk.backend.forward(x, attention_mask=blk.attention_mask,
                                   position_ids=blk.position_ids, start_pos=0, cache=blk.cache,
                                   update_cache=True, **blk.head())

    def after_start(self, cache: Any, s: int, length: int) -> None:
        """After a block start: a replayed graph does not run the model's Python, so the
        cache's (host-side) valid length is set here."""
        cache.length = length


class NoCache(StepPlan):
    name = "none"
    cached = False

    def window(self, s: int, e: int, length: int) -> tuple[int, int]:
        return 0, length

    def forward(self, blk: Block, win: torch.Tensor) -> torch.Tensor:
        return blk.backend.forward(win, attention_mask=blk.attention_mask,
                                   position_ids=blk.position_ids, **blk.head())

    def block_tokens(self, blk: Block, win: torch.Tensor) -> torch.Tensor:
        return blk.of_block(win)


# In the cached modes the fresh keys/values are written into the cache in place (update_cache)
# rather than concatenated with it, which copied the whole cache every step; same result: each
# step rewrites the slots it reads fresh, and a block start rebuilds the cache.

class PrefixCache(StepPlan):
    name = "prefix"
    graph_per_block = True  # its window (the block and what follows) shrinks block by block

    def window(self, s: int, e: int, length: int) -> tuple[int, int]:
        return s, length

    def forward(self, blk: Block, win: torch.Tensor) -> torch.Tensor:
        s, e = blk.s, blk.e
        pos = blk.positions[:, s:] if blk.attention_mask is not None else None
        return blk.backend.forward(win, attention_mask=blk.attention_mask, position_ids=pos,
                                   start_pos=s, cache=blk.cache, update_cache=True,
                                   logits_range=(0, e - s))

    def after_start(self, cache: Any, s: int, length: int) -> None:
        super().after_start(cache, s, length)
        cache.truncate(s)  # the steps recompute the block and what follows it


class DualCache(StepPlan):
    name = "dual"

    def window(self, s: int, e: int, length: int) -> tuple[int, int]:
        return s, e

    def forward(self, blk: Block, win: torch.Tensor) -> torch.Tensor:
        padded = blk.attention_mask is not None
        if blk.at is not None:  # start_pos as a device tensor: one graph for every block
            pos = blk.positions.index_select(1, blk.at) if padded else None
            return blk.backend.forward(win, attention_mask=blk.attention_mask, position_ids=pos,
                                       start_pos=blk.at[0], cache=blk.cache, update_cache=True)
        pos = blk.positions[:, blk.s:blk.e] if padded else None
        return blk.backend.forward(win, attention_mask=blk.attention_mask, position_ids=pos,
                                   start_pos=blk.s, cache=blk.cache, update_cache=True)


PLANS: dict[str, StepPlan] = {p.name: p for p in (NoCache(), PrefixCache(), DualCache())}
assert tuple(PLANS) == CACHES, "every cache name in codediff.sampling.CACHES needs a plan"
