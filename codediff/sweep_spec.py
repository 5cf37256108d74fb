"""A sweep spec (TOML) -> the cells it asks for (torch-free). docs/sweep.md describes the format.

A spec names one corpus (built at the largest U, or an existing corpus dir), defaults for every
cell, one or more `[[grid]]` tables whose list-valued keys multiply out (U x preset x objective x
seed), and what to evaluate at every kept checkpoint. Every value is checked here, before the
sweep writes anything: train options go through the parser of `codediff train` itself, so a
cell the sweep accepts is a command `codediff train` accepts.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
import tempfile
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from codediff import options
from codediff.config import OBJECTIVES, PRESETS, GenerateConfig, ModelConfig, TrainConfig
from codediff.errors import UserError

# keys of a [[grid]] table and of [defaults]
GRID_KEYS = ("unique_tokens", "preset", "objective", "seed", "total_tokens", "epochs", "variant",
             "train", "gpus")
LIST_KEYS = ("unique_tokens", "preset", "objective", "seed")  # these multiply out
CORPUS_KEYS = ("dir", "sources", "val_tokens", "seed", "vocab_size", "options")
EVAL_KEYS = ("val_loss", "codechoice", "tasks", "task_limit", "generate")
CODECHOICE_KEYS = ("file", "limit", "mc_samples", "batch_size", "seed")
# the cell sets these itself; an override of them would make the cell lie about what it is
RESERVED_TRAIN = ("objective", "total_tokens", "seed", "progress")
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")


@dataclass
class Cell:
    """One training run of the sweep and the checkpoints it keeps."""

    unique_tokens: int
    preset: str
    objective: str
    seed: int
    total_tokens: int
    variant: str = ""  # "" = the plain objective; else the name of an ablation (its overrides)
    overrides: dict[str, Any] = field(default_factory=dict)  # `codediff train` options
    gpus: int = 1

    @property
    def id(self) -> str:
        v = f"-{self.variant}" if self.variant else ""
        return f"{self.preset}-U{si(self.unique_tokens)}-{self.objective}{v}-s{self.seed}"

    @property
    def arm(self) -> str:
        """What the crossover compares: `mdm`, `ar`, or an ablation `ar+input-mask`."""
        return self.objective + (f"+{self.variant}" if self.variant else "")

    @property
    def epochs(self) -> float:
        return self.total_tokens / self.unique_tokens

    def identity(self, corpus_manifest_sha256: str | None) -> dict[str, Any]:
        """The fields a rerun of the sweep must repeat for this cell (formats.IDENTITIES)."""
        return {"id": self.id, "unique_tokens": self.unique_tokens, "preset": self.preset,
                "objective": self.objective, "variant": self.variant, "seed": self.seed,
                "total_tokens": self.total_tokens, "overrides": dict(sorted(
                    self.overrides.items())), "corpus_manifest_sha256": corpus_manifest_sha256}


@dataclass
class CorpusSpec:
    dir: str | None = None  # an existing corpus dir (resolved against the spec's folder)
    sources: list[str] = field(default_factory=lambda: ["stdlib"])
    val_tokens: int = 1_000_000
    seed: int = 0
    vocab_size: int = 8192
    options: list[str] = field(default_factory=list)  # more `codediff corpus` options

    def record(self) -> dict[str, Any]:
        """How the corpus is made, as the sweep manifest records it."""
        if self.dir is not None:
            return {"dir": self.dir}
        return {"sources": self.sources, "val_tokens": self.val_tokens, "seed": self.seed,
                "vocab_size": self.vocab_size, "options": self.options}


@dataclass
class CodechoiceSpec:
    file: str | None = None  # None: `codediff codechoice` builds one into the sweep dir
    limit: int | None = None
    mc_samples: int = 16
    batch_size: int = 256
    seed: int = 0


@dataclass
class EvalSpec:
    val_loss: bool = True
    codechoice: CodechoiceSpec | None = None
    tasks: list[str] = field(default_factory=list)  # execution-judged, greedy, pass@1
    task_limit: int | None = None  # N problems of each task, spread evenly over it
    generate: dict[str, Any] = field(default_factory=dict)  # `codediff generate` options

    @property
    def metrics(self) -> list[str]:
        return ((["val_loss"] if self.val_loss else []) + (["codechoice"] if self.codechoice
                else []) + list(self.tasks))


@dataclass
class Spec:
    name: str
    path: Path | None
    corpus: CorpusSpec
    cells: list[Cell]
    eval: EvalSpec
    throughput: dict[str, float] = field(default_factory=dict)  # "preset:objective" -> tok/s
    text: str = ""

    @property
    def levels(self) -> list[int]:
        """The unique-token counts U of the sweep, ascending."""
        return sorted({c.unique_tokens for c in self.cells})

    def record(self) -> dict[str, Any]:
        """The spec as the sweep manifest keeps it (normalised: counts as integers)."""
        ev = self.eval
        return {"name": self.name, "corpus": self.corpus.record(),
                "unique_tokens": self.levels, "cells": [c.id for c in self.cells],
                "eval": {"metrics": ev.metrics, "codechoice": None if ev.codechoice is None
                         else vars(ev.codechoice), "task_limit": ev.task_limit,
                         "generate": ev.generate},
                "sha256": hashlib.sha256(self.text.encode()).hexdigest()}


# ----------------------------------------------------------------------------- helpers

def si(n: int | float) -> str:
    """5000000 -> '5M', 2500000 -> '2.5M', 1500000000000 -> '1.5T' (exact, file-name safe)."""
    for div, suf in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            v = n / div
            return (f"{v:.6g}" if v != int(v) else str(int(v))) + suf
    return str(int(n))


def _where(spec: str, table: str) -> str:
    return f"{spec}: {table}"


def _count(value: Any, where: str) -> int:
    try:
        n = options.parse_count(value)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if n < 1:
        raise UserError(f"{where}: {value!r} must be at least 1")
    return n


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


def _unknown(d: dict, allowed: tuple[str, ...], where: str) -> None:
    bad = sorted(set(d) - set(allowed))
    if bad:
        raise UserError(f"{where}: unknown key {bad[0]!r}; the keys are {', '.join(allowed)}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if isinstance(v, int) or math.isfinite(v) else json.dumps(str(v))
    return json.dumps(str(v))  # a JSON string is a TOML basic string


def overrides_toml(overrides: dict[str, Any]) -> str:
    """The `--config` file of a cell: its train options as flat TOML keys."""
    head = "# written by `codediff sweep`: the cell's `codediff train` options\n"
    return head + "".join(f"{k} = {_toml_value(v)}\n" for k, v in sorted(overrides.items()))


# ----------------------------------------------------------------------------- train options

def _train_names() -> set[str]:
    model = {f.name for f in options.cli_fields(ModelConfig)}
    train = {f.name for f in fields(TrainConfig)} - set(RESERVED_TRAIN)
    return model | train


def check_overrides(overrides: Any, where: str) -> dict[str, Any]:
    """Train overrides -> the same dict with checked values; any key `codediff train` has as a
    model or training option passes (so options added to train later work here unchanged)."""
    if not isinstance(overrides, dict):
        raise UserError(f"{where}: `train` must be a table of `codediff train` options")
    names = _train_names()
    out = {}
    for k, v in overrides.items():
        if k in RESERVED_TRAIN:
            raise UserError(f"{where}: train.{k} is set by the cell itself; use the grid's "
                            f"{'`objective`' if k == 'objective' else '`' + k + '`'} key"
                            if k != "progress" else f"{where}: train.progress: the sweep runs "
                            "training without a progress bar; remove it")
        if k not in names:
            raise UserError(f"{where}: train.{k} is not a `codediff train` option of this "
                            "codediff (see `codediff train --help`; option names use _ here)")
        if isinstance(v, dict | list) or v is None:
            raise UserError(f"{where}: train.{k} must be a number, string or boolean")
        cls = ModelConfig if k in {f.name for f in fields(ModelConfig)} else TrainConfig
        f = next(f for f in fields(cls) if f.name == k)
        out[k] = options.check_value(cls, f, v, f"{where}: train.{k}")
    return out


def train_args(cell: Cell, corpus: str, out: str, config: str | None) -> list[str]:
    """`codediff train` arguments of a cell (after the command name)."""
    args = ["--corpus", corpus, "--objective", cell.objective, "--preset", cell.preset,
            "--total-tokens", str(cell.total_tokens), "--seed", str(cell.seed), "--out", out,
            "--no-progress"]
    return args + (["--config", config] if config else [])


def build_cell_configs(cell: Cell, vocab_size: int | None) -> tuple[ModelConfig, TrainConfig]:
    """The model and training settings `codediff train` would use for this cell, through its own
    parser (so every check it makes is made here). `vocab_size`: the corpus's, padded."""
    from codediff import train_cli

    over = dict(cell.overrides)
    if vocab_size is not None and "vocab_size" not in over:
        over["vocab_size"] = vocab_size
    parser = argparse.ArgumentParser(add_help=False)
    train_cli.add_arguments(parser)
    with tempfile.TemporaryDirectory(prefix="codediff-sweep-") as tmp:
        cfg = Path(tmp) / "cell.toml"
        cfg.write_text(overrides_toml(over))
        try:
            args = parser.parse_args(train_args(cell, "corpus", "out", str(cfg)))
        except SystemExit:  # argparse already printed why; say which cell
            raise UserError(f"cell {cell.id}: `codediff train` refuses its options") from None
        try:
            model_cfg, train_cfg, _ = train_cli.build_configs(args)
        except UserError as e:
            raise UserError(f"cell {cell.id}: {str(e).replace(str(cfg), 'train options')}") \
                from None
    return model_cfg, train_cfg


