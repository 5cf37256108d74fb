#!/usr/bin/env bash
# One H200 call (<= 10 minutes) of a `codediff sweep` (default: the reference sweep of issue 16),
# restartable from the sweep data committed in the repo plus a corpus rebuilt on the machine:
# the rebuilt corpus must hash as sweep.json records (same sources, seed and codediff), and
# cells already trained and scored in the committed data are skipped.
#
# Stages (STAGES, in order):
#   corpus     prepare the sweep dir (`codediff sweep --emit commands`, which prepares and prints
#              the commands): build the full corpus (stdlib + site-packages, decontaminated) and
#              the nested U levels, check their hashes against committed data, write cell files
#   fimbench   ar against ar --fim-rate 0.5 on `tiny` (bench/train_throughput.py --extra fim)
#   probe      how many `tiny` runs share the GPU before each slows down: PROBE_N runs at once
#              (e.g. "1 2 3 4") of PROBE_TOKENS each on U = 5M; prints the median tokens/s per run
#              and in total for each N (fills the --parallel question for docs/benchmarks.md)
#   cells      train + score the cells matching CELLS (shell patterns), PARALLEL at once,
#              stopped in time to pack
#   summarize  crossover.json and the crossover table
#   pack       the sweep dir's data (JSON, logs, code-choice set; no weights, tokens or samples)
#              into $OUT/sweep-data.tgz: untar it at the repo root and commit it
#
#   carry: .whl (scripts/device_wheels.sh), corpora/data (a copy of the shared task data:
#   decontamination and the infilling tasks need it; `cp -r ../shared/data corpora/data`, or set
#   CODEDIFF_DATA to where it was carried) and optionally .deb (the Debian `bubblewrap` package,
#   unpacked here when the machine has no bwrap, so task samples are judged in the sandbox)
#   e.g.  STAGES="corpus probe" PROBE_N="1 2 3 4" bash bench/h200_sweep.sh
#         CELLS="tiny-U1M-* tiny-U2.5M-* tiny-U5M-ar-s0 tiny-U5M-mdm-s0" PARALLEL=3 bash bench/h200_sweep.sh
#   (patterns are shell globs over cell ids: `tiny-U5M-*` also takes the ablation cells
#   tiny-U5M-ar-input-mask-s0 and tiny-U5M-ar-fim-s0; name a cell whole to take it alone.
#   Four `tiny` cells at once saturate an H200 (~2.9M tokens/s together); a cell must finish
#   within its call: checkpoints and training state do not travel back)
#         CELLS="mid-*" PARALLEL=1 bash bench/h200_sweep.sh
set -uo pipefail
OUT=${OUT:-out}
SPEC=${SPEC:-sweeps/reference.toml}
SWEEP=${SWEEP:-reports/reference/sweep}
STAGES=${STAGES:-corpus cells summarize pack}
CELLS=${CELLS:-}
PARALLEL=${PARALLEL:-2}
DEADLINE=${DEADLINE:-560}  # seconds from the start by which the sweep stops, to leave time to pack
PROBE_N=${PROBE_N:-1 2 3 4}
PROBE_TOKENS=${PROBE_TOKENS:-30M}
mkdir -p "$OUT"
t0=$(date +%s)
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > /dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD
export CODEDIFF_DATA=${CODEDIFF_DATA:-$PWD/corpora/data}  # carried: the shared task data
if ! command -v bwrap > /dev/null && ls .deb/bubblewrap*.deb > /dev/null 2>&1; then
  # the Debian package, carried (.deb/): unpacked, not installed
  mkdir -p /tmp/bw && for f in .deb/bubblewrap*.deb; do dpkg -x "$f" /tmp/bw; done
  export PATH=/tmp/bw/usr/bin:$PATH
  bwrap --ro-bind / / --unshare-all true 2>/dev/null && echo "sandbox: bwrap from .deb runs" \
    || { echo "sandbox: bwrap from .deb cannot run here"; rm -rf /tmp/bw/usr/bin/bwrap; }
