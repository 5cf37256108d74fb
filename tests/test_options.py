"""The typed-settings machinery (codediff.options): dataclass -> argparse, --help, validation,
explicit options, output paths and the one count parser."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from codediff import options
from codediff.errors import UserError
from codediff.options import option, parse_count

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Toy:
    name: str = option(help="a required name")
    layers: int = option(3, min=1, help="how many layers")
    rate: float = option(0.5, min=0, below=1, help="a probability")
    mode: str = option("fast", choices=("fast", "slow"), help="speed")
    tokens: int | None = option(None, count=True, min=1, help="a count",
                                default_text="all of them")
    depth: int = option(2, min=0, kind="ar", help="ar only")
    width: int = option(4, min=0, kind="dlm", help="dlm only")
    progress: bool = option(True, help="progress bar", false_aliases=("--quiet",))
    hidden: int = option(7, help="not an option", cli=False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    options.add_arguments(p, Toy)
    return p


def test_count_parser_is_exact_and_shared():
    from codediff.corpus.cli import parse_count as corpus_count
    from codediff.train_cli import options as train_options

    assert corpus_count is parse_count and train_options.parse_count is parse_count
    assert parse_count("1.5M") == 1_500_000 and parse_count("250k") == 250_000
    assert parse_count("1e6") == 1_000_000 and parse_count("1_000") == 1000
    assert parse_count("1.5B") == 1_500_000_000 and parse_count("0.3M") == 300_000
    assert parse_count(42) == 42 and parse_count(2e6) == 2_000_000
    for bad in ("1.5", "1.0005k", "lots", "", "1e-3", "inf", True):
        with pytest.raises(UserError):
            parse_count(bad)
    with pytest.raises(argparse.ArgumentTypeError):  # argparse reports it on the flag
        parse_count("2.5")


def test_fields_become_flags_with_their_defaults_and_explicit_marks():
    args = parser().parse_args(["--name", "x", "--layers", "5", "--quiet", "--tokens", "2k"])
    cfg = options.from_args(Toy, args)
    assert (cfg.name, cfg.layers, cfg.rate, cfg.mode, cfg.tokens) == ("x", 5, 0.5, "fast", 2000)
    assert cfg.progress is False and cfg.hidden == 7
    assert options.explicit(args) == {"name", "layers", "progress", "tokens"}
    assert parser().parse_args(["--name", "x", "--no-progress"]).progress is False
    assert not hasattr(args, "hidden")


def test_help_shows_real_defaults_choices_bounds_and_required():
    text = parser().format_help()
    flat = " ".join(text.split())
    assert "a required name (required)" in flat
    assert "how many layers (default: 3; >= 1)" in flat
    assert "a probability (default: 0.5; >= 0 and < 1)" in flat
    assert "{fast,slow}" in flat and "speed (default: fast)" in flat
    assert "a count (default: all of them; >= 1)" in flat
    assert "progress bar (default: on)" in flat
    assert "None" not in text and "--quiet" not in text  # the alias is hidden


@pytest.mark.parametrize("argv,message", [
    (["--layers", "0"], "--layers 0: must be at least 1"),
    (["--rate", "1"], "--rate 1.0: must be below 1"),
    (["--tokens", "0"], "--tokens 0: must be at least 1"),
])
def test_bounds_are_refused_naming_the_flag(argv, message):
    args = parser().parse_args(["--name", "x", *argv])
    with pytest.raises(UserError, match=message):
        options.from_args(Toy, args)


def test_values_from_files_are_type_checked():
    f = {x.name: x for x in options.cli_fields(Toy)}
    assert options.check_value(Toy, f["rate"], 0, "run.toml: rate") == 0.0
    assert options.check_value(Toy, f["tokens"], "3M") == 3_000_000
    with pytest.raises(UserError, match="run.toml: layers 'two': must be a whole number"):
        options.check_value(Toy, f["layers"], "two", "run.toml: layers")
    with pytest.raises(UserError, match="must be true or false"):
        options.check_value(Toy, f["progress"], "yes")
    with pytest.raises(UserError, match="choose one of fast, slow"):
        options.check_value(Toy, f["mode"], "medium")


def test_options_of_the_other_model_kind_are_refused_only_when_set():
    options.check_kind(Toy, {"depth", "layers"}, "ar", "runs/a")
    options.check_kind(Toy, set(), "dlm", "runs/a")  # defaults never count
    with pytest.raises(UserError, match=r"--depth applies to ar models only, and runs/m is a "
                                        r"dlm model; drop --depth"):
        options.check_kind(Toy, {"depth", "layers"}, "dlm", "runs/m")


def test_output_paths_are_checked_before_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    (tmp_path / "empty").mkdir()
    options.check_out(tmp_path / "new" / "deeper", folder=True, overwrite=False)
    options.check_out(tmp_path / "empty", folder=True, overwrite=False)  # empty: fine
    options.check_out(tmp_path / "full", folder=True, reusable=True)  # resumable output
    options.check_out(afile, folder=False, overwrite=True)
    for path, folder, overwrite, message in [
        (afile / "sub", True, False, "is a file, not a folder"),
        (afile, True, False, "a folder is expected"),
        (tmp_path / "full", False, False, "is a folder"),
        (tmp_path / "full", True, False, "pass --overwrite"),
        (afile, False, False, "pass --overwrite"),
        (Path("/sys/codediff-probe"), True, False, "cannot write"),
    ]:
        with pytest.raises(UserError, match=message):
            options.check_out(path, folder=folder, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "full"]


def help_of(command: str) -> str:
    from codediff.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(buf.getvalue().split())


@pytest.mark.parametrize("command", ["corpus", "train", "generate", "evaluate", "score",
                                     "codechoice", "report", "export", "tasks"])
def test_every_command_help_shows_defaults_not_none(command):
    text = help_of(command)
    assert "default: None" not in text and "(default None)" not in text


def test_help_names_choices_and_what_follows_what():
    train = help_of("train")
    for flag, choices in (("--schedule", "{cosine,wsd,constant}"),
                          ("--t-sampling", "{uniform,stratified,antithetic}"),
                          ("--compile-mode", "{auto,default,reduce-overhead,")):
        assert f"{flag} {choices}" in train
    assert "tiny cosine" in train and "default: stratified" in train
    assert "--vocab-size VOCAB_SIZE embedding rows; follows the corpus tokenizer" in train
    assert "--lr LR peak learning rate (default: from --preset: tiny 0.001" in train
    generate = help_of("generate")
    assert "--backend {auto,native,hf,vllm}" in generate and "(default: auto)" in generate
    assert "--tau TAU threshold sampler: confidence bar (default: 0.9; >= 0 and <= 1)" in generate
    assert "--mc-samples" in help_of("score") and "0 = all cores" in help_of("evaluate")


def test_train_and_generate_help_do_not_load_torch():
    code = ("import contextlib, io, sys\n"
            "from codediff.cli import main\n"
            "for c in ('train', 'generate', 'corpus', 'score'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main([c, '--help'])\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=True)
    assert r.stdout.strip() == "False"


def test_generate_settings_are_the_one_source_of_defaults():
    from codediff import generate_cli
    from codediff.config import GenerateConfig

    p = argparse.ArgumentParser()
    generate_cli.add_arguments(p)
    cfg = generate_cli.config_from_args(p.parse_args(["--model", "m", "--task", "t", "--out",
                                                      "o.jsonl", "--tau", "0.7"]))
    default = GenerateConfig(model="m", task="t", out="o.jsonl")
    assert cfg.explicit == {"model", "task", "out", "tau"} and cfg.tau == 0.7
    assert {k: v for k, v in vars(cfg).items() if k not in ("tau", "explicit")} == \
        {k: v for k, v in vars(default).items() if k not in ("tau", "explicit")}


def _command_lines(usage: str) -> list[str]:
    lines = usage.splitlines()
    start = lines.index("commands:") + 1
    return lines[start:lines.index("", start)]


@pytest.mark.parametrize("width", [100, 60])
def test_command_list_is_aligned(width):
    """`codediff --help`: every command once, every description starting in one column, and a
    description too long for the terminal wrapped under itself."""
    from codediff.cli import COMMANDS, _usage

    lines = _command_lines(_usage(width))
    named = [ln for ln in lines if ln[2:3] != " "]
    assert [ln.split()[0] for ln in named] == list(COMMANDS)
    columns = {len(ln) - len(ln[2 + len(ln.split()[0]):].lstrip()) for ln in named}
    assert len(columns) == 1, lines
    column = columns.pop()
    assert column == 2 + max(map(len, COMMANDS)) + 2
    for ln in lines:
        assert len(ln) <= max(width, column + 30), ln
        if ln not in named:  # a wrapped description continues in the same column
            assert len(ln) - len(ln.lstrip()) == column, ln
    assert any(ln not in named for ln in lines) == (width == 60)
    text = " ".join(" ".join(ln.split()[1:]) if ln in named else ln.strip() for ln in lines)
    for _, help_ in COMMANDS.values():
        assert help_ in text  # nothing lost in wrapping


def test_readme_lists_every_command():
    """README's command table: one line per `codediff` sub-command, none missing, none extra."""
    from codediff.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```\ncodediff corpus"):]
    block = block[4:block.index("```", 4)]
    names = [ln.split()[1] for ln in block.splitlines()]
    assert sorted(names) == sorted(COMMANDS)
    # descriptions start in one column
    assert len({len(re.match(r"codediff \S+\s+", ln)[0]) for ln in block.splitlines()}) == 1
