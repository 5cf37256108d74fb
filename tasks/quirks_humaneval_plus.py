"""HumanEval+ quirks: HumanEval/32 (`find_zero`) accepts any root, so its output is checked by
evaluating the polynomial at it rather than by equality with the canonical root."""

from __future__ import annotations

ORACLES: dict[str, dict] = {"find_zero": {"kind": "poly_root"}}


def deserialize_inputs(task_id: str, inputs: list) -> list:
    return inputs
