"""Generation: AR with a KV cache, DLM samplers and caches, backends, and `codediff generate`.

Models are tiny and random (built here, float64 so equalities are exact); the tokenizer is a
small byte-level BPE trained here on standard-library source.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codediff.backends import NativeBackend, ShiftedView, load_backend, native_backend
from codediff.model import ModelConfig, Transformer
from codediff.sampling import common, dlm, graphs
from codediff.sampling.ar import ARSettings, generate_ar
from codediff.sampling.common import cut_at_stop, left_pad
from codediff.sampling.dlm import DLMSettings, generate_dlm
from codediff.sampling.rules import CommitRule

EOT, MASK, PAD = 0, 1, 2
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tok():
    import textwrap as tw

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|mask|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator([inspect.getsource(m) for m in (tw, json.encoder, inspect)], trainer)
    assert t.token_to_id("<|mask|>") == MASK
    return t


def make_model(vocab: int, causal: bool, seed: int = 0, sharp: float = 30.0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, n_layer=2, n_head=4, d_model=64, max_seq_len=512,
                      causal=causal)
    m = Transformer(cfg).double().eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(sharp)  # peaky predictions: confidences spread over (0, 1)
    return m


def backend_for(tok, objective: str, causal: bool | None = None, seed: int = 0, **kw
                ) -> NativeBackend:
    causal = objective == "ar" if causal is None else causal
    model = make_model(tok.get_vocab_size(), causal, seed, **kw)
    meta = {"objective": objective, "mask_id": MASK, "eot_id": EOT, "pad_id": PAD}
    return native_backend(model, tok, meta, device=CPU, dtype=torch.float64)


PROMPTS = ["def add(a, b):\n    return", "import os\n", "class Point:\n    def __init__(self"]


def encode(tok, texts=PROMPTS):
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ----------------------------------------------------------------------------- AR

@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_ar_kv_cache_equals_no_cache_token_for_token(tok, temperature):
    b = backend_for(tok, "ar")
    prompts = encode(tok)
    assert len({len(p) for p in prompts}) > 1  # a padded batch
    s = dict(max_new_tokens=24, temperature=temperature, top_k=20, top_p=0.95)
    cached = generate_ar(b, prompts, ARSettings(**s), generators=gens(3))
    plain = generate_ar(b, prompts, ARSettings(**s, use_cache=False), generators=gens(3))
    assert [x.ids for x in cached] == [x.ids for x in plain]
    assert all(len(x.ids) > 0 for x in cached)
    # the cache saves work: same forwards, far fewer FLOPs
    assert [x.nfe for x in cached] == [x.nfe for x in plain]
    assert all(c.flops < p.flops for c, p in zip(cached, plain, strict=True))


def test_ar_batched_equals_unbatched(tok):
    b = backend_for(tok, "ar")
    prompts = encode(tok)
    s = ARSettings(max_new_tokens=20, temperature=0.8)
    batched = generate_ar(b, prompts, s, generators=gens(3, 7))
    for i, p in enumerate(prompts):
        alone = generate_ar(b, [p], s, generators=[torch.Generator().manual_seed(7 + i)])
        assert alone[0].ids == batched[i].ids


@pytest.mark.parametrize("use_cache", [True, False])
def test_ar_finished_rows_leave_the_batch_without_changing_answers(tok, use_cache):
    b = backend_for(tok, "ar")
    prompts = encode(tok)
    s = ARSettings(max_new_tokens=30, temperature=0.8, use_cache=use_cache)

    def alone(i, p):
        return generate_ar(b, [p], s, generators=[torch.Generator().manual_seed(7 + i)])[0]

    # make the 4th token of the first row's answer end-of-text: that row stops early
    b.eos_ids = [alone(0, prompts[0]).ids[3]]
    single = [alone(i, p) for i, p in enumerate(prompts)]
    assert len({o.nfe for o in single}) > 1  # rows finish at different steps
    dropped = []
    select = b.select_rows
    b.select_rows = lambda cache, rows: (dropped.append(len(rows)), select(cache, rows))[1]
    batched = generate_ar(b, prompts, s, generators=gens(3, 7))
    assert [o.ids for o in batched] == [o.ids for o in single]
    assert [o.nfe for o in batched] == [o.nfe for o in single]
    if use_cache:
        assert dropped and dropped[0] < len(prompts)  # the cache lost the finished rows


def test_ar_stops_at_stop_sequence_and_eos(tok):
    b = backend_for(tok, "ar")
    prompt = encode(tok)[:1]
    free = generate_ar(b, prompt, ARSettings(max_new_tokens=30))[0]
    assert free.stop_reason == "length" and len(free.ids) == 30
    stop = free.raw[len(free.raw) // 2: len(free.raw) // 2 + 3]
    assert stop
    cut = generate_ar(b, prompt, ARSettings(max_new_tokens=30), stop_sequences=[stop])[0]
    assert cut.stop_reason == "stop"
    assert cut.completion == free.raw[: free.raw.find(stop)]
    assert cut.nfe < free.nfe and cut.tokens <= len(cut.ids)
    # declare the 4th generated token to be end-of-text: generation stops right before it
    b.eos_ids = [free.ids[3]]
    eos = generate_ar(b, prompt, ARSettings(max_new_tokens=30))[0]
    first = free.ids.index(free.ids[3])
    assert eos.ids == free.ids[:first] and eos.stop_reason == "eos"


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("a\ndef b\nclass C", ["\nclass", "\ndef"]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


# ----------------------------------------------------------------------------- DLM reference

def llada_reference(logits_fn, prompt: torch.Tensor, steps: int, gen_length: int,
                    block_length: int, mask_id: int) -> torch.Tensor:
    """LLaDA's `generate` (low_confidence, temperature 0, no CFG), written from the paper's
    algorithm: blocks left to right, steps split evenly, top-k confident masks committed."""
    B, L = prompt.shape
    x = torch.full((B, L + gen_length), mask_id, dtype=torch.long)
    x[:, :L] = prompt
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    for nb in range(n_blocks):
        lo, hi = L + nb * block_length, L + (nb + 1) * block_length
        n_mask = (x[:, lo:hi] == mask_id).sum(dim=1)
        counts = torch.zeros(B, per_block, dtype=torch.long) + (n_mask // per_block)[:, None]
        for j in range(B):
            counts[j, : int(n_mask[j] % per_block)] += 1
        for i in range(per_block):
            mask_index = x == mask_id
            logits = logits_fn(x)
            x0 = logits.argmax(dim=-1)
            p = F.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf"),
                                                                     dtype=x0_p.dtype))
            for j in range(B):
                _, sel = torch.topk(confidence[j], k=int(counts[j, i]))
                x[j, sel] = x0[j, sel]
    return x


class NoMaskPrediction(NativeBackend):
    """The same model with the mask token's logit removed (a trained DLM never predicts it)."""

    def forward(self, idx, **kw):
        out = super().forward(idx, **kw).clone()
        out[..., MASK] = float("-inf")
        return out


