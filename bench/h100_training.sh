#!/usr/bin/env bash
# One H100 call (~8 min): the rotary-backward study (bench/rope_backward.py), then the
# training-throughput benchmark: tiny and small, ar and mdm, the plain loop against codediff's
# default (CUDA graphs on one GPU, masked-position head for mdm, Triton RoPE), plus codediff
# without CUDA graphs (tiny) and with RoPE left to the compiler (both). Each stage is capped
# with `timeout` and writes into $OUT as it goes.
#   carry: .whl (scripts/device_wheels.sh; only tqdm is needed)
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
t0=$(date +%s)
if ! timeout "${ROPE_SECONDS:-70}" python3 bench/rope_backward.py > "$OUT/rope.log" 2>&1; then
  echo "rope_backward: stopped or failed: the throughput runs go on without the Triton RoPE"
  export CODEDIFF_FUSED_ROPE=0
fi
grep -v -i warn "$OUT/rope.log" | tail -n 14
echo "rope done at $(( $(date +%s) - t0 )) s"
tp() {  # config extras seconds
  timeout "$3" python3 bench/train_throughput.py --configs "$1" --extra "$2" --extra-configs "$1" \
    --host 20 --profile 3 --profile-dir "$OUT/prof" --out "$OUT/train.jsonl" \
    >> "$OUT/train.log" 2>&1 || echo "train_throughput $1: stopped (exit $?)"
}
tp tiny default,nofusedrope "${TINY_SECONDS:-200}"
tp small nofusedrope "${SMALL_SECONDS:-280}"
grep -E "^(config|tiny|small) " "$OUT/train.log"
echo "total $(( $(date +%s) - t0 )) s"
