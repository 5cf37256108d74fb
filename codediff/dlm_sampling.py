"""Masked-diffusion generation: LLaDA-style semi-autoregressive blocks, with optional KV caches.

The answer region (`gen_length` masks after the prompt) is split into blocks of `block_length`
decoded left to right. Within a block, each step runs the model, proposes a token for every
masked position (`samplers.propose`) and commits some of them (`samplers.select`): a fixed count
per step for the schedule samplers (`steps` spread evenly over the blocks), or as many as a
threshold / factor / entropy budget allows. Positions after the block are never committed early.

Caching (Fast-dLLM):
  none    every step runs the whole sequence (exact).
  prefix  at each block start one full forward fills the cache; each step then recomputes only
          the block and everything after it, reading the prefix keys/values from the cache.
  dual    like prefix, but the suffix after the block is read from the cache too, so each step
          runs only `block_length` tokens.
For a bidirectional model both caches are approximations (cached keys are from the block start);
for the first step of a block and for causal models they are exact.

Batches may mix prompt lengths: prompts are left-padded, pads are hidden by the key mask and
position ids count real tokens only. A row stops early once its answer is decided: an
end-of-text token with no mask before it, or a stop sequence in the decided prefix. Finished
rows leave the batch at the next block start. Per row we record NFE (forward passes it took
part in), seconds (its share of each step's wall time, plus an equal share of the rest of the
call: the samples' seconds add up to the call's wall time) and estimated FLOPs.
"""

from __future__ import annotations

import atexit
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from codediff.ar_sampling import Sample, StopWatcher, finish, heal_prompts, left_pad, share_rest
from codediff.samplers import CommitRule, propose, select, transfer_schedule
from codediff.sampling import CACHES

SUPPRESSED = -1e9  # score of a suppressed proposal: below every real score, above "not a candidate"


@dataclass(frozen=True)
class DLMSettings:
    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None        # schedule samplers; None = gen_length (one token per step)
    temperature: float = 0.0        # Gumbel-max temperature; 0 = argmax
    rule: CommitRule = CommitRule()
    cache: str = "none"
    logits_eos_inf: bool = False     # never propose end-of-text (LLaDA eval option)
    confidence_eos_inf: bool = False  # propose it, but commit it last (LLaDA eval option)
    early_stop: bool = True
    # CUDA graphs (native models on a GPU; elsewhere ignored): the repeated step is captured
    # once per batch and replayed; same kernels, so the same samples (measured on an H100:
    # docs/benchmarks.md)
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.gen_length < 1 or self.block_length < 1:
            raise ValueError("gen_length and block_length must be >= 1")
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length {self.gen_length} must be a multiple of block_length "
                             f"{self.block_length}")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.rule.fixed_schedule and self.total_steps % self.n_blocks:
            raise ValueError(f"steps {self.total_steps} must be a multiple of the number of "
                             f"blocks {self.n_blocks}")
        if self.rule.fixed_schedule and self.total_steps < self.n_blocks:
            raise ValueError("steps must be >= the number of blocks")

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    @property
    def steps_per_block(self) -> int:
        return self.total_steps // self.n_blocks


