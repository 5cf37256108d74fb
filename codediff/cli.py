"""The `codediff` command: the one place that wires corpus, training, generation, judging and reports.

Each sub-command lives in a light module exposing `add_arguments(parser)` and `run(args) -> int`.
Only the chosen sub-command's module is imported, so `codediff evaluate` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import textwrap
import typing

from codediff import __version__
from codediff.errors import UserError

# name -> (module, one-line help), in the order `codediff --help` lists them: the pipeline first
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("codediff.corpus.cli", "build a capped, deduplicated, decontaminated Python corpus"),
    "train": ("codediff.train_cli", "train an `ar` or `mdm` coder on a corpus for a token budget"),
    "generate": ("codediff.generate_cli", "sample completions for a task from a checkpoint"),
    "evaluate": ("codediff.harness.evaluate", "judge samples by running their tests in a sandbox"),
    "report": ("codediff.reports.cli", "render HTML reports and leaderboards from result dirs"),
    "leaderboard": ("codediff.reports.leaderboard", "build a static leaderboard site from result "
                    "dirs"),
    "sweep": ("codediff.sweep_cli", "train and score a grid of ar/mdm cells on nested corpora; "
              "find the crossover"),
    "codechoice": ("codediff.harness.codechoice_cli", "build the 4-way code-choice set (reference vs "
                   "failing mutants)"),
    "score": ("codediff.codechoice_score", "rank code-choice options by a checkpoint's "
              "likelihood"),
    "tasks": ("codediff.harness.tasks_cli", "list the benchmark tasks, their prompt formats and "
              "where their data comes from"),
    "recipes": ("codediff.recipe", "list the published evaluation settings of external models"),
    "export": ("codediff.export", "export an mdm checkpoint in the LLaDA convention"),
    "demo": ("codediff.demo", "the whole pipeline on a CPU in minutes, ending in a leaderboard"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line (`codediff: error: ...`, exit 2), like a
    UserError, instead of the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        message = message.replace("argument ", "", 1) if message.startswith("argument ") \
            else message
        print(f"codediff: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def _usage(width: int | None = None) -> str:
    """The command list: every description starts in one column, and one too long for the
    terminal (at most 100 columns) wraps under itself."""
    if width is None:
        width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    indent = 2 + max(map(len, COMMANDS)) + 2
    lines = [f"codediff {__version__}", "", "usage: codediff <command> [options]", "", "commands:"]
    for name, (_, help_) in COMMANDS.items():
        wrapped = textwrap.wrap(help_, max(width - indent, 30)) or [""]
        lines.append(f"  {name:<{indent - 2}}{wrapped[0]}")
        lines += [" " * indent + more for more in wrapped[1:]]
    lines += ["", "`codediff <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"codediff {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"codediff: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        print(f"codediff: error: `{name}` is not available ({e}); reinstall with `make install`",
              file=sys.stderr)
        return 2
    parser = _Parser(prog=f"codediff {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        rc = int(module.run(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return rc
    except UserError as e:
        print(f"codediff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codediff: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `codediff recipes | head`: the reader left; point stdout at /dev/null so that
        # Python's flush at exit does not raise a second time, and end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
