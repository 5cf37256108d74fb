#!/usr/bin/env bash
# One H100 call (~9 min): SDPA's per-shape cost (bench/sdpa_shapes.py), the rotary-backward study, then the training-throughput benchmark
# (tiny and small, ar and mdm; default compile mode, CUDA graphs, and mdm with the output head on
# every position instead of the masked ones; host breakdown, profiles).
# Each stage is capped with `timeout` and writes into $OUT as it goes.
#   carry: .whl (scripts/device_wheels.sh; only tqdm is needed)
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
t0=$(date +%s)
timeout 60 python3 bench/sdpa_shapes.py > "$OUT/sdpa.log" 2>&1 || echo "sdpa_shapes: exit $?"
cat "$OUT/sdpa.log"
timeout "${ROPE_SECONDS:-100}" python3 bench/rope_backward.py > "$OUT/rope.log" 2>&1 \
  || echo "rope_backward: stopped or failed (exit $?)"
grep -v -i warn "$OUT/rope.log" | tail -n 12
echo "rope done at $(( $(date +%s) - t0 )) s"
timeout "${TRAIN_SECONDS:-440}" python3 bench/train_throughput.py --extra reduce-overhead,fullhead \
  --extra-configs tiny,small --host 20 --profile 3 --profile-dir "$OUT/prof" \
  --out "$OUT/train.jsonl" > "$OUT/train.log" 2>&1 || echo "train_throughput: stopped (exit $?)"
tail -n 16 "$OUT/train.log"
echo "total $(( $(date +%s) - t0 )) s"
