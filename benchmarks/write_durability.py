"""What making a folder job's outputs durable costs: an fsync per file against one filesystem sync per batch.

    python benchmarks/write_durability.py --batches 8 --batch 16 --rounds 5

Each row writes ``--batches`` batches of ``--batch`` .npy files the way the job's writers do (atomic:
temp file, rename), as a raw map (7 x 7 float32, 324 bytes) or a heatmap (480 x 640 float32, 1.2 MB),
and makes them durable either with an fsync per file or with one ``sync_filesystem`` (Linux's
``syncfs(2)``) per batch; the last row of each size writes them without either, the floor. The
heatmaps, like every file of 256 KiB and more, are written past the page cache with O_DIRECT since the
fourth 2026-12-02 session (``gradcam.imaging.io.DIRECT_WRITE_BYTES``), so their rows now include the
wait for the disk that a buffered write leaves to the sync. The table
gives the CPU time (this process, kernel included) and the wall time per file, medians over rounds
(interleaved: every row once per round).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gradcam.imaging.io import can_sync_filesystem, save_npy_atomic, sync_filesystem

SIZES = {"raw map (324 B)": (7, 7), "heatmap (1.2 MB)": (480, 640)}
MODES = ("fsync per file", "one sync per batch", "neither (the floor)")


def write_batches(folder: Path, array: np.ndarray, batches: int, batch: int, mode: str) -> None:
    for b in range(batches):
        for i in range(batch):
            save_npy_atomic(folder / f"item-{b}-{i}" / "gradcam.npy", array, durable=mode == MODES[0])
        if mode == MODES[1]:
            sync_filesystem(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: the system's temp folder)")
    args = parser.parse_args()
    if not can_sync_filesystem():
        raise SystemExit("sync_filesystem needs Linux's syncfs(2)")
    files = args.batches * args.batch
    cpu: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    rng = np.random.default_rng(0)
    arrays = {name: rng.random(shape, dtype=np.float32) for name, shape in SIZES.items()}
    for _ in range(args.rounds):
        for name, array in arrays.items():
            for mode in MODES:
                with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                    start_cpu, start_wall = time.process_time(), time.perf_counter()
                    write_batches(Path(tmp), array, args.batches, args.batch, mode)
                    cpu.setdefault((name, mode), []).append((time.process_time() - start_cpu) / files * 1e3)
                    wall.setdefault((name, mode), []).append((time.perf_counter() - start_wall) / files * 1e3)
    print(f"{args.batches} batches of {args.batch} files, {args.rounds} interleaved rounds, medians")
    print("| file | durability | CPU ms / file | wall ms / file |")
    print("|---|---|---|---|")
    for name in SIZES:
        for mode in MODES:
            key = (name, mode)
            print(f"| {name} | {mode} | {statistics.median(cpu[key]):.3f} | {statistics.median(wall[key]):.3f} |")


if __name__ == "__main__":
    main()
