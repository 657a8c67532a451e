"""``gradcam explain PATH...``: maps, overlays and panels for image files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..assets import sample_names, sample_path
from ..imaging.draw import available_colormaps
from ..imaging.io import find_images
from ..jobs import ExplainSettings, explain_files
from ..jobs.explain import distributed_rank
from ..methods import METHODS
from ._common import add_model_arguments, load_or_exit, parse_targets, resolve_device

COMMAND = "explain"
HELP = "explain the predictions of a model on image files, folders or globs"
DEFAULT_METHODS = ("gradcam", "guided-backprop", "guided-gradcam", "counterfactual")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (recursive) or globs")
    parser.add_argument("--samples", action="store_true", help="also explain the bundled sample photos")
    add_model_arguments(parser)
    parser.add_argument("--layer", help="layer to explain (dotted name; default: the model's or automatic)")
    parser.add_argument(
        "--target", action="append", metavar="CLASS", help="class index or name to explain (repeatable)"
    )
    parser.add_argument("--top-k", type=int, default=1, metavar="K", help="maps for the K best classes (default 1)")
    parser.add_argument(
        "--method",
        action="append",
        choices=list(METHODS),
        help=f"method (repeatable; default: {', '.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--out", default="gradcam-out", metavar="DIR", help="output folder (default gradcam-out)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="image decoding processes (default: up to 4)")
    parser.add_argument(
        "--writers", type=int, default=2, help="processes drawing and writing outputs (default 2; 0 = a thread)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    parser.add_argument("--colormap", default="jet", choices=available_colormaps())
    parser.add_argument("--overwrite", action="store_true", help="redo items that are already done")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-image lines")


def _fail(message: str) -> int:
    print(f"gradcam explain: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        return _fail(f"--alpha must be in [0, 1]; got {args.alpha}")
    if args.top_k < 1:
        return _fail(f"--top-k must be >= 1; got {args.top_k}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1; got {args.batch_size}")
    if not args.paths and not args.samples:
        return _fail("give image files, folders or globs (or --samples for the bundled photos)")
    try:
        paths = find_images(args.paths) if args.paths else []
    except FileNotFoundError as error:
        return _fail(str(error))
    if args.samples:
        paths += [sample_path(name) for name in sample_names()]
    device = resolve_device(args.device)
    loaded = load_or_exit(args)
    settings = ExplainSettings(
        methods=tuple(dict.fromkeys(args.method or DEFAULT_METHODS)),
        targets=parse_targets(args.target, loaded),
        top_k=args.top_k,
        alpha=args.alpha,
        colormap=args.colormap,
        layer=args.layer,
    )
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1, max(0, len(paths) - 1))
    out = Path(args.out)

    def report(line: str, is_error: bool) -> None:
        if is_error:
            _write(line, sys.stderr)
        elif not args.quiet:
            _write(line, sys.stdout)

    from ..errors import GradCAMError

    try:
        summary = explain_files(
            paths,
            loaded,
            settings,
            out,
            batch_size=args.batch_size,
            device=device,
            workers=workers,
            writers=args.writers,
            overwrite=args.overwrite,
            progress=not args.quiet and sys.stderr.isatty(),
            report=report,
        )
    except (GradCAMError, ValueError) as error:
        return _fail(str(error))
    if distributed_rank()[0] != 0:  # under torchrun, rank 0 reports for everyone
        return 1 if summary.failed else 0
    print(
        f"{summary.done} explained, {summary.skipped} already done, {summary.failed} failed "
        f"in {summary.seconds:.1f} s; model {loaded.name}, layer {summary.layer}"
    )
    if summary.items:
        first = summary.items[0]["outputs"][0]
        print(f"overlays, heatmaps and panels in {out}/ (e.g. {first['overlay']}); index: {out / 'manifest.json'}")
    return 1 if summary.failed else 0


def _write(line: str, stream) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=stream)
