"""Images/s of `gradcam explain DIR` on a folder of JPEGs, against the model's own forward throughput.

    python benchmarks/folder_throughput.py --images 64 --device cpu
    python benchmarks/folder_throughput.py --images 512 --device cuda --batch 32 --workers 8 --writers 8

Each round times every output choice, each right after a forward of its own, so that a ratio compares
runs seconds apart (a shared machine's speed drifts by +-20 % over minutes); the table gives medians
over rounds.

The folder holds ``--images`` JPEGs (640x480, or ``--photo-size``, e.g. ``4032x3024`` for a phone's
12-megapixel photos; made from the bundled photos with random crops and flips). The floor is the
model's ``torch.inference_mode()`` forward on ready tensors of the same batch
size; the explain run decodes, preprocesses, explains (one method), maps back to the original size and
writes an overlay PNG, a .npy map, a panel and item.json per image (``all``), the same with JPEG
overlays and panels (``all:jpg``), or only the files named (``heatmap``: the .npy maps and item.json);
each ``;``-separated choice of ``--outputs`` is a row. A row with ``+pil`` decodes every JPEG with PIL
instead of TorchCodec (the ``decode`` extra), to compare the two decoders in one run; one with
``+beside`` lets a CPU job's writers run beside the model instead of between model steps (as the job
did before 2026-12-02), to compare the two in one run.

Each row also gives its CPU time per image (this process's threads and its ended worker processes,
user and system) and how many cores were busy on average; "forward's CPU / row's CPU" is the ratio a
row would reach if it kept every core busy all the time: where the cores are already busy, only less
work per image raises images/s.

``--phases`` also prints, per row, how each job's time splits between waiting for decoded batches, the
explanation calls and the rest (setup, hand-off to the writers, the last writes, the manifest).

``--model`` is ``efficientnet_lite0`` (the CLI's default, ImageNet weights) or a torchvision classifier
name (``resnet50``, ``vgg16``, ...) with random weights: the costs do not depend on the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from PIL import Image, ImageOps

from gradcam.assets import sample_names, sample_path
from gradcam.batch import loop as jobs
from gradcam.imaging import io as image_io
from gradcam.jobs import ExplainSettings, explain_files
from gradcam.jobs.explain import OUTPUT_KINDS, default_pipeline
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
        default="all;all:jpg;heatmap",
        help="';'-separated rows: 'all' or a comma list of kinds, ':jpg' for JPEG overlays and panels, "
        "'+pil' to decode with PIL, '+beside' for writers beside the model on a CPU",
    )
    parser.add_argument("--photo-size", default="640x480", help="the JPEGs' WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (forward, every row), interleaved")
    parser.add_argument("--phases", action="store_true", help="also split each row's time into its phases")
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
    phases: dict[str, list[dict[str, float]]] = {c: [] for c in choices}
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
            with _decoder(choice), _writes(choice):
                settings = _settings(args.method, choice)
                explain_files(paths[: 2 * args.batch], loaded, settings, Path(tmp) / "warm", overwrite=True, **run)
        for r in range(args.rounds):
            batches = max(2, args.images // args.batch)
            for choice in choices:
                spent = cpu_seconds()
                floor = forward_throughput(loaded.model, args.batch, size, device, batches=batches)
                floor_cpu.append((cpu_seconds() - spent) / (batches * args.batch) * 1e3)
                floors.append(floor)
                settings = _settings(args.method, choice)
                with _decoder(choice), _writes(choice), _phase_clock(args.phases) as clock:
                    spent = cpu_seconds()
                    summary = explain_files(paths, loaded, settings, Path(tmp) / f"out-{r}-{choice}", **run)
                    cpu[choice].append((cpu_seconds() - spent) / summary.done * 1e3)
                clock["rest"] = summary.seconds - clock["decoding"] - clock["explaining"]
                phases[choice].append({k: v / summary.done * 1e3 for k, v in clock.items()})
                rates[choice].append(summary.done / summary.seconds)
                ratios[choice].append(rates[choice][-1] / floor)
    print(f"device {device}, model {loaded.name}, batch {args.batch}, workers {workers}, writers {writers}, "
          f"torch threads {torch.get_num_threads()}, {args.images} JPEGs ({args.photo_size}), "
          f"{args.rounds} rounds")  # fmt: skip
    print("| what | images/s | ratio to forward (median of per-round ratios; min-max) | CPU ms / image "
          "| cores busy | forward's CPU / row's CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    forward_cpu = statistics.median(floor_cpu)
    print(f"| inference forward on ready tensors | {statistics.median(floors):.1f} | 1.00 | {forward_cpu:.2f} "
          f"| {statistics.median(c * f / 1e3 for c, f in zip(floor_cpu, floors)):.2f} | 1.00 |")  # fmt: skip
    for choice in choices:
        what = f"gradcam explain DIR ({args.method}, outputs: {choice})"
        low, high = min(ratios[choice]), max(ratios[choice])
        row_cpu = statistics.median(cpu[choice])
        busy = statistics.median(c * f / 1e3 for c, f in zip(cpu[choice], rates[choice]))
        print(f"| {what} | {statistics.median(rates[choice]):.1f} | {statistics.median(ratios[choice]):.2f} "
              f"({low:.2f}-{high:.2f}) | {row_cpu:.2f} | {busy:.2f} | {forward_cpu / row_cpu:.2f} |")  # fmt: skip
    if args.phases:
        print("\n| row | ms / image: waiting for decoded batches | explanation calls | the rest (medians) |")
        print("|---|---|---|---|")
        for choice in choices:
            median = {k: statistics.median(p[k] for p in phases[choice]) for k in ("decoding", "explaining", "rest")}
            print(f"| {choice} | {median['decoding']:.2f} | {median['explaining']:.2f} | {median['rest']:.2f} |")


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


@contextlib.contextmanager
def _decoder(choice: str) -> Iterator[None]:
    """PIL decodes every JPEG inside when ``choice`` has ``+pil``."""
    if "pil" not in _flags(choice):
        yield
        return
    own = image_io._jpeg_decoder
    image_io._jpeg_decoder = lambda: None
    try:
        yield
    finally:
        image_io._jpeg_decoder = own


@contextlib.contextmanager
def _phase_clock(enabled: bool) -> Iterator[dict[str, float]]:
    """Seconds the job spends waiting for decoded batches and in explanation calls (when ``enabled``)."""
    clock = {"decoding": 0.0, "explaining": 0.0}
    if not enabled:
        yield clock
        return
    batches, explain_group = jobs.decoded_batches, jobs._explain_group

    def timed_batches(*args, **kwargs):
        batch_iterator = batches(*args, **kwargs)
        try:
            while True:
                start = time.perf_counter()
                batch = next(batch_iterator, None)
                clock["decoding"] += time.perf_counter() - start
                if batch is None:
                    return
                yield batch
        finally:
            batch_iterator.close()

    def timed_group(*args, **kwargs):
        start = time.perf_counter()
        try:
            return explain_group(*args, **kwargs)
        finally:
            clock["explaining"] += time.perf_counter() - start

    jobs.decoded_batches, jobs._explain_group = timed_batches, timed_group
    try:
        yield clock
    finally:
        jobs.decoded_batches, jobs._explain_group = batches, explain_group


@contextlib.contextmanager
def _writes(choice: str) -> Iterator[None]:
    """The job's writes as they were before 2026-12-02, for A/B runs: with ``+beside`` a CPU job's
    writers run beside the model (the job no longer waits for a batch's writes before the next model
    step)."""
    own_wait = jobs.wait
    if "beside" in _flags(choice):
        jobs.wait = lambda futures: None
    try:
        yield
    finally:
        jobs.wait = own_wait


def _flags(choice: str) -> set[str]:
    return set(choice.split("+")[1:])


def _settings(method: str, choice: str) -> ExplainSettings:
    kinds, _, picture_format = choice.split("+")[0].partition(":")
    outputs = OUTPUT_KINDS if kinds == "all" else tuple(kinds.split(","))
    return ExplainSettings(
        methods=(method,),
        outputs=outputs,
        picture_format=picture_format or "png",
    )


if __name__ == "__main__":
    main()
