"""`codediff train`: train an `ar` or `mdm` coder on a corpus dir for a token budget.

Every ModelConfig and TrainConfig field is an option (`--n-layer 4`, `--lr 3e-4`, ...); a TOML
file (`--config run.toml`, tables [model] and [train] or flat keys) sets them too. Precedence:
preset < TOML < command line. Several GPUs: `torchrun --nproc_per_node N -m codediff.cli train ...`.

Light module: torch is imported inside `run` only.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields

from codediff.errors import UserError

# training defaults that depend on the preset (the rest come from TrainConfig)
PRESET_TRAIN_DEFAULTS = {
    "tiny": {"lr": 1e-3, "batch_size": 128},
    "small": {"lr": 6e-4, "batch_size": 256},
    "coder-1.7b": {"lr": 2e-4, "batch_size": 256, "warmup_steps": 2000, "schedule": "wsd"},
}
TOKEN_FIELDS = {"total_tokens", "val_tokens", "first_eval_tokens"}
# set by dedicated options or by the objective, not as generic overrides
SKIP = {"causal", "objective", "total_tokens"}


def _dataclasses():
    # the dataclass modules import torch; read their fields lazily through typing hints
    from codediff.model import ModelConfig
    from codediff.train import TrainConfig

    return ModelConfig, TrainConfig


def _field_specs():
    """(dest, annotation string, help-group) for every overridable field, model first."""
    import ast
    import importlib.util
    from pathlib import Path

    # parse the source instead of importing (importing the modules would load torch)
    out = []
    for mod, cls in (("codediff.model", "ModelConfig"), ("codediff.train", "TrainConfig")):
        spec = importlib.util.find_spec(mod)
        source = Path(spec.origin).read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                name = stmt.target.id
                if name in SKIP:
                    continue
                line = lines[stmt.lineno - 1]
                comment = line.split("#", 1)[1].strip() if "#" in line else ""
                default = ast.unparse(stmt.value) if stmt.value is not None else ""
                help_ = f"{comment} (default {default})" if comment else f"default {default}"
                out.append((name, ast.unparse(stmt.annotation), cls, help_.replace("%", "%%")))
    return out


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def _converter(name: str, ann: str):
    if name in TOKEN_FIELDS:
        def tokens(text: str) -> int:
            from codediff.train import parse_tokens

            try:
                return parse_tokens(text)
            except UserError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return tokens
    base = ann.replace("| None", "").strip()
    return {"int": int, "float": float, "str": str, "bool": _parse_bool}.get(base, str)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="corpus dir made by `codediff corpus`")
    parser.add_argument("--objective", required=True, choices=("ar", "mdm"),
                        help="ar: next-token prediction; mdm: masked diffusion")
    parser.add_argument("--out", required=True,
                        help="run dir (created; an existing run dir with the same options is "
                             "resumed)")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small", "coder-1.7b"),
                        help="model size (default tiny: 6 layers, d=384)")
    parser.add_argument("--total-tokens", type=_converter("total_tokens", "int"),
                        help="tokens the optimiser consumes, e.g. 300M (epochs = total / unique)")
    parser.add_argument("--config", help="TOML file with [model] / [train] overrides")
    model = parser.add_argument_group("model (override the preset)")
    train = parser.add_argument_group("training")
    for name, ann, cls, help_ in _field_specs():
        group = model if cls == "ModelConfig" else train
        flag = "--" + name.replace("_", "-")
        if ann in ("bool", "bool | None"):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_)
        else:
            group.add_argument(flag, dest=name, type=_converter(name, ann), default=None,
                               metavar=ann.replace(" ", "").upper().replace("|NONE", ""),
                               help=help_)


def _read_toml(path: str) -> tuple[dict, dict]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config {path}: not valid TOML ({e})") from None
    model = dict(data.pop("model", {}))
    train = dict(data.pop("train", {}))
    ModelConfig, TrainConfig = _dataclasses()
    mnames = {f.name for f in fields(ModelConfig)}
    tnames = {f.name for f in fields(TrainConfig)}
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
    for k in TOKEN_FIELDS & set(train):
        from codediff.train import parse_tokens

        train[k] = parse_tokens(train[k])
    return model, train


def build_configs(args: argparse.Namespace):
    """(ModelConfig, TrainConfig, explicit model keys) from preset < TOML < command line."""
    from dataclasses import replace

    from codediff.model import PRESETS

    ModelConfig, TrainConfig = _dataclasses()
    model_over, train_over = _read_toml(args.config) if args.config else ({}, {})
    mnames = {f.name for f in fields(ModelConfig)}
    tnames = {f.name for f in fields(TrainConfig)}
    for name in mnames | tnames:
        v = getattr(args, name, None)
        if v is None or name in SKIP:
            continue
        (model_over if name in mnames else train_over)[name] = v
    if args.total_tokens is not None:
        train_over["total_tokens"] = args.total_tokens
    if "total_tokens" not in train_over:
        raise UserError("--total-tokens is required (e.g. --total-tokens 300M)")
    base = PRESETS[args.preset]
    try:
        model_cfg = replace(base, **model_over)
        tdefaults = dict(PRESET_TRAIN_DEFAULTS.get(args.preset, {}))
        tdefaults.update(train_over)
        tdefaults["objective"] = args.objective
        train_cfg = TrainConfig(**tdefaults)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad model or training option: {e}") from None
    return model_cfg, train_cfg, set(model_over)


def run(args: argparse.Namespace) -> int:
    from codediff.data import open_corpus
    from codediff.train import train

    model_cfg, train_cfg, explicit = build_configs(args)
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

