"""Infilling prompts for `codediff generate`: what the model is shown, how long its answer may
be and where the answer ends (docs/generation.md, "Infilling"). Torch-free.

A task whose spec names a `hole` kind ("single-line", "multi-line", "span") has a hole in each
problem: `prompt` is the text before it, `suffix` the text after it. Its prompt formats are

  prefix  only the text before the hole; the model continues it left to right;
  infill  both sides: an `mdm` model fills a run of masks between them, an `ar` model reads a
          PSM prompt (`<|fim_prefix|>` before `<|fim_suffix|>` after `<|fim_middle|>`) and
          writes the middle up to `<|endoftext|>` (only if it was trained with FIM).

The answer's length is not known in advance, and nothing may leak the reference's length:

  budget  (default) the same number of answer tokens for every problem of a hole kind
          (BUDGETS: `--gen-length` masks for `mdm`, `--max-new-tokens` for `ar`; either option
          given explicitly wins). The answer ends by the end rule below.
  oracle  an ABLATION: exactly as many masks as the reference fill has tokens. It reads the
          reference, so its scores are not benchmark scores; the samples' settings name it and
          every result and report label carries ORACLE_LABEL.

End rules: a single-line hole's answer is its first line, newline included (the hole is a whole
line: the reference fill ends with its newline, and the judged program is prompt + answer +
suffix); an answer without a newline gets one. Other holes end at the first end-of-text token
(the samplers' own rule) or at the budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codediff.errors import UserError

HOLES = ("single-line", "multi-line", "span")
LENGTH_RULES = ("budget", "oracle")
# Answer tokens per hole kind (multiples of the default --block-length 32). The reference fills'
# lengths in characters (HumanEval infilling, 95th / 99th percentile: single-line 60 / 84,
# random span 193 / 335, multi-line 414 / 615) at ~3 characters per code token: the budget
# covers about 95% of the references of its kind. One number per kind, never per problem.
BUDGETS = {"single-line": 32, "span": 64, "multi-line": 128}
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
ORACLE_LABEL = "oracle length (ablation)"


@dataclass(frozen=True)
class InfillPlan:
    """How one `codediff generate` run treats a task with holes."""

    prompt: str        # "prefix" | "infill"
    hole: str          # a HOLES kind ("" when the task does not say)
    length_rule: str   # "budget" | "oracle"
    budget: int | None  # answer tokens under "budget" (None under "oracle": per problem)
    end_rule: str      # "line" | "eos"

    @property
    def infill(self) -> bool:
        return self.prompt == "infill"

    def settings(self) -> dict[str, Any]:
        """What the samples' settings (and so their identity) record."""
        return {"prompt": self.prompt, "hole": self.hole, "length_rule": self.length_rule,
                "budget": self.budget, "end_rule": self.end_rule}


def hole_of(task: Any) -> str:
    """The task's hole kind ("" for an ordinary task)."""
    return str(getattr(task.spec, "hole", "") or "")


def has_suffix(fmt: Any) -> bool:
    """Does this prompt format show text after the hole?"""
    return bool(getattr(fmt, "suffix", ""))


def end_rule(hole: str) -> str:
    return "line" if hole == "single-line" else "eos"


def plan_for(task: Any, fmt: Any, *, mode: str, length_rule: str, answer_tokens: int,
             explicit: bool) -> InfillPlan | None:
    """The plan for a task with holes (None for an ordinary task). `answer_tokens` is the
    run's --gen-length (mdm) or --max-new-tokens (ar); `explicit`: the user gave it."""
    hole = hole_of(task)
    infill = has_suffix(fmt)
    if not hole and not infill:
        return None
    if length_rule == "oracle" and mode != "dlm":
        raise UserError("--infill-length oracle applies to mdm (diffusion) models only; drop it")
    budget = answer_tokens if explicit or hole not in BUDGETS else BUDGETS[hole]
    return InfillPlan(prompt="infill" if infill else "prefix", hole=hole,
                      length_rule=length_rule, budget=None if length_rule == "oracle" else budget,
                      end_rule=end_rule(hole))


def end_of_line(text: str) -> str:
    """A single-line hole's answer: the text up to and including its first newline (one is
    added when there is none)."""
    cut = text.find("\n")
    return text[:cut + 1] if cut >= 0 else text + "\n"


def reference_fill(problem: Any) -> str:
    """The canonical text of the hole: the reference program without the prompt and suffix."""
    ref, pre, suf = problem.reference, problem.prompt, getattr(problem, "suffix", "")
    if not (ref.startswith(pre) and ref.endswith(suf) and len(ref) >= len(pre) + len(suf)):
        raise UserError(f"{problem.task_id}: its reference is not prompt + fill + suffix, so "
                        "--infill-length oracle cannot measure the fill; use --infill-length "
                        "budget")
    return ref[len(pre):len(ref) - len(suf)]


# ----------------------------------------------------------------------------- ar: FIM

def fim_rate_of(meta: dict | None, checkpoint: str | Path | None) -> float:
    """The FIM rate a native checkpoint was trained with (0 when it records none): from the
    checkpoint's own record, else from the run dir's run.json beside its checkpoints folder."""
    meta = meta or {}
    for rec in (meta, meta.get("train") or {}, meta.get("train_config") or {}):
        if isinstance(rec, dict) and rec.get("fim_rate") is not None:
            return float(rec["fim_rate"])
    if checkpoint:
        run_json = Path(checkpoint).parent.parent / "run.json"
        try:
            run = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0.0
        return float(((run.get("train") or {}).get("fim_rate")) or 0.0)
    return 0.0


def psm(prefix: list[int], suffix: list[int], sentinels: tuple[int, int, int]) -> list[int]:
    """The PSM prompt: <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>."""
    pre_id, suf_id, mid_id = sentinels
    return [pre_id, *prefix, suf_id, *suffix, mid_id]


def fit(prefix: list[int], suffix: list[int], room: int | None) -> tuple[list[int], list[int],
                                                                         bool]:
    """Prefix and suffix cut to `room` tokens together: the prefix loses its oldest tokens, the
    suffix its last ones, each keeping at least half the room when the other needs it."""
    if room is None or len(prefix) + len(suffix) <= room:
        return prefix, suffix, False
    keep_suf = min(len(suffix), max(room - len(prefix), room // 2))
    keep_pre = room - keep_suf
    return (prefix[len(prefix) - keep_pre:] if keep_pre > 0 else []), suffix[:keep_suf], True
