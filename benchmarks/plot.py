"""Plot cost (x the inference forward) against batch size and against classes per image from run.py JSON files.

    python benchmarks/plot.py docs/benchmarks/cpu_batch_*.json --x batch --out docs/benchmarks/cpu_batch.png
    python benchmarks/plot.py docs/benchmarks/cpu_classes.json --x k --out docs/benchmarks/cpu_classes.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--x", choices=["batch", "k"], required=True)
    parser.add_argument("--model", default=None, help="only this model's rows")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for file in args.files:
        data = json.loads(Path(file).read_text())
        for row in data["rows"]:
            if args.model and row["model"] != args.model:
                continue
            x = data["args"]["batch"] if args.x == "batch" else row["k"]
            series[row["contender"]].append((x, row["vs_forward"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size" if args.x == "batch" else "classes per image (k)")
    ax.set_ylabel("time / inference forward")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