@torch.no_grad()
def generate_dlm(backend: Any, prompts: list[list[int]], settings: DLMSettings,
                 stop_sequences: list[str] | tuple[str, ...] = (),
                 generators: list[torch.Generator] | None = None,
                 heal: bool = False) -> list[Sample]:
    """Generate one answer per prompt with a masked diffusion model (`heal`: token healing,
    see ar_sampling.Healing; it constrains the first answer position)."""
    t_call = time.perf_counter()
    if backend.mask_id is None:
        raise ValueError("DLM generation needs a mask token id")
    if settings.cache != "none" and not backend.dlm_cache:
        raise ValueError(f"backend {backend.name} has no KV cache that diffusion steps can "
                         "rewrite in place; use cache='none'")
    dev = backend.device
    G, BL = settings.gen_length, settings.block_length
    healing = heal_prompts(backend.tokenizer, prompts) if heal else None
    if healing is not None:
        prompts = healing.prompts
    ids, mask, pos = left_pad(prompts, backend.pad_id, dev)
    B, P = ids.shape
    x = torch.cat([ids, torch.full((B, G), backend.mask_id, dtype=torch.long, device=dev)], 1)
    attn = torch.cat([mask, torch.ones(B, G, dtype=torch.bool, device=dev)], dim=1)
    positions = torch.cat([pos, pos[:, -1:] + torch.arange(1, G + 1, device=dev)], dim=1)
    eos = torch.tensor(backend.eos_ids or [-1], device=dev)
    watcher = StopWatcher(backend.tokenizer, stop_sequences)
    run = _Run(backend, settings, eos, watcher, P, [len(p) + G for p in prompts])
    if healing is not None:
        run.healing = healing
        run.skip = [len(text) for text in healing.prefix]

    rows = list(range(B))                      # original index of each live row
    gens = list(generators) if generators is not None else None
    done = [False] * B                         # indexed by original row
    x_out = x.clone()                          # final tokens, by original row

    for blk in range(settings.n_blocks):
        # finished rows leave the batch here, where every cache is rebuilt anyway
        keep = [i for i, r in enumerate(rows) if not done[r]]
        if not keep:
            break
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=dev)
            x, attn, positions = x[idx], attn[idx], positions[idx]
            rows = [rows[i] for i in keep]
            gens = [gens[i] for i in keep] if gens is not None else None
        s, e = P + blk * BL, P + (blk + 1) * BL
        run.block(x, attn, positions, rows, gens, done, s, e)
        x_out[torch.tensor(rows, device=dev)] = x
        if all(done):
            break

    out = []
    for b in range(B):
        ids_b, reason = _answer(x_out[b, P:], backend.mask_id, eos)
        pre = healing.prefix[b] if healing is not None else ""
        completion, raw, n, why = finish(backend.tokenizer, ids_b, stop_sequences, reason, pre)
        extra: dict = {"committed": run.committed[b]}
        if pre:
            extra["healed"] = pre
        out.append(Sample(ids=ids_b, completion=completion, raw=raw, tokens=n,
                          nfe=int(run.nfe[b]), seconds=float(run.secs[b]),
                          flops=float(run.flops[b]), stop_reason=why, extra=extra))
    return share_rest(out, t_call)


def _answer(gen: torch.Tensor, mask_id: int, eos: torch.Tensor) -> tuple[list[int], str]:
    """The decided answer: tokens before the first end-of-text (or first mask, if any left)."""
    g = gen.tolist()
    eos_set = set(eos.tolist())
    for i, t in enumerate(g):
        if t in eos_set:
            return g[:i], "eos"
        if t == mask_id:
            return g[:i], "stop"  # only left behind after an early stop
    return g, "length"


