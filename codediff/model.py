"""One Llama-style decoder for both objectives: RMSNorm, RoPE, SwiGLU, no biases, untied embeddings.

`causal=True` gives the autoregressive (`ar`) model, `causal=False` the bidirectional masked
diffusion (`mdm`) model; nothing else differs. Attention goes through
`scaled_dot_product_attention`, so the unmasked, uncached training path uses flash kernels on GPU.

A `KVCache` serves both AR decoding (append) and diffusion decoding (prefix / dual caches, where a
step computes fresh keys for some positions, writes them over those positions of the cache in
place, and reads the rest as cached at the block start).

`start_pos` (where the input sits in the sequence) may be a 0-dim tensor on the model's device
instead of an int, for cached steps that rewrite a filled cache: nothing then depends on its
value on the host, so one CUDA graph of the step serves every block of a diffusion answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from codediff import rope_kernel
from codediff.config import PRESETS, ModelConfig, preset  # noqa: F401  (re-exported)

# ----------------------------------------------------------------------------- cache

class KVCache:
    """Per-layer keys/values [B, n_kv_head, capacity, head_dim]; `length` = valid positions.

    Keys are stored after RoPE, so a cached key never needs re-rotation.
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]):
        self.k = k
        self.v = v
        self.length = 0

    @classmethod
    def empty(cls, model: Transformer, batch: int, capacity: int, device=None,
              dtype=None) -> KVCache:
        cfg = model.config
        p = next(model.parameters())
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        shape = (batch, cfg.kv_heads, capacity, cfg.head_dim)
        k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        return cls(k, v)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def truncate(self, length: int) -> None:
        """Forget positions >= length (their storage is simply overwritten later)."""
        if length < 0:
            raise ValueError(f"cannot truncate a cache to {length}")
        self.length = min(self.length, length)


