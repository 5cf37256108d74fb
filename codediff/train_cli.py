"""`codediff train`: train an `ar` or `mdm` coder on a corpus dir for a token budget.

Every ModelConfig and TrainConfig field (codediff.config) is an option (`--n-layer 4`,
`--lr 3e-4`, ...); a TOML file (`--config run.toml`, tables [model] and [train] or flat keys)
sets them too. Precedence: preset < TOML < command line. Several GPUs:
`torchrun --nproc_per_node N -m codediff.cli train ...`.

Light module: torch is imported inside `run` only.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields, replace
from typing import Any

from codediff import options
from codediff.config import OBJECTIVES, PRESETS, ModelConfig, TrainConfig
from codediff.errors import UserError

# training defaults that depend on the preset (the rest come from TrainConfig)
PRESET_TRAIN_DEFAULTS = {
    "tiny": {"lr": 1e-3, "batch_size": 128},
    "mid": {"lr": 8e-4, "batch_size": 128},
    "small": {"lr": 6e-4, "batch_size": 256},
    "coder-1.7b": {"lr": 2e-4, "batch_size": 256, "warmup_steps": 2000, "schedule": "wsd"},
}


def _preset_text(name: str, per_preset: dict[str, Any], fallback: Any) -> str:
    """'tiny 6, small 12, coder-1.7b 28' (or one value when the presets agree)."""
    vals = {p: per_preset.get(p, fallback) for p in PRESETS}
    if all(v is None for v in vals.values()):
        return ""
    if len({str(v) for v in vals.values()}) == 1:
        return options._show(next(iter(vals.values())))
    return "from --preset: " + ", ".join(f"{p} {options._show(v)}" for p, v in vals.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True,
                        help="corpus dir made by `codediff corpus` (required)")
    parser.add_argument("--objective", required=True, choices=OBJECTIVES,
                        help="ar: next-token prediction; mdm: masked diffusion (required)")
    parser.add_argument("--out", required=True,
                        help="run dir (created; an existing run dir with the same options is "
                             "resumed) (required)")
    parser.add_argument("--preset", default="tiny", choices=tuple(PRESETS),
                        help="model size (default: tiny: 6 layers, d=384)")
    parser.add_argument("--total-tokens", type=options.parse_count, default=None,
                        help="tokens the optimiser consumes, e.g. 300M (epochs = total / "
                             "unique); required here or in --config")
    parser.add_argument("--config", help="TOML file with [model] / [train] overrides")
    model = parser.add_argument_group("model (override the preset)")
    texts = {}
    for f in options.cli_fields(ModelConfig):
        if f.metadata.get("default_text"):
            continue
        texts[f.name] = _preset_text(f.name, {p: getattr(c, f.name) for p, c in PRESETS.items()},
                                     None)
    options.add_arguments(model, ModelConfig, texts={k: v for k, v in texts.items() if v},
                          unset=True)
    train = parser.add_argument_group("training")
    ttexts = {}
    for name in {k for d in PRESET_TRAIN_DEFAULTS.values() for k in d}:
        f = next(f for f in fields(TrainConfig) if f.name == name)
        # a None default is computed at run time: say how
        default = f.default if f.default is not None else f.metadata.get("default_text")
        ttexts[name] = _preset_text(name, {p: d.get(name, default)
                                           for p, d in PRESET_TRAIN_DEFAULTS.items()}, default)
    options.add_arguments(train, TrainConfig, texts=ttexts, unset=True)


def _check(cls: type, values: dict[str, Any], where: str | None) -> dict[str, Any]:
    byname = {f.name: f for f in fields(cls)}
    return {k: options.check_value(cls, byname[k], v,
                                   None if where is None else f"{where}: {k}")
            for k, v in values.items()}


def _read_toml(path: str) -> tuple[dict, dict]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--config {path}: is a folder; give a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config {path}: not valid TOML ({e})") from None
    model = dict(data.pop("model", {}))
    train = dict(data.pop("train", {}))
    mnames = {f.name for f in options.cli_fields(ModelConfig)}
    tnames = {f.name for f in fields(TrainConfig)} - {"objective"}
    for k, v in data.items():  # flat keys go where they belong
        if k in mnames:
            model[k] = v
        elif k in tnames:
            train[k] = v
        else:
            raise UserError(f"--config {path}: unknown key {k!r}")
    for k in model:
        if k not in mnames:
            raise UserError(f"--config {path}: [model] has unknown key {k!r}")
    for k in train:
        if k not in tnames:
            raise UserError(f"--config {path}: [train] has unknown key {k!r}")
    return _check(ModelConfig, model, f"--config {path}"), \
        _check(TrainConfig, train, f"--config {path}")


def build_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, set[str]]:
    """(ModelConfig, TrainConfig, explicit model keys) from preset < TOML < command line."""
    model_over, train_over = _read_toml(args.config) if args.config else ({}, {})
    given = options.explicit(args)
    model_over.update(_check(ModelConfig, options.values_of(ModelConfig, args, given), None))
    train_over.update(_check(TrainConfig, options.values_of(TrainConfig, args, given), None))
    if args.total_tokens is not None:
        train_over["total_tokens"] = options.check_value(
            TrainConfig, next(f for f in fields(TrainConfig) if f.name == "total_tokens"),
            args.total_tokens, "--total-tokens")
    if "total_tokens" not in train_over:
        raise UserError("--total-tokens is required (e.g. --total-tokens 300M)")
    try:
        model_cfg = replace(PRESETS[args.preset], **model_over)
    except ValueError as e:
        raise UserError(f"model shape: {e}; change --d-model / --n-head / --n-kv-head") from None
    tdefaults = dict(PRESET_TRAIN_DEFAULTS.get(args.preset, {}))
    tdefaults.update(train_over)
    tdefaults["objective"] = args.objective
    train_cfg = TrainConfig(**tdefaults)
    train_cfg.validate()
    if train_cfg.seq_len is not None and train_cfg.seq_len > model_cfg.max_seq_len:
        raise UserError(f"--seq-len {train_cfg.seq_len}: above --max-seq-len "
                        f"{model_cfg.max_seq_len}; lower --seq-len or raise --max-seq-len")
    return model_cfg, train_cfg, set(model_over)


def run(args: argparse.Namespace) -> int:
    model_cfg, train_cfg, explicit = build_configs(args)
    options.check_out(args.out, folder=True, reusable=True)  # a run dir resumes
    from codediff.data import open_corpus
    from codediff.train import train

    if "vocab_size" not in explicit:
        # size the embedding to the corpus tokenizer, padded to a multiple of 64 for the GPU
        corpus = open_corpus(args.corpus)
        model_cfg.vocab_size = 64 * math.ceil(corpus.vocab_size / 64)
    summary = train(args.corpus, args.out, model_cfg, train_cfg)
    if summary.get("done") and summary.get("resumed_from", 0) < summary["steps"]:
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            print(f"trained {args.objective} to {summary['steps']} steps; run dir {args.out}")
    return 0