def as_no_mask(b: NativeBackend) -> NoMaskPrediction:
    nb = NoMaskPrediction.__new__(NoMaskPrediction)
    nb.__dict__.update(b.__dict__)
    return nb


@pytest.mark.parametrize("steps,block", [(32, 8), (16, 8), (32, 32), (8, 16)])
def test_low_confidence_equals_llada_reference_loop(tok, steps, block):
    b = as_no_mask(backend_for(tok, "mdm"))
    b.eos_ids = []  # compare every generated position
    prompts = encode(tok, ["def f(x):\n    return x", "for i in range(10):\n  "])
    n = min(len(p) for p in prompts)
    prompts = [p[:n] for p in prompts]  # the reference loop takes unpadded prompts
    ref = llada_reference(lambda x: b.forward(x), torch.tensor(prompts), steps, 32, block, MASK)
    s = DLMSettings(gen_length=32, block_length=block, steps=steps,
                    rule=CommitRule("low_confidence"), early_stop=False)
    out = generate_dlm(b, prompts, s)
    assert [o.ids for o in out] == ref[:, n:].tolist()
    assert all(o.nfe == steps for o in out)


# ----------------------------------------------------------------------------- DLM rules

class Recorder(NativeBackend):
    """Records every full-sequence input, to see which positions each step committed."""

    def forward(self, idx, **kw):
        self.seen.append(idx.clone())
        return super().forward(idx, **kw)


def recording(b: NativeBackend) -> Recorder:
    r = Recorder.__new__(Recorder)
    r.__dict__.update(b.__dict__)
    r.seen = []
    return r


def test_threshold_tau_one_commits_one_token_per_step(tok):
    b = backend_for(tok, "mdm")
    b.eos_ids = []
    s = DLMSettings(gen_length=24, block_length=8, rule=CommitRule("threshold", tau=1.0),
                    early_stop=False)
    for o in generate_dlm(b, encode(tok), s):
        assert o.extra["committed"] == [1] * 24 and o.nfe == 24 and len(o.ids) == 24


@pytest.mark.parametrize("name", ["threshold", "factor", "entropy_bounded", "low_confidence",
                                  "random", "margin", "entropy"])
def test_commits_stay_in_the_current_block_and_fill_everything(tok, name):
    b = recording(backend_for(tok, "mdm"))
    b.eos_ids = []
    G, BL = 24, 8
    rule = CommitRule(name, tau=0.3, factor=2.0, gamma=1.0)
    s = DLMSettings(gen_length=G, block_length=BL, steps=12, rule=rule, temperature=0.5,
                    early_stop=False)
    prompts = encode(tok)
    out = generate_dlm(b, prompts, s, generators=gens(3))
    P = max(len(p) for p in prompts)
    frames = b.seen + [None]
    final = torch.tensor([[0] * P + o.ids for o in out])
    for i, x in enumerate(b.seen):
        nxt = frames[i + 1] if frames[i + 1] is not None else final
        changed = (x != nxt) & (x == MASK)
        masked_gen = x[:, P:] == MASK
        for r in range(3):
            if not changed[r].any():
                continue
            # the current block of row r: the first block that still has masks
            blk = int(masked_gen[r].nonzero()[0]) // BL
            cols = changed[r].nonzero().flatten() - P
            assert cols.min() >= blk * BL and cols.max() < (blk + 1) * BL
    for o in out:
        assert len(o.ids) == G and MASK not in o.ids  # every position filled
    if name == "threshold":
        assert max(max(o.extra["committed"]) for o in out) > 1  # some steps commit several


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("name", ["threshold", "low_confidence"])
def test_dlm_batched_equals_unbatched(tok, cache, name):
    b = backend_for(tok, "mdm")
    s = DLMSettings(gen_length=16, block_length=8, steps=8, rule=CommitRule(name, tau=0.6),
                    temperature=0.7, cache=cache)
    prompts = encode(tok)
    batched = generate_dlm(b, prompts, s, generators=gens(3, 11))
    for i, p in enumerate(prompts):
        alone = generate_dlm(b, [p], s, generators=[torch.Generator().manual_seed(11 + i)])
        assert alone[0].ids == batched[i].ids
        assert alone[0].nfe == batched[i].nfe


