"""Export a codediff `mdm` checkpoint as a Hugging Face DLM in the LLaDA convention.

The exported folder loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` and
behaves like LLaDA: `model(input_ids, attention_mask=...).logits[:, i]` predicts token i (no
shift), the mask id is `config.mask_token_id`, attention is bidirectional. So LLaDA-style
evaluation code (and `codediff generate --backend hf --trust-remote-code`) can sample from our
models. The modelling code written next to the weights is self-contained (torch + transformers,
no codediff import) and reuses our parameter names, so `model.safetensors` is copied unchanged.

  codediff export runs/mdm/checkpoints/tokens-N exported/
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

# The model code written next to the weights: real files in hf_export/ (self-contained, torch +
# transformers only), copied unchanged into every exported folder.
HF_CODE = Path(__file__).resolve().parent / "hf_export"
HF_FILES = ("configuration_codediff.py", "modeling_codediff.py")


def export_llada(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """Write `out` (a new folder) holding the checkpoint in the LLaDA convention."""
    from codediff.backends import resolve_checkpoint
    from codediff.checkpoints import read_checkpoint_config
    from codediff.errors import UserError
    from codediff.formats import building_dir

    src = resolve_checkpoint(checkpoint)
    cfg, meta = read_checkpoint_config(src)
    if meta.get("objective") != "mdm":
        raise UserError(f"{src}: only `mdm` checkpoints export to the LLaDA convention "
                        f"(this one is `{meta.get('objective')}`)")
    final = Path(out)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise UserError(f"{final} exists and is not empty; pass --overwrite or another folder")
    with building_dir(final) as tmp:  # the folder gets the umask's mode, not mkdtemp's 0700
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
        for name in HF_FILES:
            shutil.copyfile(HF_CODE / name, tmp / name)
        shutil.copyfile(src / "model.safetensors", tmp / "model.safetensors")
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(src, meta),
                                                              indent=2) + "\n")
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
    parser.add_argument("checkpoint", help="an mdm run dir or checkpoint folder (required)")
    parser.add_argument("out", help="new folder for the Hugging Face (LLaDA convention) model "
                        "(required)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing folder (default: off)")


def run(args: argparse.Namespace) -> int:
    from codediff.options import check_out

    check_out(args.out, folder=True, flag="out", overwrite=args.overwrite)
    out = export_llada(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {out}: load with AutoModel.from_pretrained(..., trust_remote_code=True)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from codediff.errors import UserError

    parser = argparse.ArgumentParser(prog="codediff export",
                                     description="export an mdm checkpoint (LLaDA convention)")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as e:
        print(f"codediff: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
