#!/usr/bin/env bash
# One H200 call that checks the structural refactor on a GPU, in stages (STAGES, in order):
#   tests  the GPU-only tests (real CUDA graphs = eager for every cache x sampler, the graph
#          memory pool, the Triton kernels) with the rest of the generation and sampler tests
#   steps  DLM decoding time per step, this checkout against an older one (OLD, a folder holding
#          that checkout's codediff/, harness/, tasks/ and bench/), same random tiny model,
#          batch 64 and 128, one token per step and threshold + dual cache, CUDA graphs on
#   train  `codediff train --preset small` with its defaults on one GPU (32K vocabulary), ar then
#          mdm: the micro-batch is found automatically (run.json: micro_batch, accum,
#          micro_batch_auto)
# Each stage is capped with `timeout` and writes its log into $OUT as it goes.
#   carry: .whl (scripts/device_wheels.sh), corpora/gen-small (codediff corpus --source stdlib
#   -U 300k --val-tokens 50k --vocab-size 8192 --no-decontam) for steps, corpora/small-32k
#   (--source stdlib -U 2M --val-tokens 200k --vocab-size 32768 --no-decontam) for train, and OLD
#   for steps
set -uo pipefail
OUT=${OUT:-out}
OLD=${OLD:-.base}
STAGES=${STAGES:-tests steps train}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > /dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
for stage in $STAGES; do
  case $stage in
  tests)
    timeout "${TEST_SECONDS:-300}" python3 -m pytest -q -p no:cacheprovider \
      tests/test_generate.py tests/test_sampler_kernel.py tests/test_sampling_package.py \
      tests/test_samplers.py tests/test_rope_kernel.py tests/test_likelihood.py \
      > "$OUT/tests.log" 2>&1
    echo "tests: exit $?"; tail -n 4 "$OUT/tests.log" ;;
  steps)
    for side in new old; do
      root=.; [ "$side" = old ] && root=$OLD
      for b in 64 128; do
        (cd "$root" && PYTHONPATH=/tmp/site:$PWD timeout 120 python3 bench/profile_dlm.py \
          --preset tiny --corpus "$OLDPWD/corpora/gen-small" --batch-size "$b" --top 0 \
          --configs dlm_1tok dlm_thr_dual) > "$OUT/steps-$side-b$b.log" 2>&1 \
          || echo "steps $side b$b: exit $?"
        grep "^==" "$OUT/steps-$side-b$b.log" | sed "s/^/$side b$b /"
      done
    done ;;
  train)
    for obj in ar mdm; do
      timeout "${TRAIN_SECONDS:-200}" python3 -m codediff.cli train --corpus corpora/small-32k \
        --objective "$obj" --preset small --total-tokens "${SMALL_TOKENS:-4M}" --val-tokens 100k \
        --out "/tmp/runs/small-$obj" > "$OUT/train-$obj.log" 2>&1
      echo "train small $obj: exit $?"; grep -v -i warn "$OUT/train-$obj.log" | tail -n 3
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in
        ('batch_size','micro_batch','accum','micro_batch_auto','seq_len','compile_mode')})" \
        "/tmp/runs/small-$obj/run.json" 2>&1 | tail -n 1
    done ;;
  *) echo "unknown stage $stage" ;;
  esac
  echo "$stage done at $(( $(date +%s) - t0 )) s"
done