@pytest.mark.parametrize("name", ["low_confidence", "threshold"])
def test_caches_are_exact_for_a_causal_model(tok, name):
    # with causal attention a position's keys never depend on later tokens, so the prefix cache
    # and the dual cache read exactly what a full recomputation would compute
    b = backend_for(tok, "mdm", causal=True)
    b.eos_ids = []
    outs = {}
    for cache in ("none", "prefix", "dual"):
        s = DLMSettings(gen_length=24, block_length=8, steps=24,
                        rule=CommitRule(name, tau=0.5), cache=cache, early_stop=False)
        outs[cache] = generate_dlm(b, encode(tok), s)
    ids = {c: [o.ids for o in v] for c, v in outs.items()}
    assert ids["none"] == ids["prefix"] == ids["dual"]
    # same steps, less work per step
    for n, p, d in zip(outs["none"], outs["prefix"], outs["dual"], strict=True):
        assert n.nfe == p.nfe == d.nfe
        assert d.flops < p.flops < n.flops


def test_caches_are_exact_with_one_step_per_block(tok):
    # each block is decided by the full forward at its start, which every cache mode runs
    b = backend_for(tok, "mdm")
    b.eos_ids = []
    res = []
    for cache in ("none", "prefix", "dual"):
        s = DLMSettings(gen_length=24, block_length=8, steps=3, cache=cache, early_stop=False)
        res.append([o.ids for o in generate_dlm(b, encode(tok), s)])
    assert res[0] == res[1] == res[2]


GRAPHED_SAMPLERS = {
    # whole step in the graph (deterministic), with the healing mask and end-of-text options
    "threshold": dict(rule=CommitRule("threshold", tau=0.5), logits_eos_inf=True),
    # a fixed schedule: the per-step commit count is a graph input (3, 3, 2: it changes between
    # replays, so a count frozen at capture would show)
    "low_confidence": dict(rule=CommitRule("low_confidence"), steps=9, confidence_eos_inf=True),
    # sampling noise from per-row generators: only the forward is in the graph
    "sampled": dict(rule=CommitRule("threshold", tau=0.5), temperature=0.8),
}


def stopping_eos(b, prompts, kw: dict, generators) -> list[int]:
    """An end-of-text id that makes rows stop inside blocks: the answers' most common token."""
    from collections import Counter

    b.eos_ids = []
    full = generate_dlm(b, prompts, DLMSettings(**kw, early_stop=False), generators=generators,
                        heal=True)
    counts = Counter(t for o in full for t in o.ids if t not in (MASK, PAD))
    return [counts.most_common(1)[0][0]]


@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("sampler", GRAPHED_SAMPLERS)
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_cuda_graph_path_gives_the_same_samples(tok, monkeypatch, cache, sampler, early_stop):
    # CUDA graphs cannot run here: a stand-in "graph" calls the captured step function again on
    # each replay. This checks what the sampler does around the graph (which step it captures,
    # with which inputs, and the bookkeeping of the replayed steps); the capture itself replays
    # the same kernels on a GPU. Like a real graph, the stand-in writes every replay into one
    # output tensor of its own, and a replay spoils the outputs of the other graphs (they share
    # a memory pool): a step's output used after the next replay would show.
    captured, outputs, pool = [], set(), []

    class EagerGraph:
        def __init__(self, fn, inputs, out):
            self.fn, self.inputs = fn, tuple(t.clone() for t in inputs)
            self.out = torch.empty_like(out)
            captured.append(tuple(inputs[0].shape))
            pool.append(self)

        @classmethod
        def warm_and_capture(cls, fn, inputs):
            out = fn(*inputs)
            outputs.add(out.dtype)
            return out, cls(fn, inputs, out)

        def __call__(self, *inputs):
            for dst, src in zip(self.inputs, inputs, strict=True):
                dst.copy_(src)
            for g in pool:
                if g is not self:
                    g.out.fill_(float("nan") if g.out.is_floating_point() else 7)
            self.out.copy_(self.fn(*self.inputs))
            return self.out

    b = backend_for(tok, "mdm")
    b.eos_ids = [5]
    prompts = encode(tok)  # different lengths: a padded batch
    kw = dict(gen_length=24, block_length=8, cache=cache, **GRAPHED_SAMPLERS[sampler])
    if early_stop:  # rows leave the live set between replays
        kw["logits_eos_inf"] = False  # end-of-text must be proposable
        b.eos_ids = stopping_eos(b, prompts, kw, gens(3, 5))
    want = generate_dlm(b, prompts, DLMSettings(**kw, early_stop=early_stop, cuda_graphs=False),
                        generators=gens(3, 5), heal=True)
    if early_stop:  # some rows stopped at end-of-text, at different steps
        assert any(o.stop_reason == "eos" for o in want) and len({o.nfe for o in want}) > 1
    monkeypatch.setattr(graphs, "can_graph", lambda x, backend: True)
    monkeypatch.setattr(graphs, "BlockGraph", EagerGraph)
    got = generate_dlm(b, prompts, DLMSettings(**kw, early_stop=early_stop, cuda_graphs=True),
                       generators=gens(3, 5), heal=True)
    assert [o.ids for o in got] == [o.ids for o in want]
    assert [o.nfe for o in got] == [o.nfe for o in want]
    assert [o.flops for o in got] == [o.flops for o in want]
    # one capture serves every block of the batch while its rows stay, and a cached mode's
    # block start has one of its own (the prefix cache's window shrinks, so its steps capture
    # once per block); rows leaving the batch (early stop) start a new set
    sets = 3 if early_stop else 1
    most = {"none": sets, "dual": 2 * sets, "prefix": sets + 3}[cache]
    assert 1 <= len(captured) <= most, captured
    if not early_stop and cache != "prefix":
        assert len(captured) == most
    # deterministic steps are graphed whole (the graph returns tokens), sampled ones only up to
    # the logits
    assert outputs == ({torch.float64} if sampler == "sampled" else {torch.long})


