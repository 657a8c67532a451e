"""Where a folder job's time goes: `gradcam explain DIR --outputs heatmap` rebuilt one stage at a time.

    python benchmarks/folder_breakdown.py --images 64 --rounds 12
    python benchmarks/folder_breakdown.py --device cuda --images 512 --batch 32 --rounds 5

Each row adds one stage of the job to the row above, using the job's own functions, so a row's
"added" column is what that stage costs per image on the job's critical path:

1. the inference-mode forward on ready (decoded) batches: the floor;
2. the job's explanation call (Grad-CAM, top-1 class) on the same ready batches;
3. + decoding and preprocessing the JPEGs (``decoded_batches``, as the job runs it);
4. + the maps on original pixels (``maps_to_originals``);
5. + ``item.json`` per image, written as the job writes it: after its batch's outputs are flushed by
   one filesystem sync (atomic: temp file, rename);
6. + the ``.npy`` map per image (float32, original resolution; fsynced itself where the filesystem
   cannot be synced), i.e. the whole heatmap job;
7. the real ``explain_files`` on the same folder, for reference.

Rows are timed interleaved (every row once per round, medians over rounds), because this machine's
speed drifts by +-20 % over minutes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import torch
from folder_throughput import make_folder

from gradcam.batch.explainers import _Explainers
from gradcam.batch.inputs import ImageFiles, decoded_batches
from gradcam.batch.loop import default_pipeline, explain_files
from gradcam.batch.outputs import _commit, _saliency_2d, _shares, _writer_count, _writer_pool, maps_to_originals
from gradcam.batch.settings import ExplainSettings
from gradcam.imaging.geometry import normalize_pixels
from gradcam.imaging.io import save_npy_atomic
from gradcam.models import load_model
from gradcam.runtime import keep_freed_memory

ROWS = (
    "inference forward (ready batches)",
    "explanation call (ready batches)",
    "+ decoding and preprocessing",
    "+ maps on original pixels",
    "+ item.json writes",
    "+ .npy writes (the heatmap job's work)",
    "explain_files (the job itself)",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the CLI's choice)")
    parser.add_argument("--writers", type=int, default=None, help="writer threads (default: the CLI's choice)")
    args = parser.parse_args()
    keep_freed_memory()  # as the gradcam CLI does
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    default_workers, default_writers = default_pipeline(device, args.images)
    workers = default_workers if args.workers is None else args.workers
    writers = default_writers if args.writers is None else args.writers
    loaded = load_model()
    model = loaded.model.to(device)
    settings = ExplainSettings(methods=("gradcam",), outputs=("heatmap",))
    threads = torch.get_num_threads()
    serial = count()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with (
        tempfile.TemporaryDirectory() as tmp,
        _writer_pool(writers) as writer,
        ThreadPoolExecutor(max_workers=1) as commits,
    ):
        root = Path(tmp)
        (root / "in").mkdir()
        paths = make_folder(root / "in", args.images)
        files = ImageFiles(paths, loaded.preprocess, keep_original=False)
        decoded = list(decoded_batches(files, args.batch, 0, threads, False))
        ready = [normalize_pixels(b["x"].to(device), loaded.preprocess) for b in decoded]
        geometries = [b["geometries"] for b in decoded]
        explainers = _Explainers(model, loaded.default_layer, settings.methods)
        explainers.run(ready[0], settings)

        def stage(level: int) -> None:
            if level == 6:
                explain_files(paths, loaded, settings, root / f"job-{next(serial)}", batch_size=args.batch,
                              device=device, workers=workers, writers=writers, progress=False)  # fmt: skip
                return
            if level >= 2:
                batches = ((normalize_pixels(b["x"].to(device, non_blocking=True), loaded.preprocess), b["geometries"])
                           for b in decoded_batches(files, args.batch, workers, threads, not on_cpu))  # fmt: skip
            else:
                batches = zip(ready, geometries)
            pending = []
            for x, batch_geometries in batches:
                if level == 0:
                    with torch.inference_mode():
                        model(x)
                    continue
                results, _, _ = explainers.run(x, settings)
                if level < 3:
                    continue
                maps = maps_to_originals(results["gradcam"].heatmap.unsqueeze(1), batch_geometries)
                if level < 4:
                    continue
                items = [(root / f"item-{next(serial)}", m if level >= 5 else None) for m in maps]
                tasks = [writer.submit(write_items, share) for share in _shares(items, _writer_count(writers))]
                pending.append(commits.submit(_commit, [item[0] for item in items], tasks))
            sync()
            for commit in pending:
                commit.result()

        for level in range(len(ROWS)):  # warm-up
            stage(level)
        times: list[list[float]] = [[] for _ in ROWS]
        for _ in range(args.rounds):
            for level in range(len(ROWS)):
                sync()
                start = time.perf_counter()
                stage(level)
                times[level].append((time.perf_counter() - start) / args.images * 1e3)
    medians = [statistics.median(t) for t in times]
    print(f"model {loaded.name}, device {device}, batch {args.batch}, {args.images} JPEGs (640x480), "
          f"torch threads {threads}, workers {workers}, writers {writers}, {args.rounds} interleaved rounds, "
          "medians")  # fmt: skip
    print("| stage | ms / image | added | ratio to forward |")
    print("|---|---|---|---|")
    for level, (row, median) in enumerate(zip(ROWS, medians)):
        added = "" if level in (0, 6) else f"{median - medians[level - 1]:+.2f}"
        print(f"| {row} | {median:.2f} | {added} | {medians[0] / median:.2f} |")


def write_items(items: list[tuple[Path, torch.Tensor | None]]) -> list[dict]:
    """A writer task: a share of one batch's items, as the job hands them out."""
    return [write(*item) for item in items]


def write(folder: Path, heatmap: torch.Tensor | None) -> dict:
    """What the job's writer does for one heatmap item; the record that the commit writes as item.json."""
    if heatmap is not None:
        save_npy_atomic(folder / "gradcam.npy", _saliency_2d(heatmap[0]).numpy())
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return {"input": folder.name, "outputs": []}


if __name__ == "__main__":
    main()