# ----------------------------------------------------------------------------- parsing

def _corpus(raw: Any, where: str, base: Path | None) -> CorpusSpec:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: [corpus] must be a table")
    _unknown(raw, CORPUS_KEYS, f"{where}: [corpus]")
    c = CorpusSpec()
    if "dir" in raw:
        extra = sorted(set(raw) - {"dir"})
        if extra:
            raise UserError(f"{where}: [corpus] gives `dir` and {extra[0]!r}; an existing corpus "
                            "dir is used as it is: give `dir` alone, or the build keys alone")
        d = Path(str(raw["dir"])).expanduser()
        c.dir = str(d if d.is_absolute() or base is None else (base / d))
        return c
    if "sources" in raw:
        c.sources = [str(s) for s in _as_list(raw["sources"])]
        if not c.sources:
            raise UserError(f"{where}: [corpus] sources is empty; name at least one source")
    if "val_tokens" in raw:
        c.val_tokens = _count(raw["val_tokens"], f"{where}: corpus.val_tokens")
    if "vocab_size" in raw:
        c.vocab_size = _count(raw["vocab_size"], f"{where}: corpus.vocab_size")
    if "seed" in raw:
        if not isinstance(raw["seed"], int) or raw["seed"] < 0:
            raise UserError(f"{where}: corpus.seed must be a whole number >= 0")
        c.seed = raw["seed"]
    if "options" in raw:
        c.options = [str(o) for o in _as_list(raw["options"])]
        taken = {"--out", "--unique-tokens", "-U", "--source", "--val-tokens", "--seed",
                 "--vocab-size", "--overwrite"}
        for o in c.options:
            if o.split("=")[0] in taken:
                raise UserError(f"{where}: corpus.options sets {o.split('=')[0]}; the sweep sets "
                                "it (use the [corpus] keys sources, val_tokens, seed, vocab_size)")
    return c


