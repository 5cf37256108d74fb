"""Export a codediff `mdm` checkpoint as a Hugging Face DLM in the LLaDA convention.

The exported folder loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` and
behaves like LLaDA: `model(input_ids, attention_mask=...).logits[:, i]` predicts token i (no
shift), the mask id is `config.mask_token_id`, attention is bidirectional. So LLaDA-style
evaluation code (and `codediff generate --backend hf --trust-remote-code`) can sample from our
models. The modelling code written next to the weights is self-contained (torch + transformers,
no codediff import) and reuses our parameter names, so `model.safetensors` is copied unchanged.

  python -m codediff.export runs/mdm/checkpoints/tokens-N exported/
  (or, where the CLI maps it: codediff export CHECKPOINT OUT)

This module imports nothing heavy at the top, so it can also serve as a CLI sub-command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

CONFIG_CODE = '''"""Configuration of a codediff masked diffusion model (exported by codediff)."""
from transformers import PretrainedConfig


class CodediffConfig(PretrainedConfig):
    model_type = "codediff_mdm"

    def __init__(self, vocab_size=8192, n_layer=6, n_head=6, n_kv_head=None, d_model=384,
                 d_ff=None, max_seq_len=256, rope_base=10000.0, qk_norm=False, causal=False,
                 norm_eps=1e-5, mask_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        self.d_model = d_model
        self.d_ff = d_ff
        self.max_seq_len = max_seq_len
        self.rope_base = rope_base
        self.qk_norm = qk_norm
        self.causal = causal
        self.norm_eps = norm_eps
        self.mask_token_id = mask_token_id
        # the names generic tools look for
        self.hidden_size = d_model
        self.num_hidden_layers = n_layer
        self.num_attention_heads = n_head
        self.max_position_embeddings = max_seq_len
        super().__init__(**kwargs)
'''

MODELING_CODE = '''"""A codediff masked diffusion model for transformers (exported by codediff; self-contained).

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
'''


def export_llada(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """Write `out` (a new folder) holding the checkpoint in the LLaDA convention."""
    from codediff.backends import resolve_checkpoint
    from codediff.checkpoints import read_checkpoint_config
    from codediff.errors import UserError
    from codediff.formats import make_temp_dir

    src = resolve_checkpoint(checkpoint)
    cfg, meta = read_checkpoint_config(src)
    if meta.get("objective") != "mdm":
        raise UserError(f"{src}: only `mdm` checkpoints export to the LLaDA convention "
                        f"(this one is `{meta.get('objective')}`)")
    final = Path(out)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise UserError(f"{final} exists and is not empty; pass --overwrite or another folder")
    tmp = make_temp_dir(final)  # the folder gets the umask's mode, not mkdtemp's 0700
    try:
        config = cfg.to_dict()
        config.pop("dropout", None)
        # resolve derived sizes (None in our config means "derive from d_model / n_head")
        config["n_kv_head"] = getattr(cfg, "kv_heads", None) or cfg.n_kv_head or cfg.n_head
        config["d_ff"] = getattr(cfg, "ffn_dim", None) or cfg.d_ff
        config.update({
            "model_type": "codediff_mdm",
            "architectures": ["CodediffMDM"],
            "auto_map": {"AutoConfig": "configuration_codediff.CodediffConfig",
                         "AutoModel": "modeling_codediff.CodediffMDM",
                         "AutoModelForMaskedLM": "modeling_codediff.CodediffMDM"},
            "mask_token_id": meta["mask_id"],
            "eos_token_id": meta["eot_id"],
            "pad_token_id": meta["pad_id"],
            "tie_word_embeddings": False,
            "exported_from": {"codediff": meta, "checkpoint": src.name},
        })
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "configuration_codediff.py").write_text(CONFIG_CODE)
        (tmp / "modeling_codediff.py").write_text(MODELING_CODE)
        shutil.copyfile(src / "model.safetensors", tmp / "model.safetensors")
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(src, meta),
                                                              indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _tokenizer_config(src: Path, meta: dict) -> dict:
    """tokenizer_config.json for PreTrainedTokenizerFast, naming our special tokens."""
    vocab = json.loads((src / "tokenizer.json").read_text()).get("added_tokens", [])
    by_id = {t["id"]: t["content"] for t in vocab}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
           "model_max_length": 1 << 30}
    for key, name in (("eot_id", "eos_token"), ("pad_id", "pad_token"), ("mask_id", "mask_token")):
        if meta.get(key) in by_id:
            cfg[name] = by_id[meta[key]]
    return cfg


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="an mdm run dir or checkpoint folder")
    parser.add_argument("out", help="new folder for the Hugging Face (LLaDA convention) model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def run(args: argparse.Namespace) -> int:
    out = export_llada(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {out}: load with AutoModel.from_pretrained(..., trust_remote_code=True)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from codediff.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m codediff.export",
                                     description="export an mdm checkpoint (LLaDA convention)")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as e:
        print(f"codediff: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
