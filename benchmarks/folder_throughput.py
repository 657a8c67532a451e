"""Images/s of `gradcam explain DIR` on a folder of JPEGs, against the model's own forward throughput.

    python benchmarks/folder_throughput.py --images 64 --device cpu
    python benchmarks/folder_throughput.py --images 512 --device cuda --batch 32 --workers 8 --writers 8

The folder holds ``--images`` JPEGs (640x480, made from the bundled photos with random crops and
flips). The floor is the model's ``torch.inference_mode()`` forward on ready tensors of the same batch
size; the explain run decodes, preprocesses, explains (one method), maps back to the original size and
writes an overlay PNG, a .npy map, a panel and item.json per image (``--outputs all``), or only the
files named (``--outputs heatmap``: the .npy maps and item.json); each ``;``-separated choice is a row.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

from gradcam.assets import sample_names, sample_path
from gradcam.jobs import ExplainSettings, explain_files
from gradcam.jobs.explain import OUTPUT_KINDS
from gradcam.models import load_model
from gradcam.runtime import keep_freed_memory


def make_folder(folder: Path, count: int) -> list[Path]:
    rng = random.Random(0)
    photos = [Image.open(sample_path(n)).convert("RGB") for n in sample_names()]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        box = (rng.randint(0, w // 8), rng.randint(0, h // 8), w - rng.randint(0, w // 8), h - rng.randint(0, h // 8))
        image = photo.crop(box).resize((640, 480))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        path = folder / f"img_{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def forward_throughput(model: torch.nn.Module, batch: int, size: int, device: torch.device, rounds: int) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    times = []
    for i in range(rounds + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--outputs", default="all;heatmap", help="';'-separated rows: 'all' or a comma list")
    args = parser.parse_args()
    keep_freed_memory()  # as the gradcam CLI does: the forward and the explain job alike
    device = torch.device(args.device)
    loaded = load_model()
    loaded.model.to(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in").mkdir()
        paths = make_folder(Path(tmp) / "in", args.images)
        floor = forward_throughput(loaded.model, args.batch, loaded.preprocess.input_size, device, rounds=10)
        for choice in args.outputs.split(";"):
            kinds = OUTPUT_KINDS if choice == "all" else tuple(choice.split(","))
            settings = ExplainSettings(methods=(args.method,), outputs=kinds)
            run = dict(batch_size=args.batch, device=device, workers=args.workers, writers=args.writers, progress=False)
            explain_files(paths[: 2 * args.batch], loaded, settings, Path(tmp) / f"warm-{choice}", **run)
            summary = explain_files(paths, loaded, settings, Path(tmp) / f"out-{choice}", **run)
            rows.append((choice, summary.done, summary.done / summary.seconds))
    print(f"device {device}, model {loaded.name}, batch {args.batch}, workers {args.workers}, writers {args.writers}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print("| what | images/s | ratio to forward |")
    print("|---|---|---|")
    print(f"| inference forward on ready tensors | {floor:.1f} | 1.00 |")
    for choice, done, rate in rows:
        what = f"gradcam explain DIR ({args.method}, {done} JPEGs, outputs: {choice})"
        print(f"| {what} | {rate:.1f} | {rate / floor:.2f} |")


if __name__ == "__main__":
    main()
