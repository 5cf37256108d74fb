"""`make demo`: judge HumanEval's canonical solutions plus wrong ones, end to end through the CLI.

Writes demo-out/samples.jsonl and demo-out/results/, then prints the summary table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codediff.cli import main  # noqa: E402
from harness.tasks import load_task  # noqa: E402
from tests.wrong_completions import WRONG_BODIES, mutant  # noqa: E402


def demo() -> int:
    out = ROOT / "demo-out"
    out.mkdir(exist_ok=True)
    task = load_task("humaneval")
    rows = []
    for i, p in enumerate(task.problems):
        body = p.reference[len(p.prompt):]
        rows.append({"task_id": p.task_id, "completion": body})
        rows.append({"task_id": p.task_id, "completion": WRONG_BODIES[i % len(WRONG_BODIES)]})
        m = mutant(body, i)
        if m is not None and "while" not in body:
            rows.append({"task_id": p.task_id, "completion": m})
        else:
            rows.append({"task_id": p.task_id, "completion": body})
    samples = out / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"judging {len(rows)} HumanEval samples (canonical, wrong, one-operator mutants) ...")
    return main(["evaluate", "--task", "humaneval", "--samples", str(samples),
                 "--out", str(out / "results"), "--k", "1,3"])


if __name__ == "__main__":
    sys.exit(demo())
