"""Train the synthetic-benchmark CNN and write the weights shipped with gradcam.

    python scripts/train_synthetic.py                      # seeded, CPU, a few minutes
    python scripts/train_synthetic.py --steps 200 --out /tmp/cnn.pt

Writes the state dict (``--out``, default src/gradcam/evaluation/weights/synthetic_cnn.pt) and, next to
it, a JSON record of the run (seed, steps, time, held-out accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gradcam.evaluation.training import train_synthetic_cnn

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "gradcam" / "evaluation" / "weights" / "synthetic_cnn.pt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the other core makes images)")
    parser.add_argument("--workers", type=int, default=1, help="image-generating processes (default 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    def progress(step: int, loss: float) -> None:
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss:.4f}", file=sys.stderr, flush=True)

    model, record = train_synthetic_cnn(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        workers=args.workers,
        progress=progress,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