fi
cd_flags=()
if ! command -v bwrap > /dev/null; then
  if [ "${UNSAFE_NO_SANDBOX:-0}" = 1 ]; then
    cd_flags=(--unsafe-no-sandbox); echo "no bubblewrap: judging task samples unsandboxed"
  else
    echo "no bubblewrap here: task metrics will fail; set UNSAFE_NO_SANDBOX=1 on a throwaway machine"
  fi
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
sweep() { python3 -m codediff.cli sweep "$SPEC" --out "$SWEEP" "$@"; }
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
for stage in $STAGES; do
  case $stage in
  corpus)
    sweep --emit commands > "$OUT/commands.txt" 2> "$OUT/corpus.log"
    echo "corpus: exit $? at $(( $(date +%s) - t0 )) s"; tail -n 3 "$OUT/corpus.log"
    python3 - "$SWEEP" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1] + "/sweep.json"))["corpus"]
print("full corpus manifest", m["full"]["manifest_sha256"][:16], m["full"]["unique_tokens"],
      "tokens; levels", [(l["unique_tokens"], l["manifest_sha256"][:12]) for l in m["levels"]])
EOF
    ;;
  probe)
    corpus=$(ls -d "$SWEEP"/corpora/U-5M 2>/dev/null || ls -d "$SWEEP"/corpora/U-* | head -n 1)
    for n in $PROBE_N; do
      rm -rf /tmp/probe; mkdir -p /tmp/probe
      for i in $(seq 1 "$n"); do
        python3 -m codediff.cli train --corpus "$corpus" --objective ar --preset tiny \
          --total-tokens "$PROBE_TOKENS" --eval-points 1 --checkpoint-points 1 \
          --val-tokens 100k --seed "$i" --out "/tmp/probe/r$i" --no-progress \
          > "/tmp/probe/r$i.log" 2>&1 &
      done
      wait
      python3 - "$n" /tmp/probe <<'EOF'
import json, statistics, sys
from pathlib import Path
n, root = int(sys.argv[1]), Path(sys.argv[2])
per = []
for d in sorted(root.glob("r*/")):
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x]
    speeds = [r["tokens_per_s"] for r in rows[len(rows) // 3:] if r.get("tokens_per_s")]
    if speeds:
        per.append(statistics.median(speeds))
if per:
    print(f"probe: {n} tiny runs at once: median per run {statistics.median(per):,.0f} tok/s, "
          f"together {sum(per):,.0f} tok/s ({len(per)} finished)")
else:
    print(f"probe: {n} runs: none finished; see /tmp/probe/*.log")
EOF
      [ "$(left)" -lt 120 ] && { echo "probe: stopping (time)"; break; }
    done ;;
  fimbench)
    # issue 15: ar against ar --fim-rate 0.5, same model, same process (tokens/s, MFU)
    python3 bench/train_throughput.py --configs tiny --objectives ar --extra fim \
      --repeats "${FIM_REPEATS:-3}" 2>&1 | tail -n 8 ;;
  cells)
    sel=(); [ -n "$CELLS" ] && { read -r -a pats <<< "$CELLS"; sel=(--cells "${pats[@]}"); }
    timeout -s INT "$(left)" python3 -m codediff.cli sweep "$SPEC" --out "$SWEEP" \
      --parallel "$PARALLEL" "${sel[@]}" "${cd_flags[@]}" > "$OUT/cells.log" 2>&1
    echo "cells: exit $? at $(( $(date +%s) - t0 )) s"
    grep -E "^sweep: (done|start|.*failed)" "$OUT/cells.log" | tail -n 30 ;;
  summarize)
    sweep --stage summarize > "$OUT/crossover.txt" 2>&1
    echo "summarize: exit $?"; cat "$OUT/crossover.txt" | head -n 60 ;;
  pack)
    tar czf "$OUT/sweep-data.tgz" --exclude='*.bin' --exclude='tokenizer.json' \
      --exclude='checkpoints' --exclude='state' --exclude='state.tmp' --exclude='.state.old' \
      --exclude='*/eval/tokens-*[0-9]' "$SWEEP"
    echo "pack: $(du -h "$OUT/sweep-data.tgz" | cut -f1) ($(tar tzf "$OUT/sweep-data.tgz" | wc -l) files)" ;;
  *) echo "unknown stage $stage" ;;
  esac
done
echo "total $(( $(date +%s) - t0 )) s"
