"""The decoder: masks, RoPE positions, the KV cache semantics the samplers rely on, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from codediff.checkpoints import load_checkpoint, save_checkpoint
from codediff.model import PRESETS, KVCache, ModelConfig, Transformer, preset

V = 97


def micro(causal: bool = True, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=64,
                      causal=causal, **kw)
    return Transformer(cfg).double().eval()


def tokens(B: int, S: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, S), generator=torch.Generator().manual_seed(seed))


def test_presets_have_the_documented_sizes():
    assert abs(PRESETS["tiny"].num_params() - 16.9e6) < 0.2e6
    assert 120e6 < PRESETS["small"].num_params() < 140e6
    big = PRESETS["coder-1.7b"]
    assert (big.n_layer, big.d_model, big.n_head, big.d_ff, big.max_seq_len) == (28, 2048, 16,
                                                                                 6144, 2048)
    assert 1.6e9 < big.num_params() < 1.9e9
    m = Transformer(ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=64))
    assert m.num_params() == m.config.num_params()
    assert preset("tiny", n_layer=2).n_layer == 2


@pytest.mark.parametrize("qk_norm,n_kv_head", [(False, None), (True, 2)])
def test_ar_is_causal_and_mdm_is_bidirectional(qk_norm, n_kv_head):
    x = tokens(2, 16)
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % V  # change only the future
    ar = micro(True, qk_norm=qk_norm, n_kv_head=n_kv_head)
    a, b = ar(x), ar(y)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-12)
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    mdm = micro(False, qk_norm=qk_norm, n_kv_head=n_kv_head)
    a, b = mdm(x), mdm(y)
    assert (a[:, :10] - b[:, :10]).abs().max() > 1e-6  # the past sees the future


def test_masked_path_equals_fast_path():
    x = tokens(2, 12)
    for causal in (True, False):
        m = micro(causal)
        full = m(x)
        masked = m(x, attention_mask=torch.ones(2, 12, dtype=torch.bool))
        assert torch.allclose(full, masked, atol=1e-12)


def test_left_padding_with_position_ids_equals_unpadded():
    m = micro(True)
    x = tokens(1, 9)
    pad = 4
    xp = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], dim=1)
    am = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], 1)
    pos = (am.long().cumsum(1) - 1).clamp(min=0)
    out = m(xp, attention_mask=am, position_ids=pos)
    assert torch.isfinite(out).all()  # padding queries must not produce NaN
    assert torch.allclose(out[:, pad:], m(x), atol=1e-10)


def test_ar_cached_prefill_and_decode_equal_uncached():
    m = micro(True)
    x = tokens(3, 20)
    ref = m(x)
    c = KVCache.empty(m, 3, 32)
    out = [m(x[:, :12], start_pos=0, cache=c, update_cache=True)]
    assert c.length == 12
    for p in range(12, 20):
        out.append(m(x[:, p:p + 1], start_pos=p, cache=c, update_cache=True))
    assert c.length == 20
    assert torch.allclose(torch.cat(out, 1), ref, atol=1e-10)


def test_ar_cached_decode_with_left_padding():
    m = micro(True)
    x = tokens(1, 10)
    pad = 3
    xp = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], dim=1)
    am = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 10, dtype=torch.bool)], 1)
    pos = (am.long().cumsum(1) - 1).clamp(min=0)
    c = KVCache.empty(m, 1, 16)
    a = m(xp[:, :8], attention_mask=am[:, :8], position_ids=pos[:, :8], cache=c,
          update_cache=True)
    b = [m(xp[:, p:p + 1], attention_mask=am[:, :p + 1], position_ids=pos[:, p:p + 1],
           start_pos=p, cache=c, update_cache=True) for p in range(8, 13)]
    got = torch.cat([a] + b, 1)[:, pad:]
    assert torch.allclose(got, m(x), atol=1e-10)


def test_dlm_prefix_cache_equals_full_forward():
    m = micro(False)
    x = tokens(2, 24)
    c = KVCache.empty(m, 2, 24)
    full = m(x, cache=c, update_cache=True)
    assert torch.allclose(full, m(x), atol=1e-10)
    bs = 8
    c.truncate(bs)
    assert c.length == bs
    step = m(x[:, bs:], start_pos=bs, cache=c)
    assert torch.allclose(step, full[:, bs:], atol=1e-10)
    assert c.length == bs  # update_cache=False leaves the cache alone


def test_dlm_dual_cache_reads_both_sides_and_writes_nothing():
    m = micro(False)
    x = tokens(2, 24)
    c = KVCache.empty(m, 2, 24)
    m(x, cache=c, update_cache=True)
    before = [k.clone() for k in c.k]
    bs, be = 8, 16
    same = m(x[:, bs:be], start_pos=bs, cache=c)
    assert torch.allclose(same, m(x)[:, bs:be], atol=1e-10)
    # new block tokens: the block's fresh keys are used, prefix and suffix come from the cache
    y = x.clone()
    y[:, bs:be] = (y[:, bs:be] + 5) % V
    step = m(y[:, bs:be], start_pos=bs, cache=c)
    assert c.length == 24 and all(torch.equal(a, b) for a, b in zip(before, c.k, strict=True))
    # in a one-layer model the cached keys depend on the tokens alone, so the step is exact
    torch.manual_seed(0)
    one = Transformer(ModelConfig(vocab_size=V, n_layer=1, n_head=4, d_model=64,
                                  causal=False)).double().eval()
    c1 = KVCache.empty(one, 2, 24)
    one(x, cache=c1, update_cache=True)
    assert torch.allclose(one(y[:, bs:be], start_pos=bs, cache=c1), one(y)[:, bs:be], atol=1e-10)
    # ... while a deeper model's cached suffix is stale, so it differs from the exact forward
    assert not torch.allclose(step, m(y)[:, bs:be], atol=1e-6)


def test_a_tensor_start_rewrites_the_cache_as_an_int_start_does():
    # a cached step whose start is a device tensor (one CUDA graph for every block): the same
    # logits, the same cache, the same logits_at positions as with an int start
    m = micro(False)
    x = tokens(2, 24)
    am = torch.ones(2, 24, dtype=torch.bool)
    am[1, :3] = False  # a left-padded row
    pos = (am.cumsum(1) - 1).clamp(min=0)
    for mask, positions in ((None, None), (am, pos)):
        caches = [KVCache.empty(m, 2, 24) for _ in range(2)]
        for c in caches:
            m(x, cache=c, update_cache=True, attention_mask=mask, position_ids=positions)
        y = (x[:, 8:16] + 5) % V
        p = None if positions is None else positions[:, 8:16]
        want = m(y, start_pos=8, cache=caches[0], update_cache=True, attention_mask=mask,
                 position_ids=p)
        got = m(y, start_pos=torch.tensor(8), cache=caches[1], update_cache=True,
                attention_mask=mask, position_ids=p)
        assert torch.equal(got, want)
        assert all(torch.equal(a, b) for a, b in zip(caches[0].k + caches[0].v,
                                                      caches[1].k + caches[1].v, strict=True))
        assert caches[1].length == 24
    full = m(x, logits_range=(8, 16))
    assert torch.equal(m(x, logits_at=torch.arange(8, 16)), full)
    with pytest.raises(ValueError, match="filled cache"):
        m(y, start_pos=torch.tensor(8), cache=KVCache.empty(m, 2, 24), update_cache=True)


def test_dlm_cache_key_padding_mask():
    m = micro(False)
    x = tokens(1, 12)
    am = torch.ones(1, 12, dtype=torch.bool)
    am[0, 10:] = False  # right padding is invisible
    c = KVCache.empty(m, 1, 12)
    m(x, cache=c, update_cache=True, attention_mask=am)
    step = m(x[:, 4:8], start_pos=4, cache=c, attention_mask=am)
    assert torch.allclose(step, m(x[:, :10])[:, 4:8], atol=1e-10)


def test_checkpoint_round_trip(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    m = micro(False, qk_norm=True)
    meta = {"objective": "mdm", "mask_id": 1, "eot_id": 0, "pad_id": 2, "tokens": 1234,
            "epochs": 0.5}
    d = save_checkpoint(m.float(), tok, tmp_path / "ck", meta)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["codediff"]["objective"] == "mdm" and cfg["causal"] is False
    m2, tok2, meta2 = load_checkpoint(d)
    assert meta2["mask_id"] == 1 and meta2["tokens"] == 1234
    assert tok2.token_to_id("b") == 1
    x = tokens(2, 8)
    assert torch.equal(m.float()(x), m2(x))
    save_checkpoint(m2, d / "tokenizer.json", d, meta)  # overwriting an existing folder works
    m3, _, _ = load_checkpoint(d, dtype=torch.float64)
    assert next(m3.parameters()).dtype == torch.float64
