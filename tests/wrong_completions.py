"""Deterministic wrong completions for HumanEval, shared by the parity test and the benchmark."""

from __future__ import annotations

import re

WRONG_BODIES = ["    return None\n", "    pass\n", "    raise NotImplementedError\n",
                "    return 0\n", "    return []\n"]

_SWAPS = [(" + ", " - "), (" < ", " <= "), (" > ", " >= "), ("True", "False"), (" == ", " != "),
          ("[1:]", "[2:]"), (" * ", " + ")]


def mutant(body: str, i: int = 0) -> str | None:
    """The canonical body with one operator swapped (None when nothing can be swapped)."""
    swaps = _SWAPS[i % len(_SWAPS):] + _SWAPS[: i % len(_SWAPS)]
    for a, b in swaps:
        if a in body:
            return body.replace(a, b, 1)
    return None


def syntax_error(body: str) -> str:
    return re.sub(r"\)\s*$", "", body.rstrip()) + " (\n"
