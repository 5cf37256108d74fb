"""Checkpoint folders in the Hugging Face style, and the resumable training state beside them.

A checkpoint folder holds `config.json` (the ModelConfig fields plus a `codediff` block with the
objective, special ids, tokens seen and epochs), `model.safetensors` and `tokenizer.json`. Folders
are written into a temporary sibling and renamed into place, so a killed run never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from codediff.errors import UserError
from codediff.formats import (
    CHECKPOINT_SCHEMA,
    checkpoint_meta,
    first_schema,
    make_temp_dir,
    schema_major,
)
from codediff.model import ModelConfig, Transformer

REQUIRED_META = ("objective", "mask_id", "eot_id", "pad_id", "tokens", "epochs")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder to `final`, replacing an older folder of that name."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain Transformer under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU float32-or-native state dict; gathers FSDP2 (DTensor) shards on every rank."""
    out = {}
    for name, t in unwrap(model).state_dict().items():
        if hasattr(t, "full_tensor"):  # DTensor from fully_shard: collective, all ranks call it
            t = t.full_tensor()
        out[name] = t.detach().to("cpu").contiguous()
    return out


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, dir: str | os.PathLike,
                    meta: dict, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder at `dir`; `tokenizer` is a tokenizers.Tokenizer or a path to
    tokenizer.json; `meta` must hold the keys of REQUIRED_META. Returns the folder."""
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    final = Path(dir)
    tmp = make_temp_dir(final)
    try:
        cfg = unwrap(model).config
        sd = full_state_dict(model) if state_dict is None else state_dict
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = cfg.to_dict()
        config["architectures"] = ["CodediffTransformer"]
        config["model_type"] = "codediff"
        config["codediff"] = {"schema": CHECKPOINT_SCHEMA, **meta}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if isinstance(tokenizer, str | os.PathLike):
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        else:
            tokenizer.save(str(tmp / "tokenizer.json"))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_checkpoint_config(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise UserError(f"{path}: no config.json; pass a checkpoint folder "
                        "(runs/X/checkpoints/tokens-N)")
    with open(cfg_file) as f:
        raw = json.load(f)
    meta = raw.get("codediff")
    if not isinstance(meta, dict):
        raise UserError(f"{path}: config.json has no `codediff` block; not a codediff checkpoint")
    # a block without a schema predates the field: the first version
    schema_major(meta, "checkpoint", str(cfg_file), "pass a codediff checkpoint folder",
                 default=first_schema("checkpoint"))
    return ModelConfig.from_dict(raw), checkpoint_meta(meta)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[Transformer, Any, dict]:
    """(model in eval mode, tokenizers.Tokenizer, meta) from a checkpoint folder."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    path = Path(path)
    cfg, meta = read_checkpoint_config(path)
    for name in ("model.safetensors", "tokenizer.json"):
        if not (path / name).exists():
            raise UserError(f"{path}: {name} is missing; the checkpoint is incomplete")
    with torch.device("meta"):
        model = Transformer(cfg)
    sd = load_file(str(path / "model.safetensors"), device=str(device))
    model.load_state_dict(sd, strict=True, assign=True)
    if dtype is not None:
        model.to(dtype)
    model.to(device).eval()
    model.init_rope()  # non-persistent tables were created on the meta device
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    return model, tok, dict(meta)