def cuda_backend(tok) -> NativeBackend:
    """The test's mdm model on the GPU in bf16, placed as load_checkpoint places a checkpoint."""
    model = make_model(tok.get_vocab_size(), causal=False)
    model.to(torch.bfloat16).to("cuda")
    meta = {"objective": "mdm", "mask_id": MASK, "eot_id": EOT, "pad_id": PAD}
    return native_backend(model, tok, meta, device=torch.device("cuda"), dtype=torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("sampler", GRAPHED_SAMPLERS)
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_real_cuda_graphs_give_the_eager_samples(tok, monkeypatch, cache, sampler, early_stop):
    # the real capture and replay, on a GPU, in bf16 (what generation uses there): the graph
    # replays the eager kernels, so the samples are identical, token for token
    captures = []
    real = graphs.BlockGraph.warm_and_capture.__func__

    def counting(cls, fn, inputs):
        captures.append(tuple(inputs[0].shape))
        return real(cls, fn, inputs)

    b = cuda_backend(tok)
    b.eos_ids = [5]
    kw = dict(gen_length=24, block_length=8, cache=cache, **GRAPHED_SAMPLERS[sampler])

    def cuda_gens():
        return [torch.Generator("cuda").manual_seed(5 + i) for i in range(3)]

    if early_stop:  # rows leave the live set between replays: a graph input, not a constant
        kw["logits_eos_inf"] = False  # end-of-text must be proposable
        b.eos_ids = stopping_eos(b, encode(tok), kw, cuda_gens())
    want = generate_dlm(b, encode(tok), DLMSettings(**kw, early_stop=early_stop,
                                                    cuda_graphs=False),
                        generators=cuda_gens(), heal=True)
    if early_stop:  # some rows stopped at end-of-text, at different steps
        assert any(o.stop_reason == "eos" for o in want) and len({o.nfe for o in want}) > 1
    monkeypatch.setattr(graphs.BlockGraph, "warm_and_capture", classmethod(counting))
    got = generate_dlm(b, encode(tok), DLMSettings(**kw, early_stop=early_stop, cuda_graphs=True),
                       generators=cuda_gens(), heal=True)
    assert captures
    assert [o.ids for o in got] == [o.ids for o in want]
    assert [o.nfe for o in got] == [o.nfe for o in want]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
def test_real_cuda_graphs_reuse_their_memory(tok):
    # every block captures a graph; with a pool per graph the reserved memory grew with each
    # capture (an out-of-memory at batch 128 on the H100). Shared, it stays flat.
    b = cuda_backend(tok)
    s = DLMSettings(gen_length=64, block_length=8, rule=CommitRule("threshold", tau=0.99),
                    cache="dual", early_stop=False, cuda_graphs=True)
    reserved = []
    for _ in range(6):  # 8 blocks, so up to 8 captures, each time
        generate_dlm(b, encode(tok), s)
        torch.cuda.synchronize()
        reserved.append(torch.cuda.memory_reserved())
    assert reserved[-1] - reserved[1] < 16 * 2**20, reserved


def test_dlm_caches_need_a_cache_rewritable_in_place(tok):
    # an AR model read as a Dream-convention DLM has no such cache (nor has an HF model's
    # append-only DynamicCache): refused, not decoded wrongly
    view = ShiftedView(backend_for(tok, "ar"), MASK)
    for cache in ("prefix", "dual"):
        with pytest.raises(ValueError, match="rewrite in place"):
            generate_dlm(view, encode(tok), DLMSettings(gen_length=16, block_length=8,
                                                        cache=cache))


def test_dlm_early_stop_at_eos_and_stop_sequence(tok):
    b = backend_for(tok, "mdm")
    b.eos_ids = []
    s = DLMSettings(gen_length=32, block_length=8, steps=32, early_stop=False)
    prompt = encode(tok)[:1]
    full = generate_dlm(b, prompt, s)[0]
    # pretend the token at position 9 is end-of-text: the answer ends there and later blocks
    # are never decoded
    b.eos_ids = [full.ids[9]]
    first = full.ids.index(full.ids[9])
    es = DLMSettings(gen_length=32, block_length=8, steps=32, early_stop=True)
    out = generate_dlm(b, prompt, es)[0]
    assert out.ids == full.ids[:first] and out.stop_reason == "eos"
    assert out.nfe < full.nfe
    # a stop sequence inside the decided prefix also ends decoding
    b.eos_ids = []
    stop = full.raw[4:7]
    cut = generate_dlm(b, prompt, es, stop_sequences=[stop])[0]
    assert cut.completion == full.raw[: full.raw.find(stop)] and cut.stop_reason == "stop"
    assert cut.nfe < full.nfe


def test_eos_suppression_options(tok):
    b = backend_for(tok, "mdm")
    s = DLMSettings(gen_length=16, block_length=16, steps=16, early_stop=False)
    prompt = encode(tok)[:1]
    base = generate_dlm(b, prompt, s)[0]
    b.eos_ids = [base.ids[0]] if base.ids else [5]
    never = generate_dlm(b, prompt, DLMSettings(gen_length=16, block_length=16, steps=16,
                                                logits_eos_inf=True, early_stop=False))[0]
    assert b.eos_ids[0] not in never.ids and len(never.ids) == 16
    last = generate_dlm(b, prompt, DLMSettings(gen_length=16, block_length=16, steps=16,
                                               confidence_eos_inf=True, early_stop=False))[0]
    assert last.nfe == 16


# ----------------------------------------------------------------------------- conventions

def test_dream_shift_turns_a_causal_model_into_left_to_right_decoding(tok):
    # Read through the Dream convention, a causal LM's logits at position i - 1 predict token i,
    # so one-token blocks with one step each reproduce AR greedy decoding token for token.
    ar = backend_for(tok, "ar")
    dream = ShiftedView(ar, MASK)
    prompts = encode(tok)
    want = generate_ar(ar, prompts, ARSettings(max_new_tokens=12))
    got = generate_dlm(dream, prompts, DLMSettings(gen_length=12, block_length=1, steps=12))
    assert [g.ids for g in got] == [w.ids for w in want]
    # and without the shift the same model decodes something else
    wrong = generate_dlm(ar, prompts, DLMSettings(gen_length=12, block_length=1, steps=12))
    assert [w.ids for w in wrong] != [w.ids for w in want]


# ----------------------------------------------------------------------------- HF backends

def save_tiny_hf(arch: str, tok, d: Path, **config) -> Path:
    """A tiny random transformers causal LM of `arch` ("Llama", "Lfm2", ...) with our tokenizer,
    saved to d; the head is scaled up so greedy answers vary between prompts."""
    transformers = pytest.importorskip("transformers")
    cfg = getattr(transformers, f"{arch}Config")(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, eos_token_id=EOT, pad_token_id=PAD, bos_token_id=None,
        **config)
    torch.manual_seed(0)
    model = getattr(transformers, f"{arch}ForCausalLM")(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(d)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                         pad_token="<|pad|>", mask_token="<|mask|>"
                                         ).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(tok, tmp_path_factory):
    return save_tiny_hf("Llama", tok, tmp_path_factory.mktemp("llama"))


def test_hf_llama_generates_through_the_hf_backend(llama_dir, tok):
    import transformers

    b = load_backend(llama_dir, dtype="float64")
    assert b.name == "hf" and b.kind == "ar" and EOT in b.eos_ids
    prompts = [b.tokenizer.encode(t) for t in PROMPTS]
    out = generate_ar(b, prompts, ARSettings(max_new_tokens=10))
    assert all(o.nfe >= 1 and o.flops > 0 for o in out)
    # equals transformers' own greedy generate, prompt by prompt
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float64)
    for p, o in zip(prompts, out, strict=True):
        ref = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                             eos_token_id=EOT, pad_token_id=PAD)[0, len(p):].tolist()
        if EOT in ref:
            ref = ref[: ref.index(EOT)]
        assert o.ids == ref
    # the cache equals recomputation, and the padded batch equals one-at-a-time
    plain = generate_ar(b, prompts, ARSettings(max_new_tokens=10, use_cache=False))
    assert [o.ids for o in plain] == [o.ids for o in out]
    alone = [generate_ar(b, [p], ARSettings(max_new_tokens=10))[0].ids for p in prompts]
    assert alone == [o.ids for o in out]
    # rows that finish early leave the batch and its DynamicCache; the others are unchanged
    b.eos_ids = [out[0].ids[2]]
    alone = [generate_ar(b, [p], ARSettings(max_new_tokens=10))[0] for p in prompts]
    dropped = []
    select = b.select_rows
    b.select_rows = lambda cache, rows: (dropped.append(len(rows)), select(cache, rows))[1]
    early = generate_ar(b, prompts, ARSettings(max_new_tokens=10))
    assert [o.ids for o in early] == [o.ids for o in alone]
    assert len({o.nfe for o in alone}) > 1 and dropped  # rows did finish apart, and left


