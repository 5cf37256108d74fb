"""Time `codediff corpus` on the running interpreter's standard library.

Target (issue 3): the stdlib corpus (~34 MB of Python) builds in under 2 minutes on 2 cores.

    python bench/corpus_build.py                      # U = 5M, val = 1M, all cores
    python bench/corpus_build.py --workers 2 --repeat 2

Prints the seconds of each phase and one JSON line with the result; the corpus itself is built
in a temporary folder and deleted. Task data for decontamination comes from $CODEDIFF_DATA (the
Makefile sets it); without it MBPP / MBPP+ are skipped (and MBPP may be tried from the hub).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codediff.corpus.build import CorpusConfig, build_corpus  # noqa: E402
from codediff.corpus.cli import parse_count  # noqa: E402
from codediff.corpus.decontam import DecontamConfig  # noqa: E402

TARGET_S = 120.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unique-tokens", type=parse_count, default=5_000_000)
    ap.add_argument("--val-tokens", type=parse_count, default=1_000_000)
    ap.add_argument("--vocab-size", type=parse_count, default=8192)
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = CorpusConfig(out=str(Path(tmp) / "stdlib"), unique_tokens=args.unique_tokens,
                               val_tokens=args.val_tokens, sources=["stdlib"],
                               vocab_size=args.vocab_size, workers=args.workers,
                               progress=args.progress,
                               decontam=DecontamConfig(data_dir=os.environ.get("CODEDIFF_DATA")))
            timings: dict[str, float] = {}
            t = time.time()
            m = build_corpus(cfg, timings)
            wall = time.time() - t
        runs.append({k: round(v, 2) for k, v in timings.items()} | {"wall": round(wall, 2)})
        src = m["sources"][0]
        print(f"stdlib build: {wall:.1f}s  (" + ", ".join(f"{k} {v:.1f}s" for k, v in
                                                      timings.items() if k != "total") + ")")
    best = min(r["wall"] for r in runs)
    result = {
        "bench": "corpus_build", "source": "stdlib", "python": platform.python_version(),
        "cores": cores, "workers": args.workers or cores,
        "stdlib_files": src["read"], "stdlib_mb": round(src["bytes"] / 1e6, 1),
        "kept_files": src["kept"], "unique_tokens": m["unique_tokens"],
        "val_tokens": m["val_tokens"], "vocab_size": m["tokenizer"]["vocab_size"],
        "decontaminated": m["decontamination"]["removed"],
        "runs": runs, "best_wall_s": best, "target_s": TARGET_S, "ok": best < TARGET_S,
    }
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
