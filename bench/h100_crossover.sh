#!/usr/bin/env bash
# One H100 call (~7 min): the small-scale crossover (bench/crossover.py): `tiny` ar and mdm on the
# 5M-unique-token corpus for 200M tokens (40 epochs), every kept checkpoint scored on the
# code-choice set. Results are packed into $OUT/xover.tgz even when a stage runs out of time.
#   carry: .whl (scripts/device_wheels.sh), corpora/stdlib-5m and corpora/codechoice.jsonl, built
#   with `codediff corpus --source stdlib -U 5M --val-tokens 1M --out corpora/stdlib-5m` and
#   `codediff codechoice --out corpora/codechoice.jsonl`
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT" xover
t0=$(date +%s)
timeout "${XOVER_SECONDS:-450}" python3 bench/crossover.py --corpus corpora/stdlib-5m \
  --choices corpora/codechoice.jsonl --total-tokens "${TOTAL_TOKENS:-200M}" --runs runs/xover \
  --out xover > "$OUT/crossover.log" 2>&1 || echo "crossover: stopped (exit $?)"
cp runs/xover/ar/metrics.jsonl xover/ar-metrics.jsonl 2>/dev/null
cp runs/xover/mdm/metrics.jsonl xover/mdm-metrics.jsonl 2>/dev/null
tar czf "$OUT/xover.tgz" xover
tail -n 30 "$OUT/crossover.log"
echo "total $(( $(date +%s) - t0 )) s"
