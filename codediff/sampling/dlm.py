"""Masked-diffusion generation: LLaDA-style semi-autoregressive blocks, with optional KV caches.

The answer region (`gen_length` masks after the prompt; for infilling, between the prompt and
a fixed suffix) is split into blocks of `block_length` decoded left to right. Within a block, each step runs the model, proposes a token for every
masked position (`rules.propose`) and commits some of them (`rules.select`): a fixed count
per step for the schedule samplers (`steps` spread evenly over the blocks), each mask with a
probability per step for Dream's `origin`, or as many as a threshold / factor / entropy budget
allows. Positions after the block are never committed early.

Caching (Fast-dLLM): none, prefix or dual, each a step plan in caches.py (what a step runs).
For a bidirectional model both caches are approximations (cached keys are from the block start);
for the first step of a block and for causal models they are exact.

Batches may mix prompt lengths: prompts are left-padded, pads are hidden by the key mask and
position ids count real tokens only. A row stops early once its answer is decided: an
end-of-text token with no mask before it, or a stop sequence in the decided prefix. Finished
rows leave the batch at the next block start. Per row we record NFE (forward passes it took
part in), seconds (its share of each step's wall time, plus an equal share of the rest of the
call: the samples' seconds add up to the call's wall time) and estimated FLOPs.

On a GPU the repeated steps are CUDA graphs (graphs.py), captured once per batch and replayed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from codediff.sampling import CACHES, graphs
from codediff.sampling.caches import PLANS, Block, StepPlan
from codediff.sampling.common import (
    Healing,
    Sample,
    SamplingBackend,
    StopWatcher,
    finish,
    heal_prompts,
    left_pad,
    share_rest,
)
from codediff.sampling.graphs import LaunchAhead, StepGraphs
from codediff.sampling.rules import (
    CommitRule,
    origin_probabilities,
    propose,
    select,
    transfer_schedule,
    uniform_over_masked,
    uniform_over_sequence,
)

SUPPRESSED = -1e9  # score of a suppressed proposal: below every real score, above "not a candidate"


@dataclass(frozen=True)
class DLMSettings:
    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None        # fixed-step samplers; None = gen_length (one token per step)
    schedule: str = "even"          # schedule samplers: commits per step (rules.transfer_schedule)
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
    # draw the random score's numbers as the reference code does (LLaDA `random`: over the
    # row's whole sequence each step, float32; Dream `origin` always draws so), so that with a
    # generator seeded like torch.manual_seed a row equals the reference run on it alone
    reference_rng: bool = False

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
        if self.rule.fixed_steps and self.total_steps % self.n_blocks:
            raise ValueError(f"steps {self.total_steps} must be a multiple of the number of "
                             f"blocks {self.n_blocks}")
        if self.rule.fixed_steps and self.total_steps < self.n_blocks:
            raise ValueError("steps must be >= the number of blocks")
        if self.reference_rng and (self.rule.score != "random" or self.temperature != 0):
            # other samplers draw nothing at temperature 0; sampling noise is drawn differently
            # from every reference (LLaDA: exp(l) / (-log u)^T; Dream: Categorical sampling)
            raise ValueError("reference_rng applies to the random-score samplers (random, "
                             "origin) at temperature 0 only")

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
def generate_dlm(backend: SamplingBackend, prompts: list[list[int]], settings: DLMSettings,
                 stop_sequences: list[str] | tuple[str, ...] = (),
                 generators: list[torch.Generator] | None = None,
                 heal: bool = False, suffixes: list[list[int]] | None = None) -> list[Sample]:
    """Generate one answer per prompt with a masked diffusion model (`heal`: token healing,
    see common.Healing; it constrains the first answer position).

    `suffixes` (infilling): per row, token ids placed after the answer region, fixed context
    that the model sees and never changes. The sequence is then prompt, `gen_length` masks,
    suffix (right-padded to the batch's longest suffix; the key mask hides the pads), and the
    blocks cover the masked region only, wherever it sits."""
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
    ids, mask, _ = left_pad(prompts, backend.pad_id, dev)
    B, P = ids.shape
    sfx, sfx_mask = right_pad(suffixes, B, backend.pad_id, dev)
    x = torch.cat([ids, torch.full((B, G), backend.mask_id, dtype=torch.long, device=dev), sfx],
                  1)
    attn = torch.cat([mask, torch.ones(B, G, dtype=torch.bool, device=dev), sfx_mask], dim=1)
    # positions count real tokens only: a suffix continues after the answer region, its pads
    # (hidden keys) repeat the last position
    positions = (attn.long().cumsum(dim=1) - 1).clamp(min=0)
    eos = torch.tensor(backend.eos_ids or [-1], device=dev)
    watcher = StopWatcher(backend.tokenizer, stop_sequences)
    run = _Run(backend, settings, eos, watcher, P,
               [len(p) + G + int(m.sum()) for p, m in zip(prompts, sfx_mask, strict=True)],
               [P - len(p) for p in prompts])
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
        ids_b, reason = _answer(x_out[b, P:P + G], backend.mask_id, eos)
        pre = healing.prefix[b] if healing is not None else ""
        completion, raw, n, why = finish(backend.tokenizer, ids_b, stop_sequences, reason, pre)
        extra: dict = {"committed": run.committed[b]}
        if pre:
            extra["healed"] = pre
        out.append(Sample(ids=ids_b, completion=completion, raw=raw, tokens=n,
                          nfe=int(run.nfe[b]), seconds=float(run.secs[b]),
                          flops=float(run.flops[b]), stop_reason=why, extra=extra))
    return share_rest(out, t_call)


def right_pad(suffixes: list[list[int]] | None, batch: int, pad_id: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Suffix ids [B, S] right-padded to the longest, and their key mask [B, S] (True = real);
    S = 0 without suffixes."""
    rows = suffixes if suffixes is not None else [[] for _ in range(batch)]
    if len(rows) != batch:
        raise ValueError(f"{len(rows)} suffixes for {batch} prompts")
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, :len(r)] = True
    return ids.to(device), mask.to(device)


