"""CUDA graphs of DLM steps: capture at first use, replay, and launching the next step ahead.

A batch's repeated step is captured once and replayed (native models on a GPU; the same
kernels, so the same samples: docs/benchmarks.md). What a graph holds: the whole step
(forward, proposals, commits) when the step is deterministic; with sampling noise only the
forward (the per-row generators stay outside the graph, so graphed and eager samples stay the
same). A cached mode's block start (one full forward) has a graph of its own.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Callable

import numpy as np
import torch

from codediff.sampling.common import SamplingBackend


def can_graph(device: torch.device, backend: SamplingBackend) -> bool:
    """Steps on `device` through `backend` can be captured (a graphable backend on the current
    CUDA device)."""
    # streams and captures belong to the current device: a model on another GPU (a torchrun
    # rank > 0, --device cuda:1) would capture an empty graph, so it stays eager
    return device.type == "cuda" and backend.graphable and \
        device.index in (None, torch.cuda.current_device())


class StepGraphs:
    """The graphs of one batch, kept from block to block while its rows stay the same: the
    steady step's (prefix cache: of the block) and a cached mode's block start's. Each is
    captured at its first use.

    What a graph reads without owning it (the cache, the masks, the positions) is held by the
    run for as long as the graph is replayed; the graph does not hold it, since the last graph
    outlives the run (_GraphMemory) and would keep a cache of the whole batch alive."""

    def __init__(self) -> None:
        self.rows: tuple[int, ...] | None = None
        self.start: BlockGraph | None = None
        self.step: BlockGraph | None = None

    def keep_for(self, rows: tuple[int, ...]) -> bool:
        """Drop the graphs when the batch's rows changed; True if they did."""
        if rows == self.rows:
            return False
        self.rows, self.start, self.step = rows, None, None
        return True

    def run(self, which: str, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]
            ) -> torch.Tensor:
        """`fn(*inputs)` through the graph `which` ("start" or "step"), captured now if new."""
        g = self.start if which == "start" else self.step
        if g is not None:
            return g(*inputs)
        out, g = BlockGraph.warm_and_capture(fn, inputs)
        if which == "start":
            self.start = g
        else:
            self.step = g
        return out


class LaunchAhead:
    """The next step launched ahead: with the whole step graphed, step i + 1's replay is queued
    right behind step i's copy to the host, before the host has looked at step i, so the GPU
    never waits for the host's bookkeeping (~1 ms a step at batch 64 on an H100 before session
    4) nor for the round trip of the copy. If the block turns out to be decided after step i,
    that step is wasted (once per block); rows that step i finished get their tokens back (the
    caller's job). Its cache writes (the block's slots; with the prefix cache, the block and
    what follows) are rewritten by the next block start before anything reads them."""

    def __init__(self, like: torch.Tensor):
        self.pinned = torch.empty(like.shape, dtype=like.dtype, pin_memory=like.is_cuda)

    def copy_then_launch(self, t: torch.Tensor, launch: Callable[[], torch.Tensor]
                         ) -> tuple[np.ndarray, torch.Tensor]:
        """A host copy of `t` (the step's one sync) and the output of `launch()`, queued on the
        device behind the copy."""
        cuda = t.is_cuda
        self.pinned.copy_(t, non_blocking=cuda)
        copied = torch.cuda.Event() if cuda else None
        if copied is not None:
            copied.record()
        ahead = launch()
        if copied is not None:
            copied.synchronize()
        return self.pinned.numpy().copy(), ahead


class _GraphMemory:
    """What all captures on one GPU share, for the life of the process: one memory pool, one
    side stream, and the graph captured last.

    A graph's private pool is not given back to the driver when the graph is destroyed (only an
    `empty_cache` outside a capture does that), so a fresh pool per block graph grew the reserved
    memory block after block until a capture ran out of memory (measured on an H100: batch 128,
    after five configurations of 128 prompts). Sharing one pool lets each capture reuse what the
    previous graphs freed. But the allocator asserts (`use_count > 0`, torch 2.11, also seen on
    the H100) when a capture joins a shared pool whose graphs are all gone, so the last graph is
    kept alive until the next capture has joined the pool. Graphs sharing a pool may place
    their outputs in memory another graph of the pool uses for its temporaries, so a graph's
    output is good only until another graph of the pool is replayed: a batch alternates its
    block-start graph and its step graph, and copies each output out before the next replay;
    graphs of an earlier batch are never replayed again. One
    stream for every warm-up and capture keeps the warm-ups' eager memory in one stream's cache
    instead of stranding it in the cache of a new stream per block."""

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()
        self.last: BlockGraph | None = None


_GRAPH_MEMORY: dict[int, _GraphMemory] = {}
# drop the kept graphs while CUDA is still up, not in the interpreter's final teardown
atexit.register(_GRAPH_MEMORY.clear)


def _graph_memory() -> _GraphMemory:
    dev = torch.cuda.current_device()
    if dev not in _GRAPH_MEMORY:
        _GRAPH_MEMORY[dev] = _GraphMemory()
    return _GRAPH_MEMORY[dev]


class BlockGraph:
    """A CUDA graph of one form of step: the steady step (captured at its first use, replayed
    for the rest of the batch; prefix cache: of the block) or a cached mode's block start.
    Inputs are copied into the captured input tensors; the output tensor is the graph's own and
    is overwritten by the next replay (the sampler copies it out at once).

    The capture calls CUDAGraph.capture_begin/end itself rather than `torch.cuda.graph`, whose
    entry empties the allocator's cache: once per block, that would hand every cached block of
    eager memory back to the driver. Memory: see _GraphMemory."""

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
                 mem: _GraphMemory):
        self.inputs = tuple(t.clone() for t in inputs)  # on the stream that replays the graph
        self.graph = torch.cuda.CUDAGraph()
        mem.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(mem.stream):
            # thread_local: a CUDA call from another thread (a progress bar, a loader) does not
            # break this capture
            self.graph.capture_begin(pool=mem.pool, capture_error_mode="thread_local")
            try:
                self.out = fn(*self.inputs)
            except BaseException:
                # end the capture, but report the step's own error, not the invalidated capture's
                with contextlib.suppress(RuntimeError):
                    self.graph.capture_end()
                raise
            self.graph.capture_end()
        torch.cuda.current_stream().wait_stream(mem.stream)
        mem.last = self  # the previous graph may go now: this one holds the pool

    @classmethod
    def warm_and_capture(cls, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]
                         ) -> tuple[torch.Tensor, BlockGraph]:
        """This step's output, computed on the side stream (the warm-up a capture needs), and
        the graph for the steps after it."""
        mem = _graph_memory()
        mem.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(mem.stream):
            out = fn(*inputs)
        torch.cuda.current_stream().wait_stream(mem.stream)
        out.record_stream(torch.cuda.current_stream())  # used there; freed only after that use
        return out, cls(fn, inputs, mem)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for dst, src in zip(self.inputs, inputs, strict=True):
            dst.copy_(src)
        self.graph.replay()
        return self.out
