"""The sampling package's seams: the backend interface (logits_at), the cache-mode plans, when
CUDA graphs run, and what the samples sidecar says about them and about the model's size."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from codediff.backends import ShiftedView, load_backend
from codediff.model import ModelConfig
from codediff.sampling import CACHES, graphs
from codediff.sampling.caches import PLANS
from codediff.sampling.common import left_pad
from codediff.sampling.dlm import DLMSettings, generate_dlm, graphs_used
from codediff.sampling.rules import CommitRule
from tests import test_generate
from tests.test_generate import MASK, PAD, ROOT, backend_for, cli, encode, save_native

# the fixtures of test_generate (a byte-level BPE, a tiny Llama folder), shared
tok, llama_dir = test_generate.tok, test_generate.llama_dir


def test_logits_at_equals_logits_range_on_every_backend(tok, llama_dir):
    # the base forward takes logits_at: a graphable backend reads it on the device, the others
    # compute every position and select
    native_ar, native_dlm = backend_for(tok, "ar"), backend_for(tok, "mdm")
    backends = [native_ar, native_dlm, ShiftedView(native_ar, MASK),
                load_backend(llama_dir, dtype="float64", device="cpu"),
                load_backend(llama_dir, dtype="float64", kind="dlm", convention="dream",
                             mask_id=MASK, device="cpu"),
                load_backend(llama_dir, dtype="float64", kind="dlm", convention="llada",
                             mask_id=MASK, device="cpu")]
    ids, mask, pos = left_pad(encode(tok), PAD, torch.device("cpu"))
    S = ids.shape[1]
    for b in backends:
        for a, e in ((0, S), (0, 3), (2, 7), (S - 4, S)):
            want = b.forward(ids, attention_mask=mask, position_ids=pos, logits_range=(a, e))
            got = b.forward(ids, attention_mask=mask, position_ids=pos,
                            logits_at=torch.arange(a, e))
            assert got.shape == want.shape, (b.name, b.convention, a, e)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_every_cache_mode_has_a_plan_and_the_names_stay_torch_free():
    assert tuple(PLANS) == CACHES == ("none", "prefix", "dual")
    assert [p.cached for p in PLANS.values()] == [False, True, True]
    code = ("import sys, codediff.sampling as s; assert 'torch' not in sys.modules, 'torch'; "
            "print(len(s.SAMPLERS), len(s.CACHES))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["8", "3"]


CONFIGS = [  # (settings, do its steps repeat?)
    (dict(cache="none", block_length=8, steps=16, rule=CommitRule("low_confidence")), True),
    (dict(cache="none", block_length=1, rule=CommitRule("threshold")), False),
    (dict(cache="none", block_length=8, steps=2, rule=CommitRule("low_confidence")), False),
    (dict(cache="prefix", block_length=1, rule=CommitRule("threshold")), True),
    (dict(cache="dual", block_length=8, rule=CommitRule("threshold", tau=0.9)), True),
]


@pytest.mark.parametrize("kw,repeats", CONFIGS)
def test_graphs_used_says_whether_steps_were_captured(tok, monkeypatch, kw, repeats):
    b = backend_for(tok, "mdm")
    s = DLMSettings(gen_length=16, early_stop=False, **kw)
    assert not graphs_used(b, s)  # a CPU device: never graphed
    assert not graphs_used(b, replace(s, cuda_graphs=False))
    captures = []

    class Replayed:  # a graph stand-in: replays call the captured function again
        def __init__(self, fn, inputs):
            self.fn, self.inputs = fn, tuple(t.clone() for t in inputs)

        @classmethod
        def warm_and_capture(cls, fn, inputs):
            captures.append(tuple(inputs[0].shape))
            return fn(*inputs), cls(fn, inputs)

        def __call__(self, *inputs):
            for dst, src in zip(self.inputs, inputs, strict=True):
                dst.copy_(src)
            return self.fn(*self.inputs)

    want = generate_dlm(b, encode(tok), replace(s, cuda_graphs=False))
    monkeypatch.setattr(graphs, "can_graph", lambda device, backend: True)
    monkeypatch.setattr(graphs, "BlockGraph", Replayed)
    got = generate_dlm(b, encode(tok), s)
    assert graphs_used(b, s) is repeats
    assert bool(captures) is repeats, captures
    assert [o.ids for o in got] == [o.ids for o in want]


def test_sidecar_records_graphs_as_used_and_params_as_run_json_counts_them(tok, tmp_path):
    run = save_native(tok, tmp_path, "mdm")
    out = tmp_path / "samples.jsonl"
    # --cuda-graphs is on by default; on a CPU no graph runs, and the sidecar says so (the
    # device is pinned: on a GPU machine the same command would use the graphs)
    assert cli("--model", run, "--task", "humaneval", "--limit", "1", "--gen-length", "8",
               "--block-length", "4", "--cache", "dual", "--device", "cpu", "--out", out) == 0
    meta = json.loads((tmp_path / "samples.meta.json").read_text())
    assert meta["cuda_graphs"] is False
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=4, d_model=64,
                      max_seq_len=512, causal=False)
    # run.json's `params` is ModelConfig.num_params(): every parameter, embeddings included
    assert meta["model"]["params"] == cfg.num_params() == cfg.num_params(embeddings=False) \
        + cfg.d_model * cfg.vocab_size
