#!/usr/bin/env bash
# One H100 call (~9 min): train the `tiny` ar and mdm models of the generation benchmark on a
# carried corpus, then run bench/generate_throughput.py in several settings, eagerly and with
# --cuda-graphs, and compare the sample files of each configuration made both ways. Each stage is
# capped with `timeout` and packs its folder (log included) into $OUT at once: the device
# returns at most 8 files, and a call that runs out of time keeps what is already there.
#   carry: .whl (scripts/device_wheels.sh), corpora/codechoice.jsonl and corpora/gen-8m, built with
#   codediff corpus --source stdlib --source site-packages -U 8M --val-tokens 200k --out corpora/gen-8m
#   STAGES: which settings, in order; each is b<batch>[g] (g: with CUDA graphs). The models are
#   trained once: a later call on the same warm machine reuses runs/ (training is resumable, so a
#   finished run returns at once).
set -uo pipefail
OUT=${OUT:-out}
AR_TOKENS=${AR_TOKENS:-30M}
MDM_TOKENS=${MDM_TOKENS:-200M}
STAGES=${STAGES:-b16 b16g b64 b64g b128g b1g b1}
CONFIGS=${CONFIGS:-ar_kv dlm_1tok dlm_threshold dlm_thr_prefix dlm_thr_dual dlm_thr0.7_dual}
mkdir -p "$OUT" runs
train() {  # objective tokens
  python3 -m codediff.cli train --corpus corpora/gen-8m --objective "$1" --out "runs/$1" \
    --total-tokens "$2" --max-seq-len 512 --eval-points 8 --no-progress \
    > "runs/train-$1.log" 2>&1
}
t0=$(date +%s)
train ar "$AR_TOKENS" & train mdm "$MDM_TOKENS" & wait
tail -n 1 runs/train-ar.log runs/train-mdm.log
echo "trained in $(( $(date +%s) - t0 )) s"; tail -n 1 runs/ar/metrics.jsonl runs/mdm/metrics.jsonl
for stage in $STAGES; do
  [[ $stage =~ ^b([0-9]+)(g?)$ ]] || { echo "bad stage $stage"; exit 2; }
  batch=${BASH_REMATCH[1]}; graphs=(--no-cuda-graphs); [ -n "${BASH_REMATCH[2]}" ] && graphs=()
  case $batch in 1) limit=${B1_LIMIT:-8} secs=${B1_SECONDS:-100};;
                 64|128) limit=128 secs=90;; *) limit=64 secs=90;; esac
  name=gen-$stage
  rm -rf "$name"; mkdir -p "$name"  # never resume a stage: its timings would be partial
  timeout "$secs" python3 bench/generate_throughput.py --ar runs/ar --mdm runs/mdm \
    --only $CONFIGS --extra-taus 0.7 --limit "$limit" --batch-size "$batch" "${graphs[@]}" \
    --out "$name" > "$name/log" 2>&1 || echo "$name: stopped (exit $?)"
  tail -n 9 "$name/log"
  tar czf "$OUT/$name.tgz" "$name"
  echo "$name done at $(( $(date +%s) - t0 )) s"
done
# graphed samples = eager samples? (each graphed stage against the eager one at its batch size)
python3 - <<'PY' | tee runs/graphs-vs-eager.txt
import json
from pathlib import Path
for b in sorted(Path(".").glob("gen-b*g")):
    a = Path(str(b)[:-1])
    for f in sorted(b.glob("dlm_*.jsonl")):
        if (a / f.name).exists():
            ra = {r["task_id"]: r["completion"] for r in map(json.loads, (a / f.name).open())}
            rb = [json.loads(x) for x in f.open()]
            same = sum(ra.get(r["task_id"]) == r["completion"] for r in rb)
            print(f"{b.name} vs {a.name}, {f.stem}: {same}/{len(rb)} identical completions")
PY
# quality beside speed: 4-way code-choice accuracy of both models (corpora/codechoice.jsonl, built
# here with `codediff codechoice`; carried)
if [ -f corpora/codechoice.jsonl ] && [ -z "${NO_CHOICE:-}" ]; then
  for m in ar mdm; do
    timeout "${CHOICE_SECONDS:-50}" python3 -m codediff.cli score --model "runs/$m" \
      --choices corpora/codechoice.jsonl --out "runs/$m/codechoice.json" \
      > "runs/$m/codechoice.log" 2>&1 || echo "score $m: exit $?"
    tail -n 2 "runs/$m/codechoice.log"
  done
fi
tar czf "$OUT/runs.tgz" runs/train-*.log runs/ar/metrics.jsonl runs/mdm/metrics.jsonl \
  runs/*/run.json runs/graphs-vs-eager.txt $(ls runs/*/codechoice.* 2>/dev/null)