def test_hf_hybrid_model_drops_finished_rows_with_its_conv_state(tok, tmp_path):
    # LFM2 mixes convolution and attention layers: its cache holds conv states besides keys and
    # values, and a finished row must leave both
    save_tiny_hf("Lfm2", tok, tmp_path, layer_types=["conv", "full_attention"])
    b = load_backend(tmp_path, dtype="float64")
    prompts = [b.tokenizer.encode(t) for t in PROMPTS]
    b.eos_ids = [generate_ar(b, prompts[:1], ARSettings(max_new_tokens=10))[0].ids[2]]
    alone = [generate_ar(b, [p], ARSettings(max_new_tokens=10))[0] for p in prompts]
    assert len({o.nfe for o in alone}) > 1
    batched = generate_ar(b, prompts, ARSettings(max_new_tokens=10))
    assert [o.ids for o in batched] == [o.ids for o in alone]


def test_hf_dream_convention_is_honoured(llama_dir):
    ar = load_backend(llama_dir, dtype="float64")
    dream = load_backend(llama_dir, dtype="float64", kind="dlm", convention="dream", mask_id=MASK)
    assert dream.kind == "dlm" and dream.convention == "dream" and dream.mask_id == MASK
    prompts = [ar.tokenizer.encode(PROMPTS[0])]
    want = generate_ar(ar, prompts, ARSettings(max_new_tokens=8))[0].ids
    got = generate_dlm(dream, prompts, DLMSettings(gen_length=8, block_length=1, steps=8))[0].ids
    assert got == want
    llada = load_backend(llama_dir, dtype="float64", kind="dlm", convention="llada",
                         mask_id=MASK)
    aligned = generate_dlm(llada, prompts, DLMSettings(gen_length=8, block_length=1, steps=8))
    assert aligned[0].ids != want


