"""How many items per second the folder job's writer pool takes: the hand-off to writer processes.

    python benchmarks/writer_pool.py --items 128 --writers 2 --rounds 3

Each row hands ``--items`` raw-output items (a 7 x 7 float32 map and a record each, written as
``_raw.npy`` by the job's own ``_write_outputs``) to ``--writers`` writer processes and waits for them:
one task per item with the map as a tensor (what the job did before), one task per item with the map
as a numpy array, and one task per writer and batch of ``--batch`` items (what the job does now).
Rows are interleaved, medians over rounds. On an accelerator the writers must keep up with thousands
of images per second, so their cost per item bounds a job whatever the model's speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gradcam.jobs.explain import (
    ExplainSettings,
    ItemTargets,
    _shares,
    _write_items,
    _write_outputs,
    _writer_pool,
)

ROWS = ("one task per item, map as a tensor", "one task per item, map as an array", "one task per writer and batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = ExplainSettings(methods=("gradcam",), outputs=("raw",))
    targets = ItemTargets([281], ["tabby"], [281], [{"index": 281, "label": "tabby", "probability": 0.5}])
    maps = [torch.rand(1, 7, 7) for _ in range(args.items)]
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    with _writer_pool(args.writers) as pool:
        for _ in range(args.rounds):
            for row in ROWS:
                with tempfile.TemporaryDirectory() as tmp:
                    items = [
                        (Path(tmp) / f"item-{i}", {"input": f"img_{i}.jpg"}, None, {"gradcam": None},
                         {"gradcam": m if row == ROWS[0] else m.numpy()}, {"gradcam": [1.0]}, targets, settings, False)
                        for i, m in enumerate(maps)
                    ]  # fmt: skip
                    start = time.perf_counter()
                    if row == ROWS[2]:
                        batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]
                        tasks = [pool.submit(_write_items, s) for b in batches for s in _shares(b, args.writers)]
                    else:
                        tasks = [pool.submit(_write_outputs, *item) for item in items]
                    for task in tasks:
                        task.result()
                    times[row].append((time.perf_counter() - start) / args.items * 1e3)
    print(f"{args.items} raw-output items, {args.writers} writer processes, batch {args.batch}, "
          f"{args.rounds} interleaved rounds, medians")  # fmt: skip
    print("| hand-off | ms / item | items / s |")
    print("|---|---|---|")
    for row in ROWS:
        median = statistics.median(times[row])
        print(f"| {row} | {median:.3f} | {1e3 / median:.0f} |")


if __name__ == "__main__":
    main()
