#!/usr/bin/env python
"""Train the synthetic-scene captioner and VQA model, and measure the claims of docs/language.md.

    python scripts/train_language.py train            # both models -> src/gradcam/language/weights/*.pt
    python scripts/train_language.py train --only vqa --steps 1500
    python scripts/train_language.py claims           # measure, print, rewrite the tables in docs/language.md

The work is done by gradcam.language.training and gradcam.language.claims.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gradcam.language.claims import THRESHOLDS, claim_values, claims_markdown, measure_claims, update_docs
from gradcam.language.models import load_captioner, load_vqa, save_model, scene_encoder, weights_path
from gradcam.language.training import (
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
DOCS = Path(__file__).resolve().parent.parent / "docs" / "language.md"


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    report = lambda line: print(f"  {line}", flush=True)  # noqa: E731
    encoder_config = TrainConfig(steps=args.encoder_steps, batch=64, lr=args.lr, seed=args.seed)
    if args.encoder_in:  # a CNN pretrained by an earlier run (--encoder-out)
        saved = torch.load(args.encoder_in, weights_only=True)
        encoder = scene_encoder().requires_grad_(False)
        encoder.load_state_dict(saved["state_dict"])
        encoder_stats, encoder_config = saved["stats"], TrainConfig(**saved["config"])
    else:
        print(f"pretraining the CNN: {encoder_config}", flush=True)
        encoder, encoder_stats = train_encoder(encoder_config, report)
    print(json.dumps(encoder_stats), flush=True)
    if args.encoder_out:
        config = dict(encoder_config.__dict__)
        torch.save({"state_dict": encoder.state_dict(), "stats": encoder_stats, "config": config}, args.encoder_out)
    if args.only == "none":
        return 0
    for kind in ("captioner", "vqa"):
        if args.only and args.only != kind:
            continue
        config = TrainConfig(
            steps=args.steps or STEPS[kind], batch=args.batch or BATCH[kind], lr=args.lr, seed=args.seed
        )
        print(f"training the {kind} on the frozen CNN: {config}", flush=True)
        trainer = train_captioner if kind == "captioner" else train_vqa
        options = dict(args.option if kind == "vqa" else args.caption_option)
        model, stats = trainer(config, report, encoder=encoder, finetune=args.finetune, **options)
        measure = caption_accuracy if kind == "captioner" else vqa_accuracy
        metrics = {
            **stats,
            "steps": config.steps,
            "batch": config.batch,
            "lr": config.lr,
            "seed": config.seed,
            "threads": args.threads,
            "encoder_steps": encoder_config.steps,
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
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", type=Path, help="folder for the weights (default: the package's weights folder)")
    t.set_defaults(run=train)
    c = sub.add_parser("claims", help="measure the claims and rewrite the tables of docs/language.md")
    c.add_argument("--caption-scenes", type=int, default=200)
    c.add_argument("--vqa-scenes", type=int, default=100)
    c.add_argument("--occlusion-scenes", type=int, default=60)
    c.add_argument("--accuracy-scenes", type=int, default=300)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--docs", type=Path, default=DOCS)
    c.add_argument("--no-docs", action="store_true", help="print only")
    c.add_argument("--json", type=Path, help="also write every number as JSON")
    c.add_argument("--weights-dir", type=Path, help="measure captioner.pt / vqa.pt from this folder (default: shipped)")
    c.set_defaults(run=claims)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