# ----------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def attention_without_cudnn():
    """SDPA limited to flash / memory-efficient / math kernels, for shapes seen once or rarely:
    cuDNN attention, PyTorch's first pick on Hopper, builds an execution plan per new shape
    (73 ms against 0.28 ms per call on an H100; bench/sdpa_shapes.py)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH])


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., head_dim/2] for integer positions, in float32 (float64 for a float64 model);
    `apply_rope` casts them to the activations' dtype, so bf16 weights do not blur the angles."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=work)
                        / head_dim)
    angles = positions.to(work)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the Llama / Hugging Face layout). x [B, H, S, hd]; cos/sin [B|1, S, hd/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim,
                              bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.fused_rope = True  # the Triton split + rotate when training on CUDA

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                mask: torch.Tensor | None, start_pos: int, cache_kv: tuple | None,
                update_cache: bool, cache_len: int,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        B, S, _ = x.shape
        hd = self.head_dim
        qkv = self.wqkv(x)
        if self.fused_rope and self.training and cache_kv is None and self.q_norm is None \
                and qkv.is_cuda and qkv.dtype != torch.float64 and cos.shape[0] == 1 \
                and (hd // 2) & (hd // 2 - 1) == 0 \
                and rope_kernel.available():
            # training: split + rotate in one Triton kernel each way (codediff/rope_kernel.py
            # says why); generation keeps the plain path its benchmarks were measured with
            q, k, v = rope_kernel.rope_qkv(qkv, cos[0], sin[0], self.n_head, self.n_kv_head) \
                .split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        else:
            q, k, v = qkv.split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd],
                                dim=-1)
            q = q.view(B, S, self.n_head, hd).transpose(1, 2)
            k = k.view(B, S, self.n_kv_head, hd).transpose(1, 2)
            v = v.view(B, S, self.n_kv_head, hd).transpose(1, 2)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache_kv is not None and slots is not None:
            # a device-tensor start: the input's positions are `slots`, inside the valid cache
            ck, cv = cache_kv
            ck.index_copy_(2, slots, k.to(ck.dtype))
            cv.index_copy_(2, slots, v.to(cv.dtype))
            k, v = ck[:, :, :cache_len].to(q.dtype), cv[:, :, :cache_len].to(q.dtype)
        elif cache_kv is not None:
            ck, cv = cache_kv
            end = start_pos + S
            total = max(cache_len, end)
            if update_cache:
                ck[:, :, start_pos:end] = k.to(ck.dtype)
                cv[:, :, start_pos:end] = v.to(cv.dtype)
                k, v = ck[:, :, :total], cv[:, :, :total]
            else:
                # read-only: cached keys around the fresh block, the cache itself untouched
                k = torch.cat([ck[:, :, :start_pos].to(k.dtype), k,
                               ck[:, :, end:total].to(k.dtype)], dim=2)
                v = torch.cat([cv[:, :, :start_pos].to(v.dtype), v,
                               cv[:, :, end:total].to(v.dtype)], dim=2)
            k, v = k.to(q.dtype), v.to(q.dtype)

        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        dropout = self.cfg.dropout if self.training else 0.0
        if mask is None and cache_kv is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.cfg.causal,
                                               dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, S, self.n_head * hd)
        return self.wo(y)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, cos, sin, **attn_kw) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, **attn_kw))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


# ----------------------------------------------------------------------------- model

class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # recompute each block in the backward pass instead of keeping its activations
        self.activation_checkpointing = False
        # RoPE tables for positions < max_seq_len, kept in float32 (see _apply). Without them the
        # compiler recomputes sin/cos inside every rotary kernel, for every batch row and head:
        # measured on an H100, that was 30% of a `tiny` training step.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_rope()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 L)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p)  # norm weights
            elif name.endswith(("wo.weight", "w_down.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_rope(self, device=None) -> None:
        """(Re)build the RoPE tables, e.g. after creating the model on the meta device."""
        cfg = self.config
        device = self.tok_emb.weight.device if device is None else device
        if device.type == "meta":
            device = torch.device("cpu")
        dtype = torch.float64 if self.tok_emb.weight.dtype == torch.float64 else torch.float32
        pos = torch.arange(cfg.max_seq_len, device=device)
        self.rope_cos, self.rope_sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_base, dtype)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        # rebuilt rather than cast: float32 tables (float64 for a float64 model) on the new device
        self.init_rope(self.rope_cos.device)
        return out

    def _rope(self, position_ids, start_pos: int, S: int, device,
              slots: torch.Tensor | None = None, last: int = 0):
        cfg = self.config
        n = self.rope_cos.shape[0]
        if position_ids is None and slots is not None:
            # a device-tensor start: positions up to `last` (exclusive) may occur
            if last <= n and self.rope_cos.device == device:
                return self.rope_cos.index_select(0, slots)[None], \
                    self.rope_sin.index_select(0, slots)[None]
            position_ids = slots[None]
        if position_ids is None:
            if start_pos + S <= n and self.rope_cos.device == device:
                return (self.rope_cos[start_pos:start_pos + S][None],
                        self.rope_sin[start_pos:start_pos + S][None])
            position_ids = torch.arange(start_pos, start_pos + S, device=device)[None]
        # explicit positions (padded generation batches): computed, not looked up, so nothing
        # reads them back to the host (a CUDA-graph capture allows no sync; same values as the
        # table, which is built by the same function)
        return rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_base, self.rope_cos.dtype)

    def _attention_mask(self, B: int, S: int, K: int, start_pos: int | torch.Tensor,
                        causal: bool,
                        attention_mask: torch.Tensor | None, device) -> torch.Tensor:
        """Bool [B, 1, S, K]: query at absolute position p sees key j when j <= p (causal) and
        attention_mask[b, j]. A query always sees its own key, so a padding query never has an
        empty row (which would turn into NaN and leak through the next layer's values)."""
        q_pos = (start_pos + torch.arange(S, device=device))[:, None]
        k_pos = torch.arange(K, device=device)[None, :]
        allowed = (k_pos <= q_pos) if causal else torch.ones(S, K, dtype=torch.bool,
                                                               device=device)
        allowed = allowed[None, None].expand(B, 1, S, K)
        if attention_mask is not None:
            if attention_mask.shape != (B, K):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; "
                                 f"expected {(B, K)} (batch, all key positions)")
            allowed = allowed & attention_mask.to(torch.bool)[:, None, None, :]
        return allowed | (k_pos == q_pos)[None, None]

    def hidden(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, start_pos: int | torch.Tensor = 0,
               cache: KVCache | None = None, update_cache: bool = False) -> torch.Tensor:
        """Final-normed hidden states [B, S, d] (the input of `lm_head`). A tensor `start_pos`
        (0-dim, on the model's device) needs a cache to rewrite (`update_cache`) whose valid
        length covers the input; it is not checked, as that would read it back to the host."""
        B, S = idx.shape
        cfg = self.config
        cache_len = 0
        slots = None
        if isinstance(start_pos, torch.Tensor):
            if cache is None or not update_cache or cache.length < S:
                raise ValueError("a tensor start_pos needs a filled cache to rewrite "
                                 "(cache=, update_cache=True)")
            slots = start_pos + torch.arange(S, device=idx.device)
            cache_len = cache.length
        elif cache is not None:
            cache_len = cache.length
            if start_pos > cache_len:
                raise ValueError(f"start_pos {start_pos} leaves a gap after the cache's "
                                 f"{cache_len} valid positions")
            if start_pos + S > cache.capacity:
                raise ValueError(f"positions up to {start_pos + S} exceed the cache capacity "
                                 f"{cache.capacity}")
        x = self.tok_emb(idx)
        cos, sin = self._rope(position_ids, start_pos, S, idx.device, slots, cache_len)
        if not self.training:
            # cast once here, not in every layer's apply_rope (same values, fewer kernels)
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        mask = None
        if attention_mask is not None or cache is not None:
            K = S if cache is None else cache_len if slots is not None else \
                max(cache_len, start_pos + S)
            mask = self._attention_mask(B, S, K, start_pos, cfg.causal, attention_mask,
                                        idx.device)
        for i, layer in enumerate(self.layers):
            kv = (cache.k[i], cache.v[i]) if cache is not None else None
            kw = dict(mask=mask, start_pos=start_pos, cache_kv=kv, update_cache=update_cache,
                      cache_len=cache_len, slots=slots)
            if self.activation_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False,
                                                      **kw)
            else:
                x = layer(x, cos, sin, **kw)
        if cache is not None and update_cache and slots is None:
            cache.length = max(cache_len, start_pos + S)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, start_pos: int | torch.Tensor = 0,
                cache: KVCache | None = None, update_cache: bool = False,
                logits_range: tuple[int, int] | None = None,
                logits_index: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, S, V] in float32 (float64 for a float64 model); with `logits_range`
        (a, b) only those of input positions a..b-1, [B, b - a, V]: samplers read a few
        positions, and the head over every position is most of a small model's forward.
        `logits_at` (input positions [n], a device tensor) does the same as a range, [B, n, V].
        With `logits_index` (indices into the flattened B x S positions) [K, V]: the mdm loss
        reads only its masked positions."""
        h = self.hidden(idx, attention_mask=attention_mask, position_ids=position_ids,
                        start_pos=start_pos, cache=cache, update_cache=update_cache)
        if logits_range is not None:
            h = h[:, logits_range[0]:logits_range[1]]
        if logits_at is not None:
            h = h.index_select(1, logits_at)
        if logits_index is not None:
            h = h.flatten(0, 1)[logits_index]
        logits = self.lm_head(h)
        return logits if logits.dtype == torch.float64 else logits.float()
