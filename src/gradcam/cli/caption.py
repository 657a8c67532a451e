"""``gradcam caption IMAGE``: caption an image and explain every word (Grad-CAM + Guided Grad-CAM)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..imaging.draw import available_colormaps
from ._common import CLIError, check_file, check_out_folder, resolve_device

COMMAND = "caption"
HELP = "caption an image (or explain --caption) with one Grad-CAM and Guided Grad-CAM map per word"
MAX_LEN = 18
MAX_TILE = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="image file (or use --scene N)")
    parser.add_argument("--scene", type=int, metavar="N", help="use held-out synthetic scene N (saved as the input)")
    parser.add_argument("--caption", metavar="TEXT", help="explain this caption instead of generating one")
    parser.add_argument("--beam", type=int, default=1, metavar="N", help="beam size for generation (default 1: greedy)")
    parser.add_argument(
        "--max-len", type=int, metavar="N", help=f"longest generated caption in words (default {MAX_LEN})"
    )
    parser.add_argument(
        "--model", default="synthetic", help="synthetic (default: the shipped scenes captioner) or hf:FOLDER"
    )
    parser.add_argument("--weights", help="captioner weights file for the synthetic model (default: shipped)")
    parser.add_argument(
        "--out", default="gradcam-caption", metavar="DIR", help="output folder (default gradcam-caption)"
    )
    parser.add_argument("--no-guided", action="store_true", help="Grad-CAM maps only")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    parser.add_argument("--colormap", default="jet", choices=available_colormaps())
    parser.add_argument("--tile", type=int, default=160, metavar="PX", help="tile height in the panel (default 160)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from ..imaging.io import save_npy_atomic, save_png_atomic, write_json_atomic
    from ..language.explain import explain_caption
    from ..language.inputs import load_input, load_model_or_fail
    from ..language.render import caption_figure

    check_language_options(args)
    if args.beam < 1:
        raise CLIError(f"--beam must be >= 1; got {args.beam}")
    if args.max_len is not None and args.max_len < 1:
        raise CLIError(f"--max-len must be >= 1 (words); got {args.max_len}")
    if args.caption is not None and args.beam != 1:
        raise CLIError("--beam generates a caption; it cannot be combined with --caption")
    if args.caption is not None and args.max_len is not None:
        raise CLIError("--max-len limits a generated caption; it cannot be combined with --caption")
    device = resolve_device(args.device)
    loaded = load_model_or_fail("caption", args.model, args.weights, device)
    image, x, geometry, stem = load_input(args.image, args.scene, loaded.preprocess, device)
    max_len = MAX_LEN if args.max_len is None else args.max_len
    e = explain_caption(loaded.model, x, args.caption, beam=args.beam, max_len=max_len, guided=not args.no_guided)
    figure = caption_figure(image, e, geometry, alpha=args.alpha, colormap=args.colormap, tile=args.tile)
    out = Path(args.out)
    files = {"panel": f"{stem}.caption.png", "gradcam": f"{stem}.gradcam.npy"}
    if args.scene is not None:
        files["input"] = f"{stem}.png"
        save_png_atomic(out / files["input"], image)
    save_png_atomic(out / files["panel"], figure)
    save_npy_atomic(out / files["gradcam"], e.gradcam.detach().cpu().numpy())
    if e.guided_gradcam is not None:
        files["guided_gradcam"] = f"{stem}.guided_gradcam.npy"
        save_npy_atomic(out / files["guided_gradcam"], e.guided_gradcam.detach().cpu().numpy())
    write_json_atomic(
        out / f"{stem}.caption.json",
        {
            "caption": e.caption,
            "given": args.caption is not None,
            "beam": args.beam,
            "words": list(e.words),
            "positions": list(e.positions),
            "tokens": e.tokens.tolist(),
            "log_probs": [round(float(v), 6) for v in e.log_probs],
            "model": loaded.name,
            "layer": e.layer,
            "files": files,
        },
    )
    print(f"caption: {e.caption}")
    print("log P per word: " + " ".join(f"{w}={float(v):.3f}" for w, v in zip(e.words, e.log_probs)))
    print(f"panel: {out / files['panel']}")
    return 0


def check_language_options(args: argparse.Namespace) -> None:
    """The checks ``caption`` and ``vqa`` share (CLIError naming the option and what it takes)."""
    if not 0.0 <= args.alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1]; got {args.alpha}")
    if not 1 <= args.tile <= MAX_TILE:  # a panel is a row of tiles per word: bound its memory
        raise CLIError(f"--tile must be in [1, {MAX_TILE}] pixels; got {args.tile}")
    if args.scene is not None and args.scene < 0:
        raise CLIError(f"--scene must be >= 0; got {args.scene}")
    if args.weights is not None and args.model != "synthetic":
        raise CLIError(f"--weights applies to --model synthetic; {args.model} loads its weights from its folder")
    check_file(args.weights, "--weights")
    check_out_folder(args.out)
