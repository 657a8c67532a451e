"""Two variants of `gradcam explain DIR` against each other, in ABBA pairs: is a change worth it?

    python benchmarks/folder_ab.py --pairs 24 --outputs "raw;heatmap"           # writes between steps or beside
    python benchmarks/folder_ab.py --pairs 24 --outputs "heatmap" --b "+pil"     # TorchCodec against PIL
    python benchmarks/folder_ab.py --pairs 10 --outputs "heatmap" --b "+buffered"  # O_DIRECT or the page cache

On a shared machine whose speed drifts by +-20 % over minutes, the ratio of two jobs run back to back
is steadier than either job's ratio to a forward timed at another moment. Each pair runs the two
variants one after the other, alternating which goes first (A B, B A, ...), so that a steady drift
cancels; the table gives the median of the pairs' images/s ratios A / B, their quartiles, and in how
many pairs A was faster (a sign test: with no real difference, about half).

A row's A is the ``--outputs`` choice as given (``folder_throughput.py``'s syntax), B the same with the
``--b`` flags added (default ``+beside``: the writers of a CPU job run beside the model instead of
between model steps).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from folder_throughput import _decoder, _settings, _writes, make_folder, timing_model

from gradcam.jobs import explain_files
from gradcam.jobs.explain import default_pipeline
from gradcam.runtime import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="efficientnet_lite0", help="efficientnet_lite0 or a torchvision name")
    parser.add_argument("--outputs", default="raw;heatmap", help="';'-separated rows (folder_throughput.py's)")
    parser.add_argument("--b", default="+beside", help="the flags that make B from A")
    parser.add_argument("--pairs", type=int, default=24)
    args = parser.parse_args()
    keep_freed_memory()  # as the gradcam CLI does
    device = torch.device(args.device)
    workers, writers = default_pipeline(device, args.images)
    run = dict(batch_size=args.batch, device=device, workers=workers, writers=writers, progress=False)
    print(f"device {device}, batch {args.batch}, workers {workers}, writers {writers}, torch threads "
          f"{torch.get_num_threads()}, {args.images} JPEGs (640x480), {args.pairs} pairs per row")  # fmt: skip
    print("| A | B | images/s A / B: median (quartiles) | A faster in |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = timing_model(args.model, Path(tmp))
        (Path(tmp) / "in").mkdir()
        paths = make_folder(Path(tmp) / "in", args.images)
        jobs_run = 0

        def rate(choice: str) -> float:
            nonlocal jobs_run
            with _decoder(choice), _writes(choice):
                summary = explain_files(paths, loaded, _settings("gradcam", choice), Path(tmp) / f"o{jobs_run}", **run)
            jobs_run += 1
            return summary.done / summary.seconds

        for a in args.outputs.split(";"):
            b = a + args.b
            rate(a), rate(b)  # warm-up
            ratios = []
            for pair in range(args.pairs):
                if pair % 2 == 0:
                    first = rate(a)
                    ratios.append(first / rate(b))
                else:
                    second = rate(b)
                    ratios.append(rate(a) / second)
            low, _, high = statistics.quantiles(ratios, n=4)
            wins = sum(r > 1 for r in ratios)
            print(f"| {a} | {b} | {statistics.median(ratios):.3f} ({low:.3f}-{high:.3f}) | {wins}/{args.pairs} |")


if __name__ == "__main__":
    main()
