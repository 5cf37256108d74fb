"""A codediff masked diffusion model for transformers (exported by codediff; self-contained).

Llama-style blocks: RMSNorm, rotate-half RoPE, SwiGLU, no biases, untied head; bidirectional
attention. `forward(input_ids, attention_mask=None, position_ids=None).logits[:, i]` predicts
token i (the LLaDA convention).
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_codediff import CodediffConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope(x, positions, base):
    hd = x.shape[-1]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=work) / hd)
    ang = positions.to(work)[..., None] * inv
    cos, sin = ang.cos()[:, None].to(x.dtype), ang.sin()[:, None].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kvh, self.hd = c.n_head, c.n_kv_head, c.d_model // c.n_head
        self.base = c.rope_base
        self.wqkv = nn.Linear(c.d_model, (self.h + 2 * self.kvh) * self.hd, bias=False)
        self.wo = nn.Linear(self.h * self.hd, c.d_model, bias=False)
        self.q_norm = RMSNorm(self.hd, c.norm_eps) if c.qk_norm else None
        self.k_norm = RMSNorm(self.hd, c.norm_eps) if c.qk_norm else None

    def forward(self, x, positions, mask, causal):
        B, S, _ = x.shape
        q, k, v = self.wqkv(x).split([self.h * self.hd, self.kvh * self.hd, self.kvh * self.hd],
                                     dim=-1)
        q = q.view(B, S, self.h, self.hd).transpose(1, 2)
        k = k.view(B, S, self.kvh, self.hd).transpose(1, 2)
        v = v.view(B, S, self.kvh, self.hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, positions, self.base), rope(k, positions, self.base)
        if self.kvh != self.h:
            k = k.repeat_interleave(self.h // self.kvh, dim=1)
            v = v.repeat_interleave(self.h // self.kvh, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, S, self.h * self.hd))


class SwiGLU(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.w_gate_up = nn.Linear(c.d_model, 2 * c.d_ff, bias=False)
        self.w_down = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x):
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = Attention(c)
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = SwiGLU(c)

    def forward(self, x, positions, mask, causal):
        x = x + self.attn(self.attn_norm(x), positions, mask, causal)
        return x + self.mlp(self.mlp_norm(x))


class CodediffMDM(PreTrainedModel):
    config_class = CodediffConfig
    base_model_prefix = ""
    _no_split_modules = ["Block"]

    def __init__(self, config):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def get_input_embeddings(self):
        return self.tok_emb

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        B, S = input_ids.shape
        dev = input_ids.device
        if position_ids is None:
            position_ids = torch.arange(S, device=dev)[None].expand(B, S)
        mask = None
        causal = bool(self.config.causal)
        if attention_mask is not None and not bool(attention_mask.all()):
            pos = torch.arange(S, device=dev)
            allowed = attention_mask.to(torch.bool)[:, None, None, :].expand(B, 1, S, S)
            if causal:
                allowed = allowed & (pos[None, :] <= pos[:, None])[None, None]
            mask = allowed | (pos[None, :] == pos[:, None])[None, None]  # never an empty row
        x = self.tok_emb(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids, mask, causal)
        logits = self.lm_head(self.norm(x))
        return MaskedLMOutput(logits=logits if logits.dtype == torch.float64 else logits.float())