def graphs_used(backend: SamplingBackend, settings: DLMSettings) -> bool:
    """Whether generate_dlm runs its steps as CUDA graphs with these settings: asked for, a
    graphable backend on the current CUDA device, and a step that repeats (a cached mode's
    block start is graphed; without a cache, a block needs more than one step)."""
    repeats = settings.cache != "none" or (
        settings.steps_per_block if settings.rule.fixed_steps else settings.block_length) > 1
    return settings.cuda_graphs and graphs.can_graph(backend.device, backend) and repeats


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
    """State shared by the blocks of one batch: per-row counters, the cache and the graphs."""

    def __init__(self, backend: SamplingBackend, settings: DLMSettings, eos: torch.Tensor,
                 watcher: StopWatcher, prompt_width: int, real_lengths: list[int],
                 pads: list[int]):
        self.b = backend
        self.s = settings
        self.plan = PLANS[settings.cache]
        self.eos = eos
        self.watcher = watcher
        self.P = prompt_width
        self.real = real_lengths             # real tokens (prompt + answer) per original row
        self.pads = pads                     # left pads per original row (its first real column)
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
        self.healing: Healing | None = None  # token healing: constrains answer position 0
        self.allowed: torch.Tensor | None = None  # its tokens allowed there [rows, V]
        self.skip = [0] * n                  # healed characters at the answer's start
        # kept from block to block while the rows stay the same (see block)
        self.graphs = StepGraphs()
        self.cache: Any = None

    # -- one block ---------------------------------------------------------------------------
    def block(self, x: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor, rows: list[int],
              gens: list[torch.Generator] | None, done: list[bool], s: int, e: int) -> None:
        st, b, plan = self.s, self.b, self.plan
        t_last = time.perf_counter()
        mask_id = b.mask_id
        BL = e - s
        k_sched = None  # per step: the commit count (schedule) or probability (origin), [B, steps]
        if st.rule.fixed_schedule:
            k_sched = transfer_schedule((x[:, s:e] == mask_id).sum(dim=1), st.steps_per_block,
                                        st.schedule)
        elif st.rule.rule == "origin":
            k_sched = origin_probabilities(st.steps_per_block, device=x.device).expand(
                x.shape[0], -1)
        n_steps = st.steps_per_block if st.rule.fixed_steps else BL
        rows_np = np.asarray(rows)
        live = ~np.asarray(done)[rows_np]
        live_t = torch.from_numpy(live).to(x.device)
        # a host copy of the block: bookkeeping reads it, so each step syncs with the device once
        blk_host = _host(x[:, s:e])
        use_graphs = st.cuda_graphs and graphs.can_graph(x.device, b)
        # what the graph holds: the whole step (forward, proposals, commits) when the step is
        # deterministic; with sampling noise only the forward (graphs.py)
        whole = st.temperature == 0 and st.rule.score != "random"
        # a graphable backend takes the block's positions as a device tensor, so the steps of
        # every block have one form and one graph serves the whole batch: captured once, not
        # once per block (each capture and its warm-up cost ~10 steps on an H100), until rows
        # leave. The same holds for a cached mode's block start. The prefix cache's window
        # shrinks block by block, so its steps still need a graph per block.
        at = torch.arange(s, e, device=x.device) if b.graphable else None
        if self.graphs.keep_for(tuple(rows)):
            self.cache = None
        if plan.graph_per_block:
            self.graphs.step = None
        if self.allowed is not None and s > self.P:
            # token healing constrains the first block only; later blocks allow every token, in
            # the same tensor (a graph reads it)
            if self.allowed.shape[0] == len(rows):
                self.allowed.fill_(True)
            else:
                self.allowed = self.allowed.new_ones(len(rows), self.allowed.shape[1])
        blk = Block(b, attn if not bool(attn.all()) else None, positions, s, e, at, self.cache)
        steps = _Steps(self, plan, blk, rows, gens, whole)
        lo, hi = plan.window(s, e, x.shape[1])

        def inputs(j: int, window: bool = True) -> tuple[torch.Tensor, ...]:
            """What step j reads: the window (the whole sequence at a block start), the block's
            positions, the live rows, its commit count."""
            k = () if k_sched is None else (k_sched[:, j],)
            return (x[:, lo:hi] if window else x, at, live_t, *k)

        ahead = None  # the next step, launched ahead (graphs.LaunchAhead)
        launcher = LaunchAhead(x[:, s:e]) if use_graphs and whole else None
        full = [self.real[r] for r in rows]   # tokens a full forward runs, per row
        # tokens a step's window runs, per row: its real ones (an infill suffix's right pads
        # inside the window are not counted)
        windowed = attn[:, lo:hi].sum(dim=1).tolist() if plan.cached else full
        for i in range(n_steps):
            has = live & (blk_host == mask_id).any(axis=1)  # rows this step works for
            if not has.any():
                # where the numbers are drawn in a reference's shapes, the steps left draw theirs
                # too, as the reference (which runs every step) does: so a row that finishes its
                # block early consumes the same numbers alone as in a batch that runs on
                for _ in range(i, n_steps):
                    steps.draws(x, s, e)
                break
            n_query = full if not plan.cached or i == 0 else windowed
            if ahead is not None:
                new_blk, ahead = ahead, None
            else:
                if i == 0 and plan.cached:
                    if self.cache is None:
                        self.cache = b.new_cache(x.shape[0], x.shape[1])
                    blk.cache = self.cache
                    # the block start rewrites the whole cache
                    out = self.graphs.run("start", steps.start, inputs(0, window=False)) \
                        if use_graphs else steps.start(*inputs(0, window=False))
                    plan.after_start(self.cache, s, x.shape[1])
                elif use_graphs and (i > 0 or self.graphs.step is not None):
                    # one shape, one cache, for the rest of the batch (prefix: of the block)
                    out = self.graphs.run("step", steps.step, inputs(i))
                else:
                    out = steps.step(*inputs(i))
                k_i = k_sched[:, i] if k_sched is not None else None
                new_blk = out if whole else steps.commit(out, x[:, s:e], live_t, k_i, seq=x)
            x[:, s:e] = new_blk
            if launcher is not None and i + 1 < n_steps:
                new_host, ahead = launcher.copy_then_launch(
                    new_blk, partial(self.graphs.run, "step", steps.step, inputs(i + 1)))
            else:
                new_host = _host(new_blk)  # the step's one sync
            act = np.flatnonzero(has)
            orig = rows_np[act]
            self._account(act, orig, n_query, blk_host, new_host, s, BL)
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

    def _account(self, act: np.ndarray, orig: np.ndarray, n_query: list[int],
                 old: np.ndarray, new: np.ndarray, s: int, BL: int) -> None:
        """A step's per-row counts: forwards, commits, FLOPs, and the answer's tokens so far
        (rows at batch positions `act`, original rows `orig`)."""
        b = self.b
        self.nfe[orig] += 1
        counts = (new[act] != old[act]).sum(axis=1).tolist()
        for j, r, c in zip(act.tolist(), orig.tolist(), counts, strict=True):
            self.committed[r].append(c)
            if b.flops is not None:
                head = BL if b.slices_head else n_query[j]
                self.flops[r] += b.flops.forward(n_query[j], self.real[r], head)
        self.gen_host[orig, s - self.P: s - self.P + BL] = new[act]

    def _commit(self, logits: torch.Tensor, cand: torch.Tensor,
                gens: list[torch.Generator] | None, k: torch.Tensor | None,
                allowed: torch.Tensor | None, uniform: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
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
        x0, conf, ent = propose(logits, st.temperature, st.rule.score, gens, need_entropy,
                                uniform)
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


class _Steps:
    """The step functions of one block, in the form a CUDA graph captures: tensors in, the new
    block tokens out (or only the logits, when the step samples: see graphs.py). A graph reads
    the block's positions from its own input (`at`), so a graph captured in one block serves
    the next ones."""

    def __init__(self, run: _Run, plan: StepPlan, blk: Block, rows: list[int],
                 gens: list[torch.Generator] | None, whole: bool):
        self.run, self.plan, self.blk = run, plan, blk
        self.rows, self.gens, self.whole = rows, gens, whole

    def start(self, x: torch.Tensor, at: torch.Tensor | None, live_t: torch.Tensor,
              *k: torch.Tensor) -> torch.Tensor:
        """A cached mode's block start, from the whole sequence `x`."""
        blk = replace(self.blk, at=at)
        logits = self.plan.start(blk, x)
        if not self.whole:
            return logits
        return self.commit(logits, blk.of_block(x), live_t, k[0] if k else None)

    def step(self, win: torch.Tensor, at: torch.Tensor | None, live_t: torch.Tensor,
             *k: torch.Tensor) -> torch.Tensor:
        """Any other step, from its window of the sequence (plan.window)."""
        blk = replace(self.blk, at=at)
        logits = self.plan.forward(blk, win)
        if not self.whole:
            return logits
        return self.commit(logits, self.plan.block_tokens(blk, win), live_t, k[0] if k else None)

    def draws(self, seq: torch.Tensor, s: int, e: int) -> torch.Tensor | None:
        """The random score's numbers for the block [s, e) of the whole sequence `seq`, where
        they are drawn in a reference's shapes (None: `propose` draws them, [B, block] a step).
        Each row draws as if decoded alone: over its own real tokens, from its own generator."""
        run = self.run
        st = run.s
        if st.rule.score != "random":
            return None
        lengths = [run.real[r] for r in self.rows]
        offsets = [run.pads[r] for r in self.rows]
        if st.rule.rule == "origin":  # always Dream's shape: its own sampler, no older form
            return uniform_over_masked(seq == run.b.mask_id, lengths, offsets, s, e, self.gens)
        if st.reference_rng:
            return uniform_over_sequence(lengths, offsets, s, e, self.gens, seq.device)
        return None

    def commit(self, logits: torch.Tensor, xb: torch.Tensor, live_t: torch.Tensor,
               k: torch.Tensor | None, seq: torch.Tensor | None = None) -> torch.Tensor:
        """The block's tokens `xb` after this step's commits (`seq`: the whole sequence, which
        the random score's reference-shaped draws need; the step is then never graphed)."""
        run = self.run
        if run.healing is not None and run.allowed is None:
            # the answer's first token must extend the healed prompt text (built at block 0's
            # first step, by its eager run: a capture's warm-up when graphed)
            run.allowed = run.healing.mask(logits.shape[-1], logits.device)[self.rows]
        cand = (xb == run.b.mask_id) & live_t.unsqueeze(1)
        uniform = None
        if run.s.rule.score == "random":
            if seq is None:
                raise RuntimeError("the random score's draws need the whole sequence")
            s = self.blk.s
            uniform = self.draws(seq, s, s + xb.shape[1])
        chosen, x0 = run._commit(logits, cand, self.gens, k, run.allowed, uniform)
        return torch.where(chosen, x0, xb)


def _host(t: torch.Tensor) -> np.ndarray:
    """A host copy (on the CPU, .numpy() alone would share the tensor's memory)."""
    return t.cpu().numpy().copy()


def _first(hit: np.ndarray) -> np.ndarray:
    """Per row of a bool [n, L] array: the index of its first True (L if none)."""
    return np.where(hit.any(axis=1), hit.argmax(axis=1), hit.shape[1])
