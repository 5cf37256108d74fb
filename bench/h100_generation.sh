#!/usr/bin/env bash
# One H100 call (~8 min): train the `tiny` ar and mdm models of the generation benchmark on a
# carried corpus, then run bench/generate_throughput.py at batch 16, at batch 1, and at batch 1
# with CUDA graphs. Each stage is capped with `timeout` and packs its results into $OUT at once
# (the device returns at most 8 files, and a call that runs out of time keeps what is already
# there).
#   carry: .whl (scripts/device_wheels.sh), corpora/codechoice.jsonl and corpora/gen-8m, built with
#   codediff corpus --source stdlib --source site-packages -U 8M --val-tokens 200k --out corpora/gen-8m
set -uo pipefail
OUT=${OUT:-out}
AR_TOKENS=${AR_TOKENS:-30M}
MDM_TOKENS=${MDM_TOKENS:-200M}
CONFIGS=${CONFIGS:-ar_kv dlm_1tok dlm_threshold dlm_thr_prefix dlm_thr_dual}
mkdir -p "$OUT" runs
train() {  # objective tokens
  python3 -m codediff.cli train --corpus corpora/gen-8m --objective "$1" --out "runs/$1" \
    --total-tokens "$2" --max-seq-len 512 --eval-points 8 --no-progress \
    > "runs/train-$1.log" 2>&1
}
t0=$(date +%s)
train ar "$AR_TOKENS" & train mdm "$MDM_TOKENS" & wait
echo "trained in $(( $(date +%s) - t0 )) s"; tail -n 1 runs/ar/metrics.jsonl runs/mdm/metrics.jsonl
bench() {  # name seconds args...
  local name=$1 secs=$2; shift 2
  timeout "$secs" python3 bench/generate_throughput.py --ar runs/ar --mdm runs/mdm --only $CONFIGS \
    --out "$name" "$@" > "$OUT/$name.log" 2>&1 || echo "$name: stopped (exit $?)"
  tail -n 9 "$OUT/$name.log"
  tar czf "$OUT/$name.tgz" "$name"
  echo "$name done at $(( $(date +%s) - t0 )) s"
}
CONFIGS="$CONFIGS dlm_thr0.7_dual"
bench gen-b16 ${B16_SECONDS:-120} --limit 64 --batch-size 16 --extra-taus 0.7
bench gen-b1 ${B1_SECONDS:-200} --limit 16 --extra-taus 0.7
# the same with every DLM row's block forwards replayed as CUDA graphs (AR unchanged)
CONFIGS="dlm_1tok dlm_threshold dlm_thr_dual dlm_thr0.7_dual"
bench gen-b1-graphs ${B1G_SECONDS:-150} --limit 16 --extra-taus 0.7 --cuda-graphs
# quality beside speed: 4-way code-choice accuracy of both models (corpora/codechoice.jsonl, built
# here with `codediff codechoice`; carried)
if [ -f corpora/codechoice.jsonl ]; then
  for m in ar mdm; do
    timeout "${CHOICE_SECONDS:-50}" python3 -m codediff.cli score --model "runs/$m" \
      --choices corpora/codechoice.jsonl --out "runs/$m/codechoice.json" \
      > "runs/$m/codechoice.log" 2>&1 || echo "score $m: exit $?"
    tail -n 2 "runs/$m/codechoice.log"
  done
fi
tar czf "$OUT/runs.tgz" runs/train-*.log runs/ar/metrics.jsonl runs/mdm/metrics.jsonl \
  runs/*/run.json runs/*/codechoice.*