def test_logits_range_equals_slicing_the_full_logits(tok, llama_dir):
    # samplers ask for the positions they read; every backend must return exactly those rows
    native_ar, native_dlm = backend_for(tok, "ar"), backend_for(tok, "mdm")
    backends = [native_ar, native_dlm, ShiftedView(native_ar, MASK),
                load_backend(llama_dir, dtype="float64", device="cpu"),
                load_backend(llama_dir, dtype="float64", kind="dlm", convention="dream",
                             mask_id=MASK, device="cpu")]
    assert backends[3]._keeps  # transformers' logits_to_keep path is the one exercised
    ids, mask, pos = left_pad(encode(tok), PAD, torch.device("cpu"))
    S = ids.shape[1]
    assert not bool(mask.all())  # prompts of different lengths: padded rows too
    for b in backends:
        full = b.forward(ids, attention_mask=mask, position_ids=pos)
        for a, e in ((0, S), (0, 3), (2, 7), (S - 1, S), (S - 4, S)):
            part = b.forward(ids, attention_mask=mask, position_ids=pos, logits_range=(a, e))
            assert part.shape == full[:, a:e].shape, (b.name, a, e)
            torch.testing.assert_close(part, full[:, a:e], rtol=1e-5, atol=1e-5)


def test_vllm_backend_is_import_guarded(llama_dir):
    from codediff.errors import UserError

    try:
        import vllm  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(UserError, match="vLLM"):
            load_backend(llama_dir, backend="vllm")
    else:  # pragma: no cover - only where vLLM is installed
        pytest.skip("vLLM is installed")


# ----------------------------------------------------------------------------- the command

def save_native(tok, tmp_path: Path, objective: str, n_layer: int = 2) -> Path:
    from codediff.checkpoints import save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=n_layer, n_head=4, d_model=64,
                      max_seq_len=512, causal=objective == "ar")
    model = Transformer(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    d = tmp_path / f"{objective}-run" / "checkpoints" / "tokens-1000"
    save_checkpoint(model, tok, d, {"objective": objective, "mask_id": MASK, "eot_id": EOT,
                                    "pad_id": PAD, "tokens": 1000, "epochs": 1.0})
    return d.parent.parent


def cli(*args: str) -> int:
    from codediff.cli import main

    return main(["generate", "--no-progress", *map(str, args)])


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


@pytest.mark.parametrize("objective,extra", [
    ("ar", ["--max-new-tokens", "16", "--temperature", "0.8"]),
    ("mdm", ["--sampler", "threshold", "--tau", "0.5", "--gen-length", "16",
             "--block-length", "8", "--cache", "dual", "--temperature", "0.8"]),
])
def test_generate_command_writes_samples_and_sidecar(tok, tmp_path, objective, extra):
    from codediff.harness.tasks import load_task

    run = save_native(tok, tmp_path, objective)
    out = tmp_path / "samples.jsonl"
    assert cli("--model", run, "--task", "humaneval", "--limit", "3", "--n", "2",
               "--batch-size", "4", "--out", out, *extra) == 0
    rows = read_jsonl(out)
    assert [(r["task_id"], r["completion_id"]) for r in rows] == [
        (f"HumanEval/{i}", c) for i in range(3) for c in range(2)]
    for r in rows:
        assert isinstance(r["completion"], str) and r["nfe"] >= 1 and r["seconds"] > 0
        assert r["flops"] > 0 and "\ndef " not in r["completion"]
    meta = json.loads((tmp_path / "samples.meta.json").read_text())
    assert meta["schema"] == "codediff.samples/2" and meta["samples"] == 6
    assert meta["model"]["objective"] == objective and meta["prompt_format"] == "completion"
    assert meta["settings"]["mode"] == ("ar" if objective == "ar" else "dlm")
    # HumanEval prompts end with a bare newline: token healing takes it back by default
    assert meta["settings"]["token_healing"] is True
    assert all(r.get("healed") == "\n" for r in rows)
    assert meta["totals"]["nfe"] == sum(r["nfe"] for r in rows)
    assert not list(tmp_path.glob("*.partial*"))
    # the judge can turn every sample into a program
    task = load_task("humaneval")
    by_id = task.by_id()
    for r in rows:
        assert task.program_for(by_id[r["task_id"]], completion=r["completion"]).startswith(
            by_id[r["task_id"]].prompt)
    # a second identical run has nothing to do; different settings are refused
    assert cli("--model", run, "--task", "humaneval", "--limit", "3", "--n", "2",
               "--batch-size", "4", "--out", out, *extra) == 0
    assert cli("--model", run, "--task", "humaneval", "--limit", "3", "--n", "3",
               "--out", out, *extra) == 2


def test_generate_rerun_of_a_finished_output_compares_like_with_like(tok, tmp_path, capsys):
    """The sidecar's model.params counts every parameter while the run's identity (and its
    fingerprint) counts them without embedding and head: a rerun compares like with like, so
    only a real change is reported, and a rerun that writes nothing does not say it wrote."""
    from codediff.backends import load_backend

    run = save_native(tok, tmp_path, "ar")
    out, meta_file = tmp_path / "s.jsonl", tmp_path / "s.meta.json"
    args = ["--model", run, "--task", "humaneval", "--limit", "2", "--max-new-tokens", "4",
            "--out", out]
    assert cli(*args) == 0
    assert capsys.readouterr().out == f"wrote {out} and {meta_file}\n"
    files = lambda: {p.name: (p.read_bytes(), p.stat().st_mtime_ns)  # noqa: E731
                     for p in sorted(tmp_path.glob("s.*"))}
    before = files()

    # the same command again: complete, nothing written, and it says so
    assert cli(*args) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "wrote" not in cap.err
    assert f"{out}: already complete (2 samples" in cap.err and "nothing was written" in cap.err
    assert files() == before
    # a real change is named, and nothing else is (the parameter count did not change)
    assert cli(*args[:-2], "--n", "2", "--out", out) == 2
    err = capsys.readouterr().err
    assert "settings.n (1 -> 2)" in err and "model.params" not in err and err.count("\n") == 1

    # the same run with a fingerprint computed otherwise (another codediff version): the fields
    # agree, so it is complete, not "changed"; also for a sidecar that counted params as the
    # identity does (written before it counted every parameter)
    meta = json.loads(meta_file.read_text())
    body = load_backend(run, device="cpu").describe()["params"]
    assert meta["model"]["params"] > body  # the embedding and head are counted
    for params in (body, meta["model"]["params"]):
        meta_file.write_text(json.dumps({**meta, "fingerprint": "0" * 64,
                                         "model": {**meta["model"], "params": params}}))
        before = files()
        assert cli(*args) == 0
        cap = capsys.readouterr()
        assert "already complete" in cap.err and cap.out == "" and files() == before
    # ... but as many problems, other ones, is a change (the samples file says which)
    other = ["--task-ids", "HumanEval/0", "HumanEval/5"]
    assert cli(*args[:4], *other, *args[6:]) == 2
    err = capsys.readouterr().err
    assert "problems (other task ids: HumanEval/1 -> HumanEval/5)" in err
    assert "model.params" not in err

    # another model at the same path (a third layer): its parameter count is a real change
    save_native(tok, tmp_path, "ar", n_layer=3)
    new_params = load_backend(run, device="cpu").num_params()
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert f"model.params ({meta['model']['params']} -> {new_params})" in err
    assert files() == before


def test_generate_resumes_after_interruption(tok, tmp_path, monkeypatch):
    from codediff import generate

    run = save_native(tok, tmp_path, "mdm")
    args = ["--model", run, "--task", "humaneval", "--limit", "4", "--n", "2", "--batch-size",
            "3", "--gen-length", "16", "--block-length", "8", "--sampler", "threshold",
            "--temperature", "0.9", "--cache", "prefix"]
    ref = tmp_path / "ref.jsonl"
    assert cli(*args, "--out", ref) == 0
    out = tmp_path / "samples.jsonl"
    real = generate._run_batch
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generate, "_run_batch", flaky)
    assert cli(*args, "--out", out) == 130
    part = tmp_path / "samples.jsonl.partial"
    assert len(read_jsonl(part)) == 3 and not out.exists()
    with open(part, "a") as f:
        f.write('{"task_id": "HumanEval/9", "compl')  # a torn line from a kill
    monkeypatch.setattr(generate, "_run_batch", real)
    assert cli(*args, "--out", out) == 0
    key = lambda r: (r["task_id"], r["completion_id"], r["completion"])  # noqa: E731
    assert [key(r) for r in read_jsonl(out)] == [key(r) for r in read_jsonl(ref)]


