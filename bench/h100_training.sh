#!/usr/bin/env bash
# One H100 call (~8 min): the rotary-backward study, then the training-throughput benchmark
# (tiny and small, ar and mdm, default compile mode and CUDA graphs, host breakdown, profiles).
# Each stage is capped with `timeout` and writes into $OUT as it goes.
#   carry: .whl (scripts/device_wheels.sh; only tqdm is needed)
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
t0=$(date +%s)
timeout "${ROPE_SECONDS:-120}" python3 bench/rope_backward.py > "$OUT/rope.log" 2>&1 \
  || echo "rope_backward: stopped or failed (exit $?)"
grep -v -i warn "$OUT/rope.log" | tail -n 12
echo "rope done at $(( $(date +%s) - t0 )) s"
timeout "${TRAIN_SECONDS:-420}" python3 bench/train_throughput.py --extra reduce-overhead \
  --extra-configs tiny,small --host 20 --profile 3 --profile-dir "$OUT/prof" \
  --out "$OUT/train.jsonl" > "$OUT/train.log" 2>&1 || echo "train_throughput: stopped (exit $?)"
tail -n 16 "$OUT/train.log"
echo "total $(( $(date +%s) - t0 )) s"
