#!/usr/bin/env bash
# The CPU tables of docs/benchmarks.md: bash benchmarks/cpu_suite.sh docs/benchmarks/cpu
set -uo pipefail
out="${1:-cpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{ echo "cpus: $(nproc)"; uptime; } | tee "$out/machine.txt"
$py benchmarks/run.py --models ${MODELS:-resnet50,vgg16,efficientnet_lite0} --k 1 --rounds 3 --warmup 1 --memory \
    --json "$out/cpu_k1.json" 2>&1 | grep -v -i warn | tee "$out/cpu_k1.md"
$py benchmarks/run.py --models resnet50@layer3 --k 1 --rounds 3 --warmup 1 --memory \
    --contenders forward,gradcam,captum,torchcam,pytorch-grad-cam \
    --json "$out/cpu_layer3.json" 2>&1 | grep -v -i warn | tee "$out/cpu_layer3.md"
$py benchmarks/run.py --models efficientnet_lite0 --k 1,2,5,10 --rounds 3 --warmup 1 \
    --contenders forward,gradcam,captum,torchcam,pytorch-grad-cam \
    --json "$out/cpu_classes.json" 2>&1 | grep -v -i warn | tee "$out/cpu_classes.md"
for batch in ${BATCHES:-1 4 64}; do
    $py benchmarks/run.py --models efficientnet_lite0 --batch $batch --k 1 --rounds 3 --warmup 1 \
        --contenders forward,gradcam,captum,torchcam,pytorch-grad-cam \
        --json "$out/cpu_batch_$batch.json" 2>&1 | grep -v -i warn | tee "$out/cpu_batch_$batch.md"
done
$py benchmarks/run.py --models efficientnet_lite0,resnet50,vgg16 --k 1 --rounds 20 --warmup 2 \
    --contenders forward,gradcam,gradcam-all-classes \
    --json "$out/cpu_k1_ours_20rounds.json" 2>&1 | grep -v -i warn | tee "$out/cpu_k1_ours_20rounds.md"
$py benchmarks/folder_throughput.py --images 64 --batch 16 --rounds 3 2>&1 | tee "$out/cpu_folder_lite0.md"
$py benchmarks/folder_throughput.py --model resnet50 --images 64 --batch 16 --rounds 3 2>&1 | tee "$out/cpu_folder_resnet50.md"
uptime | tee -a "$out/machine.txt"
