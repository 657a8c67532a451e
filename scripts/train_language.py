#!/usr/bin/env python
"""Train the synthetic-scene captioner and VQA model, and measure the claims of docs/language.md.

    python scripts/train_language.py train            # both models -> src/gradcam/language/weights/*.pt
    python scripts/train_language.py train --only vqa --steps 1500
    python scripts/train_language.py train --only none --encoder-labels pairs --channels 64 --encoder-out cnn.pt
    python scripts/train_language.py train --only vqa --encoder-in cnn.pt    # on a CNN pretrained before
    python scripts/train_language.py claims           # measure, print, rewrite the tables in docs/language.md

The work is done by gradcam.language.training and gradcam.language.claims.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradcam.language.claims import THRESHOLDS, claim_values, claims_markdown, measure_claims, update_docs
from gradcam.language.models import load_captioner, load_vqa, save_model, scene_encoder, weights_path
from gradcam.language.training import (
    ENCODER_LABEL_SETS,
    TrainConfig,
    caption_accuracy,
    split_scenes,
    train_captioner,
    train_encoder,
    train_vqa,
    vqa_accuracy,
)

STEPS = {"captioner": 1000, "vqa": 1000}
ENCODER_STEPS = 1200
BATCH = {"captioner": 64, "vqa": 32}  # VQA: scenes per step, every question of each
# each model's CNN (what it is pretrained to detect, output channels) and model options
RECIPE: dict[str, dict[str, Any]] = {
    "captioner": {"labels": "attributes", "channels": 32, "occlusion": 0.0, "options": {}},
    "vqa": {
        "labels": "pairs",
        "channels": 64,
        "occlusion": 0.5,
        "train": {"occlusion": 0.5},
        "options": {"fusion": "readout", "keys": "linear", "values": "positions"},
    },
}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "language.md"
Report = Callable[[str], None]


def pretrained_encoder(
    args: argparse.Namespace, labels: str, channels: int, occlusion: float, report: Report
) -> tuple[torch.nn.Module, dict[str, Any], TrainConfig, str]:
    """The frozen CNN: loaded from ``--encoder-in`` or pretrained now (and saved to ``--encoder-out``)."""
    if args.encoder_in:  # a CNN pretrained by an earlier run (--encoder-out)
        saved = torch.load(args.encoder_in, weights_only=True)
        channels = next(v for v in reversed(saved["state_dict"].values()) if v.dim() == 4).shape[0]
        encoder = scene_encoder(channels).requires_grad_(False)
        encoder.load_state_dict(saved["state_dict"])
        return encoder, saved["stats"], TrainConfig(**saved["config"]), saved.get("labels", "attributes")
    config = TrainConfig(steps=args.encoder_steps, batch=64, lr=args.lr, seed=args.seed)
    print(f"pretraining the CNN ({channels} channels, {labels} labels, occlusion {occlusion}): {config}", flush=True)
    encoder, stats = train_encoder(config, report, channels, labels, occlusion)
    stats["occlusion"] = occlusion
    print(json.dumps(stats), flush=True)
    if args.encoder_out:
        saved = {"state_dict": encoder.state_dict(), "stats": stats, "config": dict(config.__dict__), "labels": labels}
        torch.save(saved, args.encoder_out)
    return encoder, stats, config, labels


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    report = lambda line: print(f"  {line}", flush=True)  # noqa: E731
    if args.only == "none":
        occlusion = args.encoder_occlusion or 0.0
        pretrained_encoder(args, args.encoder_labels or "attributes", args.channels or 32, occlusion, report)
        return 0
    for kind in ("captioner", "vqa"):
        if args.only and args.only != kind:
            continue
        recipe = RECIPE[kind]
        labels, channels = args.encoder_labels or recipe["labels"], args.channels or recipe["channels"]
        occlusion = recipe["occlusion"] if args.encoder_occlusion is None else args.encoder_occlusion
        encoder, encoder_stats, encoder_config, labels = pretrained_encoder(args, labels, channels, occlusion, report)
        config = TrainConfig(
            steps=args.steps or STEPS[kind], batch=args.batch or BATCH[kind], lr=args.lr, seed=args.seed
        )
        print(f"training the {kind} on the frozen CNN: {config}", flush=True)
        trainer = train_captioner if kind == "captioner" else train_vqa
        options = {**recipe["options"], **dict(args.option if kind == "vqa" else args.caption_option)}
        options["channels"] = encoder[-2].out_channels
        extra = dict(recipe.get("train", {}))  # training options (VQA: the cutout rate)
        if args.occlusion is not None and kind == "vqa":
            extra["occlusion"] = args.occlusion
        model, stats = trainer(config, report, encoder=encoder, finetune=args.finetune, **extra, **options)
        measure = caption_accuracy if kind == "captioner" else vqa_accuracy
        metrics = {
            **stats,
            "steps": config.steps,
            "batch": config.batch,
            "lr": config.lr,
            "seed": config.seed,
            "threads": args.threads,
            "encoder_steps": encoder_config.steps,
            "encoder_labels": labels,
            "encoder_occlusion": encoder_stats.get("occlusion", 0.0),
            **{f"train_{key}": value for key, value in extra.items()},
            "encoder_seconds": encoder_stats["train_seconds"],
            "encoder_heldout_label_accuracy": encoder_stats["heldout_label_accuracy"],
            "train": measure(model, split_scenes(300, heldout=False)),
            "heldout": measure(model, split_scenes(300, heldout=True)),
        }
        path = save_model(model, args.out / f"{kind}.pt" if args.out else weights_path(kind), metrics)
        print(json.dumps(metrics, indent=1))
        print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)
    return 0


def claims(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    folder = args.weights_dir
    captioner = load_captioner(folder / "captioner.pt") if folder else None
    vqa = load_vqa(folder / "vqa.pt") if folder else None
    result = measure_claims(
        args.caption_scenes, args.vqa_scenes, args.occlusion_scenes, args.accuracy_scenes, captioner, vqa, folder
    )
    markdown = claims_markdown(result)
    print(markdown)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.no_docs:
        print(f"updated {update_docs(args.docs, markdown)}")
    failed = {k: v for k, v in claim_values(result).items() if v < THRESHOLDS[k]}
    if failed:
        print(f"claims below their thresholds: {failed}", file=sys.stderr)
        return 1
    return 0


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, int(value) if value.isdigit() else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and save the shipped weights")
    t.add_argument("--only", choices=("captioner", "vqa", "none"), help="train one model (none: the CNN only)")
    t.add_argument("--encoder-out", type=Path, help="also save the pretrained CNN here")
    t.add_argument("--encoder-in", type=Path, help="start from a CNN saved by --encoder-out (no pretraining)")
    t.add_argument("--steps", type=int, help=f"batches (default {STEPS})")
    t.add_argument("--batch", type=int, help=f"scenes per batch (default {BATCH})")
    t.add_argument("--option", type=_option, action="append", default=[], help="VQA model option KEY=VALUE")
    t.add_argument("--caption-option", type=_option, action="append", default=[], help="captioner option KEY=VALUE")
    t.add_argument("--finetune", action="store_true", help="fine-tune the pretrained CNN (default: frozen)")
    t.add_argument("--encoder-steps", type=int, default=ENCODER_STEPS, help="CNN pretraining batches")
    t.add_argument("--encoder-labels", choices=tuple(ENCODER_LABEL_SETS),
                   help="what the CNN is pretrained to detect (default: the model's recipe)")  # fmt: skip
    t.add_argument("--encoder-occlusion", type=float, help="cutout rate in CNN pretraining (default: the recipe)")
    t.add_argument("--occlusion", type=float, help="cutout rate in VQA training (default: the recipe)")
    t.add_argument("--channels", type=int, help="CNN output channels, the explained layer (default: the recipe)")
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", type=Path, help="folder for the weights (default: the package's weights folder)")
    t.set_defaults(run=train)
    c = sub.add_parser("claims", help="measure the claims and rewrite the tables of docs/language.md")
    c.add_argument("--caption-scenes", type=int, default=200)
    c.add_argument("--vqa-scenes", type=int, default=100)
    c.add_argument("--occlusion-scenes", type=int, default=60)
    c.add_argument("--accuracy-scenes", type=int, default=300)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--docs", type=Path, default=DOCS)
    c.add_argument("--no-docs", action="store_true", help="print only")
    c.add_argument("--json", type=Path, help="also write every number as JSON")
    c.add_argument("--weights-dir", type=Path, help="measure captioner.pt / vqa.pt from this folder (default: shipped)")
    c.set_defaults(run=claims)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
