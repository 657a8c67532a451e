#!/usr/bin/env bash
# Create ./.venv (once) and install gradcam into it, with optional extras: bash scripts/setup-venv.sh [test,bench,...]
# torch/torchvision/torchcodec are pinned to the releases this project is tested with (pip takes them from a local wheel cache
# when the machine has one). Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision" || { echo "setup-venv: torch/torchvision failed to install" >&2; exit 1; }
# TorchCodec (the `decode` extra: JPEGs decoded in ~25 % less time, same pixels) is built for one torch release:
# the one for torch 2.14. Without it, or if it does not load, gradcam decodes with PIL.
.venv/bin/python -m pip install -q "torchcodec==0.17.0" 2>&1 | grep -v "^WARNING: Location" || true
target="."
[ -n "$extras" ] && target=".[${extras}]"
.venv/bin/python -m pip install -q -e "$target" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import gradcam" || { echo "setup-venv: gradcam failed to install" >&2; exit 1; }