def _eval(raw: Any, where: str, base: Path | None) -> EvalSpec:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: [eval] must be a table")
    _unknown(raw, EVAL_KEYS, f"{where}: [eval]")
    e = EvalSpec()
    if "val_loss" in raw:
        if not isinstance(raw["val_loss"], bool):
            raise UserError(f"{where}: eval.val_loss must be true or false")
        e.val_loss = raw["val_loss"]
    cc = raw.get("codechoice")
    if cc is not None and cc is not False:
        if cc is True:
            cc = {}
        if not isinstance(cc, dict):
            raise UserError(f"{where}: eval.codechoice must be a table (file, limit, mc_samples, "
                            "batch_size, seed) or true")
        _unknown(cc, CODECHOICE_KEYS, f"{where}: [eval.codechoice]")
        spec = CodechoiceSpec()
        if "file" in cc:
            p = Path(str(cc["file"])).expanduser()
            spec.file = str(p if p.is_absolute() or base is None else base / p)
        for k in ("limit", "mc_samples", "batch_size"):
            if k in cc:
                setattr(spec, k, _count(cc[k], f"{where}: eval.codechoice.{k}"))
        if "seed" in cc:
            if not isinstance(cc["seed"], int) or cc["seed"] < 0:
                raise UserError(f"{where}: eval.codechoice.seed must be a whole number >= 0")
            spec.seed = cc["seed"]
        e.codechoice = spec
    tasks = raw.get("tasks", [])
    e.tasks = [str(t) for t in _as_list(tasks)]
    if len(set(e.tasks)) != len(e.tasks):
        raise UserError(f"{where}: eval.tasks names a task twice")
    for t in e.tasks:
        if t in ("val_loss", "codechoice"):
            raise UserError(f"{where}: eval.tasks: {t!r} is not a task; set eval.{t} instead")
        name, _, fmt = t.partition(":")
        try:
            from codediff.harness.tasks import get_spec

            ts = get_spec(name)
        except UserError as err:
            raise UserError(f"{where}: eval.tasks: {err}") from None
        if fmt and fmt not in ts.formats:
            raise UserError(f"{where}: eval.tasks: task {name} has no prompt format {fmt!r}; "
                            f"choose one of {', '.join(ts.formats)}")
    if "task_limit" in raw:
        e.task_limit = _count(raw["task_limit"], f"{where}: eval.task_limit")
    gen = raw.get("generate", {})
    if not isinstance(gen, dict):
        raise UserError(f"{where}: eval.generate must be a table of `codediff generate` options")
    byname = {f.name: f for f in options.cli_fields(GenerateConfig)}
    fixed = ("model", "task", "out", "n", "limit", "task_ids", "overwrite", "progress")
    for k, v in gen.items():
        if k in fixed:
            raise UserError(f"{where}: eval.generate.{k} is set by the sweep (one greedy sample "
                            "per problem; eval.task_limit limits the problems)")
        if k not in byname:
            raise UserError(f"{where}: eval.generate.{k} is not a `codediff generate` option")
        e.generate[k] = options.check_value(GenerateConfig, byname[k], v,
                                            f"{where}: eval.generate.{k}")
    e.generate.setdefault("temperature", 0.0)
    if e.generate["temperature"] != 0:
        raise UserError(f"{where}: eval.generate.temperature: pass@1 of the sweep is greedy; "
                        "remove it or set 0")
    return e