def test_generate_out_of_memory_says_which_batch_size_to_try(tok, tmp_path, monkeypatch,
                                                             capsys):
    from codediff import generate

    run = save_native(tok, tmp_path, "ar")
    args = ["--model", run, "--task", "humaneval", "--limit", "3", "--batch-size", "2",
            "--max-new-tokens", "8", "--out", str(tmp_path / "s.jsonl")]
    real = generate._run_batch
    calls = {"n": 0}

    def oom(*a, **k):  # a CPU cannot run out of GPU memory: the second batch raises it
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(generate, "_run_batch", oom)
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert "out of memory at --batch-size 2" in err and "--batch-size (e.g. 1)" in err
    assert err.startswith("codediff: error:") and err.count("\n") == 1
    assert len(read_jsonl(tmp_path / "s.jsonl.partial")) == 2  # the first batch is kept
    monkeypatch.setattr(generate, "_run_batch", real)
    smaller = [a if a != "2" else "1" for a in args]  # as the message says
    assert cli(*smaller) == 0 and len(read_jsonl(tmp_path / "s.jsonl")) == 3


def test_generate_rejects_bad_options_before_writing(tok, tmp_path, capsys):
    run = save_native(tok, tmp_path, "mdm")
    out = tmp_path / "s.jsonl"
    assert cli("--model", run, "--task", "humaneval", "--gen-length", "30", "--block-length",
               "8", "--out", out) == 2
    assert "multiple of" in capsys.readouterr().err
    assert cli("--model", tmp_path / "nope", "--task", "humaneval", "--out", out) == 2
    assert cli("--model", run, "--task", "nosuchtask", "--out", out) == 2
    (tmp_path / "afile").write_text("")
    assert cli("--model", run, "--task", "humaneval", "--out", tmp_path / "afile" / "s.jsonl") == 2
    assert not list(tmp_path.glob("s.*"))


