"""Side-by-side speed and memory of Grad-CAM implementations, as ratios measured in one interleaved run.

    python benchmarks/run.py                       # CPU, ResNet-50 / VGG-16 / EfficientNet-Lite0, batch 16
    python benchmarks/run.py --device cuda --amp --channels-last
    python benchmarks/run.py --models resnet50 --rounds 3 --json out.json

Contenders (each produces a (B, H, W) map normalised to [0, 1], upsampling and normalisation included):
``forward`` (a plain ``torch.inference_mode()`` forward: the floor), ``gradcam`` (this project),
``captum`` (LayerGradCam), ``torchcam`` (GradCAM) and ``pytorch-grad-cam`` (GradCAM). Before timing,
every contender's map is compared with ours (max abs difference printed; the run stops on a mismatch).
Timings are medians over ``--rounds`` rounds after ``--warmup`` rounds; within a round the contenders
run in a shuffled order, so machine noise hits all of them alike. Peak memory: on CUDA
``max_memory_allocated`` in process; on CPU each contender runs in a fresh subprocess, and the peak RSS
growth of a second call (after a warm-up call) over the loaded model and input is reported.
Peers are benchmark-only dependencies:
``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import gradcam
from gradcam.methods.base import normalize
from gradcam.runtime import keep_freed_memory

# name@tag: the same model at another layer
LAYERS = {"resnet50": "layer4", "vgg16": "features.29", "efficientnet_lite0": "bn2", "resnet50@layer3": "layer3"}


def build_model(name: str) -> torch.nn.Module:
    """Random-weight torchvision models (timing does not depend on the weights); Lite0 with its real weights."""
    base = name.split("@")[0]
    if base == "efficientnet_lite0":
        from gradcam.models import load_model

        return load_model().model
    import torchvision

    return getattr(torchvision.models, base)(weights=None).eval()


def upsampled(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return normalize(F.interpolate(raw, size=size, mode="bilinear", align_corners=False))


Runner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]


def contender(name: str, model: torch.nn.Module, layer_name: str) -> Runner:
    """A callable ``(x, classes (B, k)) -> maps (B, k, H, W)`` for one implementation."""
    layer = model.get_submodule(layer_name)

    if name == "forward":

        def run(x, classes):
            with torch.inference_mode():
                model(x)

        return run
    if name == "gradcam":
        cam = gradcam.GradCAM(model, layer_name)
        return lambda x, classes: cam(x, classes).heatmap
    if name == "gradcam-compiled":
        compiled = torch.compile(model)
        cam = gradcam.GradCAM(compiled, "_orig_mod." + layer_name)
        return lambda x, classes: cam(x, classes).heatmap
    if name == "gradcam-all-classes":
        cam = gradcam.GradCAM(model, layer_name)
        return lambda x, classes: cam.all_classes(x).heatmap
    if name == "captum":
        from captum.attr import LayerGradCam

        explainer = LayerGradCam(model, layer)

        def run(x, classes):
            maps = [
                explainer.attribute(x, target=classes[:, j].tolist(), relu_attributions=True).detach()
                for j in range(classes.shape[1])
            ]
            return upsampled(torch.cat(maps, dim=1), x.shape[-2:])

        return run
    if name == "torchcam":
        from torchcam.methods import GradCAM as TorchCAMGradCAM

        def run(x, classes):
            maps = []
            with TorchCAMGradCAM(model, target_layer=layer_name) as extractor:
                for j in range(classes.shape[1]):
                    scores = model(x)
                    (cam,) = extractor(class_idx=classes[:, j].tolist(), scores=scores)
                    maps.append(cam.detach())
            return upsampled(torch.stack(maps, dim=1), x.shape[-2:])

        return run
    if name == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM as PGCGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def run(x, classes):
            maps = []
            with PGCGradCAM(model=model, target_layers=[layer]) as cam:
                for j in range(classes.shape[1]):
                    targets = [ClassifierOutputTarget(int(c)) for c in classes[:, j]]
                    maps.append(torch.from_numpy(cam(input_tensor=x, targets=targets)))
            return torch.stack(maps, dim=1).to(x.device)

        return run
    raise ValueError(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Runner, x: torch.Tensor, classes: torch.Tensor) -> float:
    sync(x.device)
    start = time.perf_counter()
    run(x, classes)
    sync(x.device)
    return time.perf_counter() - start


def agreement(runners: dict[str, Runner], x: torch.Tensor, classes: torch.Tensor) -> dict[str, float]:
    """Max |map - ours| for every contender that makes a map, on this input (fails loudly on garbage)."""
    ours = runners["gradcam"](x, classes).float()
    result = {}
    for name, run in runners.items():
        if name in ("forward", "gradcam"):
            continue
        if name == "gradcam-all-classes":
            maps = run(x, classes).float()
            picked = maps.gather(1, classes[..., None, None].expand(-1, -1, *maps.shape[-2:]))
            maps = upsampled(picked, x.shape[-2:])
            result[name] = float((maps - ours).abs().max())
            continue
        maps = run(x, classes).float().reshape(ours.shape)
        result[name] = float((maps - ours).abs().max())
    return result


def cuda_peak(run: Runner, x: torch.Tensor, classes: torch.Tensor) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run(x, classes)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def cpu_peak_subprocess(name: str, model_name: str, batch: int, size: int, k: int) -> float:
    """Peak RSS growth (MiB) of one call in a fresh process, over the loaded model and input."""
    code = subprocess.run(
        [sys.executable, __file__, "--memory-probe", name, model_name, str(batch), str(size), str(k)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(code.stdout.strip().splitlines()[-1])


def memory_probe(name: str, model_name: str, batch: int, size: int, k: int) -> None:
    torch.manual_seed(0)
    model = build_model(model_name)
    x = torch.randn(batch, 3, size, size)
    classes = torch.randint(0, 1000, (batch, k))
    run = contender(name, model, LAYERS[model_name])
    run(x, classes)  # warm-up: the allocator's steady state, as in a loop over batches
    Path("/proc/self/clear_refs").write_text("5")  # reset the kernel's peak-RSS mark (VmHWM) to now
    base = _status_kib("VmRSS")
    run(x, classes)
    print((_status_kib("VmHWM") - base) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def bench_model(model_name: str, names: list[str], args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(model_name).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = model(x)
    rows = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    for k in args.k:
        classes = logits.topk(k, dim=1).indices
        runners = {name: contender(name, model, LAYERS[model_name]) for name in names}
        if k > 1:
            runners.pop("gradcam-all-classes", None)
        with autocast:
            for name in list(runners):
                try:
                    timed(runners[name], x, classes)  # first call: compilation, lazy init
                except Exception as error:  # a contender that cannot run here is reported, not fatal
                    print(f"{name} on {model_name}: failed: {type(error).__name__}: {str(error)[:200]}")
                    runners.pop(name)
            diffs = agreement(runners, x, classes) if not args.amp else {}
            for name, diff in diffs.items():
                if diff > args.tolerance:
                    raise SystemExit(f"{name} disagrees with gradcam on {model_name}: max |diff| = {diff:.3g}")
            times: dict[str, list[float]] = {name: [] for name in runners}
            order = list(runners)
            for round_ in range(args.warmup + args.rounds):
                random.shuffle(order)
                for name in order:
                    elapsed = timed(runners[name], x, classes)
                    if round_ >= args.warmup:
                        times[name].append(elapsed)
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, median in medians.items():
            row = {
                "model": model_name, "k": k, "contender": name, "seconds": median,
                "images_per_s": args.batch / median, "vs_forward": median / medians["forward"],
                "vs_gradcam": median / medians["gradcam"], "max_diff": diffs.get(name),
            }  # fmt: skip
            if args.memory:
                if device.type == "cuda":
                    with autocast:
                        row["peak_mib"] = cuda_peak(runners[name], x, classes)
                elif not args.amp and not args.channels_last:
                    row["peak_mib"] = cpu_peak_subprocess(name, model_name, args.batch, args.size, k)
            rows.append(row)
        print_rows([r for r in rows if r["k"] == k], args)
    return rows


def print_rows(rows: list[dict], args: argparse.Namespace) -> None:
    head = "| model | k | contender | s / batch | images/s | x forward | x gradcam | peak MiB | max diff |"
    print(head)
    print("|" + "---|" * 9)
    for r in rows:
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else ""
        diff = "" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        print(
            f"| {r['model']} | {r['k']} | {r['contender']} | {r['seconds']:.3f} | {r['images_per_s']:.1f} | "
            f"{r['vs_forward']:.2f} | {r['vs_gradcam']:.2f} | {peak} | {diff} |",
            flush=True,
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-probe":
        name, model_name, batch, size, k = sys.argv[2:7]
        torch.set_num_threads(torch.get_num_threads())
        memory_probe(name, model_name, int(batch), int(size), int(k))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="resnet50,vgg16,efficientnet_lite0")
    parser.add_argument("--contenders", default="forward,gradcam,gradcam-all-classes,captum,torchcam,pytorch-grad-cam")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[1, 5])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.02, help="max |map - ours| allowed before timing")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument(
        "--glibc-defaults", action="store_true", help="time with glibc's allocator defaults (see gradcam.runtime)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    random.seed(0)
    # every contender in the same allocator regime, as the gradcam CLI runs (the memory probes, fresh
    # processes, keep glibc's defaults so that their peak RSS is the working set)
    kept = False if args.glibc_defaults else keep_freed_memory()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, device {device} ({where})"
        + f", batch {args.batch}, {args.size}x{args.size}, amp={args.amp}, channels_last={args.channels_last}"
        + f", freed memory kept: {kept}",
        flush=True,
    )
    names = args.contenders.split(",")
    rows = []
    for model_name in args.models.split(","):
        rows += bench_model(model_name, names, args, device)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