def _cells_of(grid: dict, defaults: dict, where: str) -> list[Cell]:
    _unknown(grid, GRID_KEYS, where)
    g = {**defaults, **grid}
    if "train" in defaults and "train" in grid:  # a grid's train options add to the defaults'
        g["train"] = {**defaults["train"], **grid["train"]}
    for k in ("unique_tokens", "preset", "objective"):
        if k not in g:
            raise UserError(f"{where}: `{k}` is missing (here or in [defaults])")
    if ("total_tokens" in g) == ("epochs" in g):
        raise UserError(f"{where}: give exactly one of total_tokens (e.g. \"200M\") and epochs "
                        "(here or in [defaults])")
    us = [_count(u, f"{where}: unique_tokens") for u in _as_list(g["unique_tokens"])]
    presets = [str(p) for p in _as_list(g["preset"])]
    for p in presets:
        if p not in PRESETS:
            raise UserError(f"{where}: preset {p!r} is not one of {', '.join(PRESETS)}")
    objectives = [str(o) for o in _as_list(g["objective"])]
    for o in objectives:
        if o not in OBJECTIVES:
            raise UserError(f"{where}: objective {o!r} is not one of {', '.join(OBJECTIVES)} "
                            "(an ablation is an objective with `variant` and `train` options)")
    seeds = _as_list(g.get("seed", 0))
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise UserError(f"{where}: seed {s!r} must be a whole number >= 0")
    variant = str(g.get("variant", ""))
    overrides = check_overrides(g.get("train", {}), where)
    if variant and not _VARIANT.match(variant):
        raise UserError(f"{where}: variant {variant!r}: use lower-case letters, digits, . _ - "
                        "(at most 40)")
    if "train" in grid and grid["train"] and not variant:
        raise UserError(f"{where}: a grid with its own `train` options needs a `variant` name "
                        "(the ablation's name in cell ids and reports)")
    gpus = g.get("gpus", 1)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise UserError(f"{where}: gpus must be a whole number >= 1")
    cells = []
    for u, p, o, s in itertools.product(us, presets, objectives, seeds):
        if "epochs" in g:
            ep = g["epochs"]
            if not isinstance(ep, int | float) or isinstance(ep, bool) or ep <= 0:
                raise UserError(f"{where}: epochs must be a number > 0")
            total = int(round(ep * u))
        else:
            total = _count(g["total_tokens"], f"{where}: total_tokens")
        cells.append(Cell(unique_tokens=u, preset=p, objective=o, seed=s, total_tokens=total,
                          variant=variant, overrides=overrides, gpus=gpus))
    return cells


