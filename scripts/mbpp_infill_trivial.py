"""Recompute tasks/mbpp_infill_trivial.py: the mbpp-infill-single holes that an empty fill or a
`pass` fill also passes (they are dropped from the task; docs/judge.md).

    CODEDIFF_DATA=DATA_FOLDER python scripts/mbpp_infill_trivial.py [--workers N]

Judges every candidate hole's canonical, empty and `pass` fills in the sandbox, refuses to write
if any canonical fill fails, then rewrites the module and prints the counts.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from codediff.harness import infill
from codediff.harness.tasks import Task, _mbpp_from_hub, _read_jsonl, _resolve_file, get_spec

OUT = Path(__file__).resolve().parent.parent / "tasks" / "mbpp_infill_trivial.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="MBPP file or data folder")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    spec = get_spec("mbpp-infill-single")
    path = _resolve_file(spec, args.data)
    rows = _read_jsonl(path) if path else _mbpp_from_hub(spec)
    candidates = infill.mbpp_candidates(spec, rows)
    task = Task(spec, candidates, infill.DatasetId(spec.name, spec.version, "", str(path)))
    verdicts = infill.judge_fills(task, workers=args.workers)
    trivial = infill.trivial_holes(verdicts)
    bad = {t: v["canonical"] for t, v in verdicts.items() if v["canonical"]["status"] != "passed"}
    if bad:
        raise SystemExit(f"canonical fills fail, nothing written: {bad}")
    infill.write_trivial_module(OUT, candidates, trivial)
    counts = collections.Counter(trivial.values())
    for kind in ("canonical", "empty", "pass"):
        print(kind, collections.Counter(v[kind]["status"] for v in verdicts.values()))
    print(f"{len(candidates)} candidate holes, {len(candidates) - len(trivial)} kept; dropped "
          f"{counts['empty']} (empty fill passes), {counts['pass']} (`pass` fill passes)")


if __name__ == "__main__":
    main()
