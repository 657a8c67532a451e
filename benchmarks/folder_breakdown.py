"""Where a folder job's time goes: `gradcam explain DIR --outputs heatmap` rebuilt one stage at a time.

    python benchmarks/folder_breakdown.py --images 64 --rounds 12

Each row adds one stage of the job to the row above, using the job's own functions, so a row's
"added" column is what that stage costs per image on the job's critical path:

1. the inference-mode forward on ready (decoded) batches: the floor;
2. the job's explanation call (Grad-CAM, top-1 class) on the same ready batches;
3. + decoding and preprocessing the JPEGs (``decoded_batches``, as the job runs it);
4. + the maps on original pixels (``maps_to_originals``);
5. + ``item.json`` per image, written by the writer thread (atomic: temp file, fsync, rename);
6. + the ``.npy`` map per image (float32, original resolution), i.e. the whole heatmap job;
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

from gradcam.imaging.io import save_npy_atomic, write_json_atomic
from gradcam.jobs.explain import (
    ExplainSettings,
    ImageFiles,
    _Explainers,
    _saliency_2d,
    decoded_batches,
    explain_files,
    maps_to_originals,
)
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
    args = parser.parse_args()
    keep_freed_memory()  # as the gradcam CLI does
    loaded = load_model()
    model = loaded.model
    settings = ExplainSettings(methods=("gradcam",), outputs=("heatmap",))
    threads = torch.get_num_threads()
    serial = count()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as writer:
        root = Path(tmp)
        (root / "in").mkdir()
        paths = make_folder(root / "in", args.images)
        files = ImageFiles(paths, loaded.preprocess, keep_original=False)
        ready = list(decoded_batches(files, args.batch, 0, threads, False))
        explainers = _Explainers(model, loaded.default_layer, settings.methods)
        explainers.run(ready[0]["x"], settings)

        def write(folder: Path, heatmap: torch.Tensor | None) -> None:
            if heatmap is not None:
                save_npy_atomic(folder / "gradcam.npy", _saliency_2d(heatmap[0]).numpy())
            write_json_atomic(folder / "item.json", {"input": folder.name, "outputs": []}, durable=False)

        def stage(level: int) -> None:
            if level == 6:
                explain_files(paths, loaded, settings, root / f"job-{next(serial)}", batch_size=args.batch,
                              device="cpu", workers=0, writers=0, progress=False)  # fmt: skip
                return
            batches = decoded_batches(files, args.batch, 0, threads, False) if level >= 2 else ready
            pending = []
            for batch in batches:
                if level == 0:
                    with torch.inference_mode():
                        model(batch["x"])
                    continue
                results, _, _ = explainers.run(batch["x"], settings)
                if level < 3:
                    continue
                maps = maps_to_originals(results["gradcam"].heatmap.unsqueeze(1), batch["geometries"])
                if level < 4:
                    continue
                for heatmap in maps:
                    folder = root / f"item-{next(serial)}"
                    pending.append(writer.submit(write, folder, heatmap if level >= 5 else None))
            for future in pending:
                future.result()

        for level in range(len(ROWS)):  # warm-up
            stage(level)
        times: list[list[float]] = [[] for _ in ROWS]
        for _ in range(args.rounds):
            for level in range(len(ROWS)):
                start = time.perf_counter()
                stage(level)
                times[level].append((time.perf_counter() - start) / args.images * 1e3)
    medians = [statistics.median(t) for t in times]
    print(f"model {loaded.name}, batch {args.batch}, {args.images} JPEGs (640x480), torch threads {threads}, "
          f"{args.rounds} interleaved rounds, medians")  # fmt: skip
    print("| stage | ms / image | added | ratio to forward |")
    print("|---|---|---|---|")
    for level, (row, median) in enumerate(zip(ROWS, medians)):
        added = "" if level in (0, 6) else f"{median - medians[level - 1]:+.2f}"
        print(f"| {row} | {median:.2f} | {added} | {medians[0] / median:.2f} |")


if __name__ == "__main__":
    main()
