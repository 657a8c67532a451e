"""Run the model-zoo sweep (tests/models/zoo_support.py) and write docs/zoo.md: model, automatic layer, grid, status.

    PYTHONPATH=src python scripts/zoo_table.py [--light] [--match REGEX] [--out docs/zoo.md]

Each architecture is built with random weights, explained in float64 with no layer argument, and its raw map
compared with an independent float64 autograd Grad-CAM at the chosen layer (see ``check``). One torch thread.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from models.zoo_support import Result, check, zoo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light", action="store_true", help="skip the heavy entries")
    parser.add_argument("--match", default="", help="only entries whose id matches this regex")
    parser.add_argument("--out", default=str(ROOT / "docs" / "zoo.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: list[Result] = []
    start = time.perf_counter()
    for entry in zoo():
        if (args.light and entry.heavy) or not re.search(args.match, entry.id):
            continue
        began = time.perf_counter()
        try:
            result = check(entry)
        except Exception as error:  # the table records every failure; the tests raise them
            result = Result(entry, status=f"FAIL: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            result.seconds = time.perf_counter() - began
            traceback.print_exc()
        results.append(result)
        print(f"{entry.id:<55} {result.layer or '-':<50} {result.grid} {result.seconds:6.1f}s {result.status}",
              flush=True)  # fmt: skip
    total = time.perf_counter() - start
    write_table(Path(args.out), results, total)
    failed = [r for r in results if r.status.startswith("FAIL")]
    print(f"{len(results)} models, {len(failed)} failed, {total:.0f} s")
    return 1 if failed else 0


def write_table(path: Path, results: list[Result], total: float) -> None:
    import timm
    import torchvision
    import transformers

    lines = [
        "# Model zoo: the automatic layer on every family",
        "",
        "Produced by `scripts/zoo_table.py` (the same checks as `tests/models/test_zoo.py`). Every model is built with "
        "random weights, explained by `gradcam.GradCAM(model)(x, target)` with **no layer and no reshape**, in float64 "
        "on a 2-image batch at the smallest input whose last stage is still at least 2x2; `status` ok means the "
        "chosen layer matches the family's last-stage regex and the raw map equals an independent float64 autograd "
        "Grad-CAM at that layer (hook, `autograd.grad`, tokens laid on the grid by hand, alpha = spatial mean, "
        "ReLU of the weighted sum) within Higham's bound for the float32 weighted sum.",
        "",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
        f"transformers {transformers.__version__}, {platform.machine()}, one thread; {len(results)} models in "
        f"{total / 60:.1f} min. Targets: classes 1 and 2 (classification), class 1 summed over the map "
        "(segmentation), each image's top detection score (detection, through `DetectorAdapter`), the pooled "
        "embedding's first feature (CLIP's vision tower). Video CNNs get 2 clips of 8 frames (S3D: 16 frames at "
        "224) and a 3-D map (grid t x u x v); video transformers (MViT, Swin3D) must be refused with a LayerError. "
        "Grid is the map's size at the layer; `reshape` is the re-indexing the automatic choice adds (tokens: "
        "grid and prefix tokens; channels_last; `crop_padding` for detectors). Seconds include building the model "
        "with random weights, which dominates for the largest ones.",
        "",
        "| model | family | input | automatic layer | reshape | grid | seconds | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        grid = "x".join(str(n) for n in r.grid) if r.grid else "-"
        reshape = r.reshape.replace("TokenGrid", "").replace("layout=", "").replace("'", "") or "-"
        lines.append(
            f"| {r.entry.id} | {r.entry.family} | {r.entry.size} | `{r.layer or '-'}` | {reshape} | {grid} | "
            f"{r.seconds:.1f} | {r.status.replace('|', '/')} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