class _Run:
    """State shared by the blocks of one batch: per-row counters and the step logic."""

    def __init__(self, backend: Any, settings: DLMSettings, eos: torch.Tensor,
                 watcher: StopWatcher, prompt_width: int, real_lengths: list[int]):
        self.b = backend
        self.s = settings
        self.eos = eos
        self.watcher = watcher
        self.P = prompt_width
        self.real = real_lengths             # real tokens (prompt + answer) per original row
        n = len(real_lengths)
        # per original row; numpy, because the host bookkeeping of a step is on the critical
        # path of every step (with CUDA graphs the GPU waits for it)
        self.nfe = np.zeros(n, dtype=np.int64)
        self.secs = np.zeros(n)
        self.flops = np.zeros(n)
        self.committed: list[list[int]] = [[] for _ in range(n)]  # commits per forward
        self.decided = [0] * n               # decided-prefix length already checked for stops
        self.gen_host = np.full((n, settings.gen_length), backend.mask_id, dtype=np.int64)
        self.eos_ids = list(backend.eos_ids)
        self.healing = None                  # token healing: constrains answer position 0
        self.allowed: torch.Tensor | None = None  # its tokens allowed there [rows, V]
        self.skip = [0] * n                  # healed characters at the answer's start
        # kept from block to block while the rows stay the same (see block)
        self.key: tuple | None = None
        self.graph: _BlockGraph | None = None        # the steady step's
        self.start_graph: _BlockGraph | None = None  # a cached mode's block start
        self.cache: Any = None

    # -- one block ---------------------------------------------------------------------------
    def block(self, x: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor, rows: list[int],
              gens: list[torch.Generator] | None, done: list[bool], s: int, e: int) -> None:
        st, b = self.s, self.b
        t_last = time.perf_counter()
        padded = not bool(attn.all())
        am = attn if padded else None
        mask_id = b.mask_id
        BL = e - s
        k_sched = None
        if st.rule.fixed_schedule:
            k_sched = transfer_schedule((x[:, s:e] == mask_id).sum(dim=1), st.steps_per_block)
        n_steps = st.steps_per_block if st.rule.fixed_schedule else BL
        rows_np = np.asarray(rows)
        live = ~np.asarray(done)[rows_np]
        live_t = torch.from_numpy(live).to(x.device)
        # a host copy of the block: bookkeeping reads it, so each step syncs with the device once
        blk_host = _host(x[:, s:e])
        graphs = st.cuda_graphs and _can_graph(x, b)
        # what the graph holds: the whole step (forward, proposals, commits) when the step is
        # deterministic; with sampling noise only the forward (the per-row generators stay
        # outside the graph, so graphed and eager samples stay the same)
        whole = st.temperature == 0 and st.rule.score != "random"
        # a native model takes the block's positions as a device tensor (blk), so the steps of every
        # block have one form and one graph serves the whole batch: captured once, not once per
        # block (each capture and its warm-up cost ~10 steps on an H100), until rows leave. The
        # same holds for a cached mode's block start (one full forward), which has a graph of
        # its own. The prefix cache's window shrinks block by block, so its steps still need a
        # graph per block.
        on_device = b.graphable
        blk = torch.arange(s, e, device=x.device) if on_device else None
        key = tuple(rows)
        if key != self.key:
            self.key, self.graph, self.start_graph, self.cache = key, None, None, None
        if st.cache == "prefix":
            self.graph = None
        if self.allowed is not None and s > self.P:
            # token healing constrains the first block only; later blocks allow every token, in
            # the same tensor (a graph reads it)
            if self.allowed.shape[0] == len(rows):
                self.allowed.fill_(True)
            else:
                self.allowed = self.allowed.new_ones(len(rows), self.allowed.shape[1])

        # the input of every step but a cached mode's first: the whole sequence without a cache,
        # the block and what follows it (prefix), the block alone (dual)
        lo, hi = (0, x.shape[1]) if st.cache == "none" else (s, x.shape[1]) \
            if st.cache == "prefix" else (s, e)

        def of_block(t: torch.Tensor, blk: torch.Tensor | None) -> torch.Tensor:
            """The block's columns of `t`, a [B, whole sequence] tensor."""
            return t.index_select(1, blk) if blk is not None else t[:, s:e]

        def steady(inp: torch.Tensor, blk: torch.Tensor | None) -> torch.Tensor:
            """The forward of such a step: logits for the block's positions [B, e - s, V]."""
            cache = self.cache
            if st.cache == "none":
                pos = positions if padded else None
                if on_device:
                    return b.forward(inp, attention_mask=am, position_ids=pos, logits_at=blk)
                return b.forward(inp, attention_mask=am, position_ids=pos, logits_range=(s, e))
            # the fresh keys/values are written into the cache in place (update_cache) rather
            # than concatenated with it, which copied the whole cache every step; same result:
            # each step rewrites the slots it reads fresh, and a block start rebuilds the cache
            if st.cache == "dual" and on_device:
                pos = positions.index_select(1, blk) if padded else None
                return b.forward(inp, attention_mask=am, position_ids=pos, start_pos=blk[0],
                                 cache=cache, update_cache=True)
            pos = positions[:, lo:hi] if padded else None
            return b.forward(inp, attention_mask=am, position_ids=pos, start_pos=s, cache=cache,
                             update_cache=True,
                             logits_range=(0, BL) if st.cache == "prefix" else None)

        def commit(logits: torch.Tensor, xb: torch.Tensor, live_t: torch.Tensor,
                   k: torch.Tensor | None) -> torch.Tensor:
            """The block's tokens after this step's commits."""
            if self.healing is not None and self.allowed is None:
                # the answer's first token must extend the healed prompt text (built at block
                # 0's first step, by its eager run: a capture's warm-up when graphed)
                self.allowed = self.healing.mask(logits.shape[-1], logits.device)[rows]
            cand = (xb == mask_id) & live_t.unsqueeze(1)
            chosen, x0 = self._commit(logits, cand, gens, k, self.allowed)
            return torch.where(chosen, x0, xb)

        def start(xf: torch.Tensor, blk: torch.Tensor | None, live_t: torch.Tensor,
                  *k: torch.Tensor) -> torch.Tensor:
            """A cached mode's block start: one full pass (also this step's prediction) refreshes
            the cache; the output head runs on the block's positions only. As the graph holds
            it: the new block tokens, or only the logits."""
            logits = b.forward(xf, attention_mask=am, position_ids=positions if padded else None,
                               start_pos=0, cache=self.cache, update_cache=True,
                               **({"logits_at": blk} if on_device
                                  else {"logits_range": (s, e)}))
            if not whole:
                return logits
            return commit(logits, of_block(xf, blk), live_t, k[0] if k else None)

        def step(win: torch.Tensor, blk: torch.Tensor | None, live_t: torch.Tensor,
                 *k: torch.Tensor) -> torch.Tensor:
            """A steady step as the graph holds it: the new block tokens, or only the logits."""
            logits = steady(win, blk)
            if not whole:
                return logits
            # a cached window starts at the block: its first columns, the same in every block
            xb = of_block(win, blk) if st.cache == "none" else win[:, :BL]
            return commit(logits, xb, live_t, k[0] if k else None)

        def inputs(j: int, window: bool = True) -> tuple[torch.Tensor, ...]:
            """What step j reads: the window (the whole sequence at a block start), the block's
            positions, the live rows, its commit count."""
            k = () if k_sched is None else (k_sched[:, j],)
            return (x[:, lo:hi] if window else x, blk, live_t, *k)

        def replay(which: str, j: int) -> torch.Tensor:
            """Step j through its graph, captured at its first use."""
            g = self.start_graph if which == "start" else self.graph
            if g is not None:
                return g(*inputs(j, which != "start"))
            # what the graph reads without owning it (the cache, the masks, the positions) is
            # held by this run for as long as the graph is replayed; the graph does not hold
            # it, since the last graph outlives the run (_GraphMemory) and would keep a cache
            # of the whole batch alive
            out, g = _BlockGraph.warm_and_capture(start if which == "start" else step,
                                                  inputs(j, which != "start"))
            if which == "start":
                self.start_graph = g
            else:
                self.graph = g
            return out

        # the next step launched ahead: with the whole step graphed, step i + 1's replay is
        # queued right behind step i's copy to the host, before the host has looked at step i,
        # so the GPU never waits for the host's bookkeeping (~1 ms a step at batch 64 on an
        # H100 before session 4) nor for the round trip of the copy. If the block turns out to be
        # decided after step i, that step is wasted (once per block); rows that step i finished
        # get their tokens back (below). Its cache writes (the block's slots; with the prefix
        # cache, the block and what follows) are rewritten by the next block start before
        # anything reads them.
        ahead = None
        pinned = torch.empty(x.shape[0], BL, dtype=x.dtype, pin_memory=x.is_cuda) \
            if graphs and whole else None
        full = [self.real[r] for r in rows]   # tokens a full forward runs, per row
        for i in range(n_steps):
            has = live & (blk_host == mask_id).any(axis=1)  # rows this step works for
            if not has.any():
                break
            k_i = k_sched[:, i] if k_sched is not None else None
            n_query = full if st.cache == "none" or i == 0 else [hi - lo] * len(rows)
            if ahead is not None:
                new_blk, ahead = ahead, None
            else:
                if i == 0 and st.cache != "none":
                    if self.cache is None:
                        self.cache = b.new_cache(x.shape[0], x.shape[1])
                    # the block start rewrites the whole cache; a replay does not run the
                    # model's Python, so the cache's (host-side) valid length is set here
                    out = replay("start", 0) if graphs else start(*inputs(0, window=False))
                    self.cache.length = x.shape[1]
                    if st.cache == "prefix":
                        self.cache.truncate(s)
                elif graphs and (i > 0 or self.graph is not None):
                    # one shape, one cache, for the rest of the batch (prefix: of the block)
                    out = replay("step", i)
                else:
                    out = step(*inputs(i))
                new_blk = out if whole else commit(out, x[:, s:e], live_t, k_i)
            x[:, s:e] = new_blk
            if pinned is not None and i + 1 < n_steps:
                # the step's one sync, with the next step already queued behind it (see ahead)
                pinned.copy_(new_blk, non_blocking=x.is_cuda)
                copied = torch.cuda.Event() if x.is_cuda else None
                if copied is not None:
                    copied.record()
                ahead = replay("step", i + 1)
                if copied is not None:
                    copied.synchronize()
                new_host = pinned.numpy().copy()
            else:
                new_host = _host(new_blk)  # the step's one sync
            act = np.flatnonzero(has)
            orig = rows_np[act]
            self.nfe[orig] += 1
            counts = (new_host[act] != blk_host[act]).sum(axis=1).tolist()
            for j, r, c in zip(act.tolist(), orig.tolist(), counts, strict=True):
                self.committed[r].append(c)
                if b.flops is not None:
                    head = BL if b.slices_head else n_query[j]
                    self.flops[r] += b.flops.forward(n_query[j], self.real[r], head)
            self.gen_host[orig, s - self.P: e - self.P] = new_host[act]
            blk_host = new_host
            if st.early_stop and self._check_done(orig, done):
                was_live, live = live, ~np.asarray(done)[rows_np]
                live_t = torch.from_numpy(live).to(x.device)
                if ahead is not None:
                    # the step launched ahead ran with the rows that have just finished still
                    # live: they keep this step's tokens, as if it had run after this check
                    stopped = torch.from_numpy(was_live & ~live).to(x.device)
                    ahead = torch.where(stopped.unsqueeze(1), x[:, s:e], ahead)
            # a step's time runs from the end of the previous one: device work, the sync and the
            # host bookkeeping, shared by the rows it worked for
            now = time.perf_counter()
            self.secs[orig] += (now - t_last) / len(act)
            t_last = now

    def _commit(self, logits: torch.Tensor, cand: torch.Tensor,
                gens: list[torch.Generator] | None, k: torch.Tensor | None,
                allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        st, b = self.s, self.b
        # `logits` are this step's own (a forward's fresh output, or the graph's output tensor
        # that the next replay overwrites), so they are edited in place: a copy would be two
        # more passes over [B, block, vocab] every step
        logits[..., b.mask_id] = float("-inf")  # a mask is never an answer
        if allowed is not None:  # token healing: the block's first position (see block)
            logits[:, 0].masked_fill_(~allowed, float("-inf"))
        if st.logits_eos_inf and b.eos_ids:
            # index with the device tensor: a Python list would be copied from the host, which
            # a CUDA graph capture does not allow
            logits.index_fill_(-1, self.eos, float("-inf"))
        need_entropy = st.rule.rule == "entropy_bounded"
        x0, conf, ent = propose(logits, st.temperature, st.rule.score, gens, need_entropy)
        if st.confidence_eos_inf:
            conf = conf.masked_fill(torch.isin(x0, self.eos), SUPPRESSED)
        return select(st.rule, conf, ent, cand, k), x0

    def _check_done(self, touched: np.ndarray, done: list[bool]) -> bool:
        """Mark rows (original indices `touched`) whose answer is decided: an EOS with no mask
        before it, or a stop sequence inside the decided prefix (the tokens before the first
        mask). True if any changed."""
        idx = np.asarray([r for r in touched.tolist() if not done[r]], dtype=np.int64)
        if not len(idx):
            return False
        g = self.gen_host[idx]
        first_mask = _first(g == self.b.mask_id)
        first_eos = _first(np.isin(g, self.eos_ids)) if self.eos_ids else \
            np.full(len(idx), g.shape[1])
        changed = False
        for k, r in enumerate(idx.tolist()):
            if first_eos[k] < first_mask[k]:
                done[r] = changed = True
                continue
            decided = int(min(first_mask[k], first_eos[k]))
            if self.watcher.stops and decided > self.decided[r]:
                if self.watcher.hit(g[k, :decided].tolist(), new_from=self.decided[r],
                                    skip=self.skip[r]):
                    done[r] = changed = True
                self.decided[r] = decided
        return changed


def _can_graph(x: torch.Tensor, backend: Any) -> bool:
    # streams and captures belong to the current device: a model on another GPU (a torchrun
    # rank > 0, --device cuda:1) would capture an empty graph, so it stays eager
    return x.is_cuda and backend.graphable and \
        x.device.index in (None, torch.cuda.current_device())


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
        self.last: _BlockGraph | None = None


_GRAPH_MEMORY: dict[int, _GraphMemory] = {}
# drop the kept graphs while CUDA is still up, not in the interpreter's final teardown
atexit.register(_GRAPH_MEMORY.clear)


def _graph_memory() -> _GraphMemory:
    dev = torch.cuda.current_device()
    if dev not in _GRAPH_MEMORY:
        _GRAPH_MEMORY[dev] = _GraphMemory()
    return _GRAPH_MEMORY[dev]


class _BlockGraph:
    """A CUDA graph of one form of step: the steady step (captured at its first use, replayed
    for the rest of the batch; prefix cache: of the block) or a cached mode's block start.
    Inputs are copied into the captured input tensors; the output tensor is the graph's own and
    is overwritten by the next replay (the sampler copies it out at once).

    The capture calls CUDAGraph.capture_begin/end itself rather than `torch.cuda.graph`, whose
    entry empties the allocator's cache: once per block, that would hand every cached block of
    eager memory back to the driver. Memory: see _GraphMemory."""

    def __init__(self, fn, inputs: tuple[torch.Tensor, ...], mem: _GraphMemory):
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
    def warm_and_capture(cls, fn, inputs: tuple[torch.Tensor, ...]
                         ) -> tuple[torch.Tensor, _BlockGraph]:
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


def _host(t: torch.Tensor) -> np.ndarray:
    """A host copy (on the CPU, .numpy() alone would share the tensor's memory)."""
    return t.cpu().numpy().copy()


def _first(hit: np.ndarray) -> np.ndarray:
    """Per row of a bool [n, L] array: the index of its first True (L if none)."""
    return np.where(hit.any(axis=1), hit.argmax(axis=1), hit.shape[1])
