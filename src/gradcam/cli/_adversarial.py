"""``gradcam evaluate adversarial``: attack the images (FGSM / PGD) and measure how the maps move.

Options of its own (the ``adversarial`` group of ``gradcam evaluate``); it also reads ``--synthetic`` /
IMAGES, ``--images``, ``--seed``, the model options, ``--layer``, ``--method``, ``--batch-size``,
``--tolerance``, ``--threshold``, ``--figure-images``, ``--no-plots`` and ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ._common import CLIError, check_out_folder, parse_class, resolve_device

ADVERSARIAL_OPTIONS = ("epsilons", "attack", "steps", "step_size", "adversarial_class")
DEFAULT_EPSILONS = "0,1,2,4,8,16"


def add_adversarial_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("adversarial (evaluate adversarial)")
    group.add_argument(
        "--epsilons", metavar="E,E,...",
        help=f"L-inf budgets in 8-bit pixel levels, comma-separated (4 = 4/255 of the [0, 1] range; default "
        f"{DEFAULT_EPSILONS})",
    )  # fmt: skip
    group.add_argument("--attack", choices=("fgsm", "pgd"), help="FGSM or PGD (default pgd)")
    group.add_argument("--steps", type=int, metavar="N", help="PGD iterations (default 10)")
    group.add_argument(
        "--step-size", type=float, metavar="LEVELS", help="PGD step in pixel levels (default 2.5 * eps / steps)"
    )
    group.add_argument("--random-start", action="store_true", help="PGD starts at a random point of the eps ball")
    group.add_argument(
        "--adversarial-class",
        metavar="CLASS",
        help="targeted attack to this class (index or label; default untargeted)",
    )
    group.add_argument(
        "--samples", action="store_true", help="the bundled sample photos with their hand-labelled boxes (with Lite0)"
    )


def reject_adversarial_options(args: argparse.Namespace) -> None:
    """CLIError when an option of the adversarial group is given to another task."""
    given = [name for name in ADVERSARIAL_OPTIONS if getattr(args, name) is not None]
    given += [name for name in ("random_start", "samples") if getattr(args, name)]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise CLIError(f"{option} applies to `gradcam evaluate adversarial`, not to evaluate {args.task}")


def _epsilons(text: str) -> tuple[float, ...]:
    try:
        levels = [float(part) for part in text.split(",")]
    except ValueError:
        levels = []
    if not levels or not all(math.isfinite(v) and 0 <= v <= 255 for v in levels):
        raise CLIError(f"--epsilons must be comma-separated pixel levels in [0, 255] (e.g. 0,1,4,16); got {text!r}")
    return tuple(v / 255 for v in levels)


def _check(args: argparse.Namespace) -> None:
    for name in ("images", "batch_size", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1; got {value}")
    if args.step_size is not None and not (math.isfinite(args.step_size) and args.step_size > 0):
        raise CLIError(f"--step-size must be a positive number of pixel levels; got {args.step_size}")
    if (args.attack == "fgsm") and (args.steps is not None or args.step_size is not None or args.random_start):
        raise CLIError("--steps, --step-size and --random-start are PGD options; FGSM is one step of eps")
    if sum([bool(args.synthetic), bool(args.samples), bool(args.path)]) != 1:
        raise CLIError("give exactly one of IMAGES (a folder with .xml boxes), --synthetic or --samples")
    if args.figure_images < 0:
        raise CLIError(f"--figure-images must be >= 0; got {args.figure_images}")
    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must be a fraction in [0, 1]; got {args.threshold}")
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0; got {args.seed}")
    if args.tolerance is not None and not args.tolerance >= 0:
        raise CLIError(f"--tolerance must be >= 0 pixels; got {args.tolerance}")
    check_out_folder(args.out)


def _items(args: argparse.Namespace, loaded) -> list:
    from ..evaluation import load_annotated_folder, synthetic_items
    from ..evaluation.adversarial_experiment import sample_items

    if args.synthetic:
        return synthetic_items(args.images or 64, seed=args.seed)
    if args.samples:
        return sample_items()[: args.images]
    try:
        return load_annotated_folder(args.path, args.annotations, loaded.labels, origin=args.origin, limit=args.images)
    except (ValueError, FileNotFoundError) as error:
        raise CLIError(str(error)) from None


def run_adversarial(args: argparse.Namespace) -> int:
    from ..evaluation.adversarial_experiment import adversarial_robustness
    from ..evaluation.adversarial_report import format_adversarial_table, write_adversarial_report
    from .evaluate import _load

    epsilons = _epsilons(args.epsilons or DEFAULT_EPSILONS)
    _check(args)
    device = resolve_device(args.device)
    loaded = _load(args)
    if args.layer is not None:
        from ..layers import resolve_layer

        resolve_layer(loaded.model, args.layer)
    target = (
        None if args.adversarial_class is None else parse_class(args.adversarial_class, loaded, "--adversarial-class")
    )
    items = _items(args, loaded)
    loaded.model.to(device)
    steps = args.steps or 10
    result = adversarial_robustness(
        loaded, items, tuple(dict.fromkeys(args.method)) if args.method else "gradcam", epsilons,
        args.attack or "pgd", steps=steps, step_size=None if args.step_size is None else args.step_size / 255,
        random_start=args.random_start, target=target, layer=args.layer,
        tolerance=args.tolerance if args.tolerance is not None else (4.0 if args.synthetic else 15.0),
        threshold=args.threshold, batch_size=args.batch_size, examples=args.figure_images, seed=args.seed,
    )  # fmt: skip
    out = Path(args.out)
    written = write_adversarial_report(result, out, plots=not args.no_plots)
    print(format_adversarial_table(result))
    print(
        f"\n{len(items)} images, {result.settings['attack']} on {loaded.name}; tables and figure in {out}/ "
        f"({len(written)} files)",
        file=sys.stderr,
    )
    return 0