def test_generate_under_torchrun_shards_and_merges(tok, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    run = save_native(tok, tmp_path, "ar")
    common = ["--model", str(run), "--task", "humaneval", "--limit", "5", "-n", "2",
              "--max-new-tokens", "8", "--temperature", "0.7", "--device", "cpu",
              "--no-progress"]
    single = tmp_path / "single.jsonl"
    assert cli(*common[:-1], "--out", single) == 0
    multi = tmp_path / "multi.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as sock:  # a free port, so concurrent test runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(port),
                           "-m", "codediff.cli", "generate", *common, "--out", str(multi)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    key = lambda r: (r["task_id"], r["completion_id"], r["completion"])  # noqa: E731
    assert [key(r) for r in read_jsonl(multi)] == [key(r) for r in read_jsonl(single)]
    assert json.loads((tmp_path / "multi.meta.json").read_text())["world_size"] == 2


def test_modules_import_light():
    # the CLI module must not pull in torch (cli.py imports it to build the parser)
    code = ("import sys, codediff.generate_cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_helpers():
    assert common.tokens_for(type("T", (), {"decode": lambda self, ids: "ab" * len(ids)})(),
                             [1, 2, 3], "abab") == 2
    with pytest.raises(ValueError):
        DLMSettings(gen_length=30, block_length=8)
    with pytest.raises(ValueError):
        DLMSettings(gen_length=32, block_length=8, steps=6)
    assert DLMSettings(gen_length=32, block_length=8).steps_per_block == 8
    assert dlm.CACHES == ("none", "prefix", "dual")


# ----------------------------------------------------------------------------- export

def test_export_loads_in_the_llada_convention(tok, tmp_path):
    pytest.importorskip("transformers")
    from codediff.export import main as export_main

    run = save_native(tok, tmp_path, "mdm")
    out = tmp_path / "exported"
    assert export_main([str(run), str(out)]) == 0
    assert export_main([str(run), str(out)]) == 2  # refuses to overwrite silently
    native = load_backend(run, dtype="float64", device="cpu")
    hf = load_backend(out, dtype="float64", trust_remote_code=True, device="cpu")
    assert hf.name == "hf" and hf.kind == "dlm" and hf.convention == "llada"
    assert hf.mask_id == MASK and EOT in hf.eos_ids
    prompts = encode(tok)
    assert [hf.tokenizer.encode(t) for t in PROMPTS] == prompts
    x = torch.tensor([prompts[0] + [MASK] * 8])
    assert torch.allclose(hf.forward(x), native.forward(x), atol=1e-10)
    s = DLMSettings(gen_length=16, block_length=8, steps=16, temperature=0.5)
    a = generate_dlm(native, prompts, s, generators=gens(3))
    b = generate_dlm(hf, prompts, s, generators=gens(3))
    assert [o.ids for o in a] == [o.ids for o in b]
    ar_run = save_native(tok, tmp_path / "ar", "ar")
    assert export_main([str(ar_run), str(tmp_path / "ar-export")]) == 2


# ----------------------------------------------------------------------------- token healing

def test_heal_prompts_takes_back_a_token_that_others_extend(tok):
    from codediff.backends import NativeTokenizer
    from codediff.sampling.common import heal_prompts

    nt = NativeTokenizer(tok)
    ends_nl, plain = encode(tok, ["import os\n", "x = f(a"])
    assert tok.decode([ends_nl[-1]]) == "\n"
    h = heal_prompts(nt, [ends_nl, plain])
    assert h.prompts[0] == ends_nl[:-1] and h.prefix[0] == "\n"
    allowed = [tok.decode([i]) for i in h.allowed[0]]
    assert len(allowed) > 1 and all(a.startswith("\n") for a in allowed)
    assert any(a.startswith("\n ") for a in allowed)  # newline + indentation is one token
    if h.prefix[1]:  # "a" is extended by other tokens too: same rule
        assert all(tok.decode([i]).startswith(h.prefix[1]) for i in h.allowed[1])
    m = h.mask(tok.get_vocab_size(), CPU)
    assert m[0].sum() == len(h.allowed[0])


@pytest.mark.parametrize("kind", ["ar", "dlm"])
def test_token_healing_in_both_loops(tok, kind):
    b = backend_for(tok, "ar" if kind == "ar" else "mdm")
    prompts = encode(tok, ["import os\n", "def f(x):\n    return", "class A:\n"])
    stops = ["\n\n"]

    def run(ps, g):
        if kind == "ar":
            return generate_ar(b, ps, ARSettings(max_new_tokens=16, temperature=0.8), stops, g,
                               heal=True)
        s = DLMSettings(gen_length=16, block_length=8, rule=CommitRule("threshold", tau=0.5),
                        temperature=0.8)
        return generate_dlm(b, ps, s, stops, g, heal=True)

    out = run(prompts, gens(3))
    for o in out:
        pre = o.extra.get("healed", "")
        if pre and o.ids:
            assert tok.decode([o.ids[0]]).startswith(pre)
            assert tok.decode(o.ids).startswith(pre) and not o.raw.startswith(pre * 2)
        assert o.completion == cut_at_stop(o.raw, stops)[0]
    assert out[0].extra.get("healed") == "\n"
    # healing keeps rows independent of their batch
    for i, p in enumerate(prompts):
        assert run([p], gens(1, i))[0].ids == out[i].ids


def test_cuda_graphs_are_on_by_default_and_can_be_turned_off():
    import argparse

    from codediff import generate_cli
    from codediff.generate import GenerateConfig

    p = argparse.ArgumentParser()
    generate_cli.add_arguments(p)
    base = ["--model", "m", "--task", "humaneval", "--out", "o.jsonl"]
    assert p.parse_args(base).cuda_graphs is True
    assert p.parse_args([*base, "--no-cuda-graphs"]).cuda_graphs is False
    assert DLMSettings().cuda_graphs and GenerateConfig(model="m", task="t", out="o").cuda_graphs


def test_torchrun_ranks_beyond_the_visible_gpus_are_told_what_to_do(monkeypatch):
    from codediff.backends import pick_device
    from codediff.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match="--nproc-per-node 1"):
        pick_device(None)
    assert pick_device("cpu") == torch.device("cpu")
