"""Images/s of `gradcam explain DIR` on a folder of JPEGs, against the model's own forward throughput.

    python benchmarks/folder_throughput.py --images 64 --device cpu
    python benchmarks/folder_throughput.py --model resnet50 --images 64 --rounds 5
    python benchmarks/folder_throughput.py --images 512 --device cuda --batch 32 --workers 8

The folder holds ``--images`` JPEGs (640x480, or ``--photo-size``) made from the bundled photos with
random crops and flips. The floor is the model's ``torch.inference_mode()`` forward on ready tensors
of the same batch size. Each ``;``-separated choice of ``--outputs`` is a row: ``all`` (overlay PNG,
heatmap ``.npy``, panel PNG, raw map, ``item.json``), ``all:jpg`` (the pictures as JPEG), or a comma
list of output kinds (``raw``, ``heatmap``, ...). A job decodes, preprocesses, explains (one method,
top-1 class), maps back to the original pixels where an output needs it, and writes.

Every round times each row right after a forward of its own, so a ratio compares runs seconds apart
(a shared machine's speed drifts over minutes); the table gives medians over rounds, and each row's
CPU time per image (this process's threads and its ended worker processes, user + system).

``--model`` is ``efficientnet_lite0`` (the CLI's default, ImageNet weights) or a torchvision classifier
name (``resnet50``, ``vgg16``, ...) with random weights: the costs do not depend on the weights.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image, ImageOps

from gradcam.assets import sample_names, sample_path
from gradcam.batch import ExplainSettings, default_pipeline, explain_files
from gradcam.batch.settings import OUTPUT_KINDS
from gradcam.models import LoadedModel, load_model
from gradcam.runtime import keep_freed_memory


def make_folder(folder: Path, count: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    rng = random.Random(0)
    photos = [Image.open(sample_path(n)).convert("RGB") for n in sample_names()]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        box = (rng.randint(0, w // 8), rng.randint(0, h // 8), w - rng.randint(0, w // 8), h - rng.randint(0, h // 8))
        image = photo.crop(box).resize(size)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        path = folder / f"img_{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def forward_throughput(model: torch.nn.Module, batch: int, size: int, device: torch.device, batches: int) -> float:
    """Images/s of ``batches`` inference-mode forwards on ready tensors (median batch time)."""
    x = torch.randn(batch, 3, size, size, device=device)
    times = []
    for _ in range(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the CLI's choice)")
    parser.add_argument("--writers", type=int, default=None, help="writer threads (default: the CLI's choice)")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--model", default="efficientnet_lite0", help="efficientnet_lite0 or a torchvision name")
    parser.add_argument(
        "--outputs",
        default="raw;heatmap;all:jpg;all",
        help="';'-separated rows: 'all', 'all:jpg', or a comma list of output kinds",
    )
    parser.add_argument("--photo-size", default="640x480", help="the JPEGs' WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (forward, row) pairs, every row once")
    args = parser.parse_args()
    keep_freed_memory()  # as the gradcam CLI does: the forward and the explain job alike
    device = torch.device(args.device)
    default_workers, default_writers = default_pipeline(device, args.images)
    workers = default_workers if args.workers is None else args.workers
    writers = default_writers if args.writers is None else args.writers
    choices = args.outputs.split(";")
    floors: list[float] = []
    floor_cpu: list[float] = []  # CPU ms per image of the forward
    cpu: dict[str, list[float]] = {c: [] for c in choices}  # CPU ms per image of each row's job
    rates: dict[str, list[float]] = {c: [] for c in choices}
    ratios: dict[str, list[float]] = {c: [] for c in choices}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = timing_model(args.model, Path(tmp))
        loaded.model.to(device)
        (Path(tmp) / "in").mkdir()
        photo_size = tuple(int(side) for side in args.photo_size.lower().split("x"))
        paths = make_folder(Path(tmp) / "in", args.images, photo_size)
        run = dict(batch_size=args.batch, device=device, workers=workers, writers=writers, progress=False)
        size = loaded.preprocess.input_size
        forward_throughput(loaded.model, args.batch, size, device, batches=2)  # warm-up
        for choice in choices:  # warm-up
            explain_files(paths[: 2 * args.batch], loaded, _settings(args.method, choice), Path(tmp) / "warm",
                          overwrite=True, **run)  # fmt: skip
        batches = max(2, args.images // args.batch)
        for r in range(args.rounds):
            for choice in random.Random(r).sample(choices, len(choices)):
                spent = cpu_seconds()
                floor = forward_throughput(loaded.model, args.batch, size, device, batches=batches)
                floor_cpu.append((cpu_seconds() - spent) / (batches * args.batch) * 1e3)
                floors.append(floor)
                spent = cpu_seconds()
                out = Path(tmp) / f"out-{r}-{choices.index(choice)}"
                summary = explain_files(paths, loaded, _settings(args.method, choice), out, **run)
                cpu[choice].append((cpu_seconds() - spent) / summary.done * 1e3)
                rates[choice].append(summary.done / summary.seconds)
                ratios[choice].append(rates[choice][-1] / floor)
    print(f"device {device}, model {loaded.name}, batch {args.batch}, workers {workers}, writers {writers}, "
          f"torch threads {torch.get_num_threads()}, {args.images} JPEGs ({args.photo_size}), "
          f"{args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    print("| what | images/s | ratio to forward (median of per-round ratios; min-max) | CPU ms / image |")
    print("|---|---|---|---|")
    print(f"| inference forward on ready tensors | {statistics.median(floors):.1f} | 1.00 "
          f"| {statistics.median(floor_cpu):.2f} |")  # fmt: skip
    for choice in choices:
        what = f"gradcam explain DIR ({args.method}, outputs: {choice})"
        low, high = min(ratios[choice]), max(ratios[choice])
        print(f"| {what} | {statistics.median(rates[choice]):.1f} | {statistics.median(ratios[choice]):.2f} "
              f"({low:.2f}-{high:.2f}) | {statistics.median(cpu[choice]):.2f} |")  # fmt: skip


def cpu_seconds() -> float:
    """User and system CPU seconds of this process's threads and of its ended child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timing_model(name: str, folder: Path) -> LoadedModel:
    """The CLI's default model, or a torchvision classifier with random weights (saved to ``folder``)."""
    if name == "efficientnet_lite0":
        return load_model()
    weights = folder / f"{name}-random.pt"
    torch.save(torchvision.models.get_model(name).state_dict(), weights)
    return load_model(f"torchvision:{name}", weights=weights)


def _settings(method: str, choice: str) -> ExplainSettings:
    kinds, _, picture_format = choice.partition(":")
    outputs = OUTPUT_KINDS if kinds == "all" else tuple(kinds.split(","))
    return ExplainSettings(
        methods=(method,),
        outputs=outputs,
        picture_format=picture_format or "png",
    )


if __name__ == "__main__":
    main()
