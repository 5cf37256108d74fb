"""`codediff generate`: the command-line face of codediff.generate (light: no torch at import).

Every option is a field of codediff.config.GenerateConfig (its default, choices, bounds and
help live there).

Example:
  codediff generate --model runs/mdm-5M --task humaneval --sampler threshold --tau 0.9 \\
      --gen-length 256 --block-length 32 --cache dual --n 10 --temperature 0.8 \\
      --out samples.jsonl
  torchrun --nproc-per-node 8 -m codediff.cli generate --model /models/llada-8b \\
      --trust-remote-code --task humaneval -n 10 --out samples.jsonl
"""

from __future__ import annotations

import argparse

from codediff import options
from codediff.config import GenerateConfig

GROUPS = {"io": "what to generate", "both": "sampling (both kinds)",
          "ar": "autoregressive models only", "dlm": "diffusion models only",
          "load": "model loading"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    groups = {k: parser.add_argument_group(v) for k, v in GROUPS.items()}
    options.add_arguments(parser, GenerateConfig, groups=groups)


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    cfg = options.from_args(GenerateConfig, args, explicit=options.explicit(args))
    if cfg.recipe:  # the recipe's values where no option was typed (codediff.recipe)
        from codediff.recipe import apply

        cfg = apply(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from codediff.generate import generate_samples, meta_path

    done = generate_samples(cfg)
    import os

    # an output that was already complete was not touched: generate_samples said so on stderr
    if done.written and int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {done.out} and {meta_path(done.out)}")
    return 0