def parse_spec(text: str, path: Path | None = None, where: str | None = None) -> Spec:
    """A spec's TOML text -> Spec; every problem is one UserError naming the key."""
    where = where or (str(path) if path else "spec")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML ({e})") from None
    allowed = ("name", "description", "corpus", "defaults", "grid", "eval", "throughput")
    _unknown(raw, allowed, where)
    # relative paths in a spec (corpus.dir, eval.codechoice.file) are relative to the folder
    # codediff runs in, like paths on the command line: the spec's copy in the sweep dir then
    # means the same
    base = None
    corpus = _corpus(raw.get("corpus"), where, base)
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UserError(f"{where}: [defaults] must be a table")
    _unknown(defaults, GRID_KEYS, f"{where}: [defaults]")
    grids = raw.get("grid")
    if not isinstance(grids, list) or not grids:
        raise UserError(f"{where}: no [[grid]] table; add one with unique_tokens, preset and "
                        "objective")
    cells: list[Cell] = []
    for i, g in enumerate(grids, 1):
        cells += _cells_of(g, defaults, f"{where}: grid {i}")
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.id in seen:
            raise UserError(f"{where}: cell {c.id} appears twice (two grids give the same U, "
                            "preset, objective, variant and seed); give the second a variant")
        seen[c.id] = c
    if not any(c.objective == "ar" for c in cells) or not any(c.objective == "mdm"
                                                                  for c in cells):
        pass  # a one-objective sweep is allowed (no crossover then); the report says so
    throughput = {}
    tp = raw.get("throughput", {})
    if not isinstance(tp, dict):
        raise UserError(f"{where}: [throughput] must be a table of \"preset:objective\" = "
                        "tokens per second")
    for k, v in tp.items():
        p, _, o = k.partition(":")
        if p not in PRESETS or o not in OBJECTIVES:
            raise UserError(f"{where}: throughput key {k!r}: write \"preset:objective\", e.g. "
                            "\"tiny:ar\"")
        throughput[k] = float(_count(v, f"{where}: throughput.{k}"))
    name = str(raw.get("name") or (path.stem if path else "sweep"))
    return Spec(name=name, path=path, corpus=corpus, cells=cells,
                eval=_eval(raw.get("eval"), where, base), throughput=throughput, text=text)


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such spec file; write one (docs/sweep.md)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; a spec is a TOML file") from None
    return parse_spec(text, p.resolve())
