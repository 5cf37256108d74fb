#!/usr/bin/env bash
# One call on two H100s (~4 min): the same short `tiny` run on 2 GPUs (torchrun, DDP for ar,
# FSDP2 for mdm; compiled) and on 1 GPU (eager) with the same global batch and micro-batches:
# the losses should agree to bf16 noise. (The 2026-11-27 run predates `--micro-batch 64` below,
# so its mdm pair drew different noise.)
#   carry: .whl (scripts/device_wheels.sh) and corpora/stdlib-5m
set -uo pipefail  # one failed run must not skip the others
OUT=${OUT:-out}
mkdir -p "$OUT" runs
common=(--corpus corpora/stdlib-5m --total-tokens 3276800 --batch-size 128 --no-progress
        --eval-points 3 --checkpoint-points 1 --log-every 25 --val-tokens 262144)
for spec in ar:ddp mdm:fsdp; do
  obj=${spec%:*}; d=${spec#*:}
  t0=$(date +%s)
  torchrun --standalone --nproc_per_node 2 -m codediff.cli train --objective "$obj" --dist "$d" \
    --out "runs/$obj-2gpu-$d" "${common[@]}" > "$OUT/$obj-2gpu-$d.log" 2>&1 || echo "FAILED: see $obj-2gpu-$d.log"
  echo "$obj 2 GPUs $d: $(( $(date +%s) - t0 )) s"
  t0=$(date +%s)
  # micro-batch 64 with 2 accumulation steps: the same micro-batches (and mdm noise) as 2 ranks
  python3 -m codediff.cli train --objective "$obj" --out "runs/$obj-1gpu" "${common[@]}" --no-compile \
    --micro-batch 64 \
    > "$OUT/$obj-1gpu.log" 2>&1 || echo "FAILED: see $obj-1gpu.log"
  echo "$obj 1 GPU: $(( $(date +%s) - t0 )) s"
done
for r in runs/*; do echo "== $r"; cp "$r/metrics.jsonl" "$OUT/$(basename "$r").metrics.jsonl"
  grep val_loss "$r/metrics.jsonl" | tail -n 3; done
