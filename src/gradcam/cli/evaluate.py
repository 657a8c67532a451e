"""``gradcam evaluate localization|pointing|faithfulness|sanity|all``: measure the methods against ground truth
(and the sanity checks of Adebayo et al. 2018: do the maps depend on the weights and on the class?).

Over an ImageNet-format folder (images + PASCAL-VOC XML with WordNet ids) or ``--synthetic`` (generated
shapes with exact boxes, explained by the synthetic CNN shipped with gradcam). Prints a table and
writes CSV/JSON per image and per method, deletion/insertion curves, every method's maps of the same
images and best/worst examples. Every batch's results are kept in ``OUT/partial/`` so that a rerun
resumes; under ``torchrun`` each rank evaluates its own batches and rank 0 writes the merged outputs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..models import DEFAULT_MODEL, ModelLoadError, load_model
from ._common import (
    CLIError,
    RunError,
    add_model_arguments,
    check_file,
    check_out_folder,
    error_message,
    resolve_device,
)

COMMAND = "evaluate"
HELP = (
    "measure localization, pointing, faithfulness and sanity of every method, or how maps move under "
    "adversarial attacks (ImageNet-format folder or --synthetic)"
)
EPILOG = (
    "Exit code 1 when no method could be evaluated, or when a method named with --method could not be (the table "
    "of the others is still written); methods of the default set that cannot be evaluated with the model are "
    "listed on stderr and do not change the exit code."
)
TASK_CHOICES = ("localization", "pointing", "faithfulness", "sanity", "all", "adversarial")

# Defaults that differ for the synthetic benchmark (112 px images, 6 classes).
SYNTHETIC_DEFAULTS = {"images": 200, "top_k": 1, "tolerance": 4.0, "step": 224, "faithfulness_images": 100}
FOLDER_DEFAULTS = {"images": None, "top_k": 5, "tolerance": 15.0, "step": None, "faithfulness_images": None}


class _MethodChoices(list):
    """The registered methods (as listed in the help and the error), also accepting a smoothing suffix."""

    def __contains__(self, name: object) -> bool:
        from ..evaluation.sources import is_method_name

        return isinstance(name, str) and is_method_name(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.faithfulness import BASELINES as FILLS
    from ..evaluation.scoring import SCORES
    from ..methods import METHODS

    parser.add_argument(
        "task", choices=TASK_CHOICES,
        help="what to measure ('all': the first four together; 'adversarial': how maps move under FGSM / PGD)",
    )  # fmt: skip
    parser.add_argument(
        "path", nargs="?", metavar="IMAGES", help="folder of images with PASCAL-VOC .xml annotations (same stems)"
    )
    parser.add_argument("--annotations", metavar="DIR", help="folder holding the .xml files (default: IMAGES)")
    parser.add_argument(
        "--synthetic", action="store_true", help="generated shapes with exact boxes (model: the shipped synthetic CNN)"
    )
    parser.add_argument("--images", type=int, metavar="N", help="images to use (synthetic: 200; folder: all)")
    parser.add_argument(
        "--seed", type=int, default=1, help="synthetic images' seed (default 1, held out from training)"
    )
    add_model_arguments(parser)
    parser.set_defaults(model=None)  # resolved in run(): the synthetic CNN with --synthetic, else the default
    parser.add_argument("--layer", help="layer for the layer methods (default: the model's)")
    parser.add_argument(
        "--method", action="append", choices=_MethodChoices(METHODS),
        help="method to evaluate (repeatable; default: all); NAME+aug-smooth, NAME+noise-smooth and "
        "NAME+eigen-smooth evaluate it wrapped in that smoothing",
    )  # fmt: skip
    parser.add_argument("--no-baselines", action="store_true", help="leave out the centre/whole-image/random baselines")
    parser.add_argument("--out", default="gradcam-eval", metavar="DIR", help="output folder (default gradcam-eval)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute every batch (ignore partial results in OUT/partial)"
    )
    parser.add_argument(
        "--figure-images", type=int, default=4, metavar="N",
        help="images in methods.png, every method's map side by side (half with one class; default 4)",
    )  # fmt: skip
    group = parser.add_argument_group("localization and pointing")
    group.add_argument("--threshold", type=float, default=0.15, help="box threshold, fraction of the max (0.15)")
    group.add_argument("--iou", type=float, default=0.5, help="IoU for a correct box (0.5)")
    group.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="segment connectivity (8)")
    group.add_argument("--top-k", type=int, help="ILSVRC top-k (default 5; synthetic 1)")
    group.add_argument(
        "--no-sweep", action="store_true", help="skip MaxBoxAcc (box accuracy at the best of thresholds 0.05..0.95)"
    )
    group.add_argument("--tolerance", type=float, help="pointing tolerance in pixels (default 15; synthetic 4)")
    group.add_argument("--origin", type=int, choices=(0, 1), default=0, help="XML box indices start at 0 or 1 (0)")
    group = parser.add_argument_group("faithfulness")
    group.add_argument("--step", type=int, help="pixels per deletion/insertion step (default one row; synthetic 224)")
    group.add_argument("--deletion-baseline", choices=FILLS, default="zero")
    group.add_argument("--insertion-baseline", choices=FILLS, default="blur")
    group.add_argument("--score", choices=SCORES, default="probability")
    group.add_argument(
        "--faithfulness-images", type=int, metavar="N", help="faithfulness on the first N images (synthetic: 100)"
    )
    group.add_argument("--occlusion", action="store_true", help="also the rank correlation with occlusion maps")
    group.add_argument("--no-road", action="store_true", help="skip ROAD (MoRF/LeRF with noisy linear imputation)")
    group.add_argument("--road-images", type=int, default=8, metavar="N", help="ROAD on the first N images (8)")
    group.add_argument(
        "--robustness-samples", type=int, default=4, metavar="N", help="Max/Avg-Sensitivity samples (4; 0: skip)"
    )
    group.add_argument(
        "--robustness-images", type=int, default=8, metavar="N", help="sensitivity on the first N images (8)"
    )
    group.add_argument("--patch", type=int, default=32, help="occlusion patch (32)")
    group.add_argument("--stride", type=int, default=16, help="occlusion stride (16)")
    group.add_argument("--fill", type=float, default=0.0, help="occlusion fill value in input space (0)")
    from ._adversarial import add_adversarial_arguments

    add_adversarial_arguments(parser)
    group = parser.add_argument_group("sanity checks (model-parameter randomisation, random logit)")
    group.add_argument(
        "--sanity-images", type=int, default=4, metavar="N",
        help="sanity checks on the first N images (default 4; each costs layers + 3 explanations per method)",
    )  # fmt: skip
    group.add_argument(
        "--sanity-independent", action="store_true",
        help="also randomise each layer alone (Adebayo et al.'s independent test; as many explanations again)",
    )  # fmt: skip
    parser.add_argument("--no-plots", action="store_true", help="write no PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--html", action="store_true", help="also write OUT/report.html (table, curves, examples)")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise CLIError(f"--{name} must be >= 1; got {value}")


def _load(args: argparse.Namespace):
    from ..evaluation.synthetic import load_synthetic_model

    if args.model is None and args.synthetic:
        if args.weights:
            raise CLIError("--weights needs --model (the synthetic CNN uses its shipped weights)")
        return load_synthetic_model()
    check_file(args.weights, "--weights")
    check_file(args.labels, "--labels")
    try:
        return load_model(args.model or DEFAULT_MODEL, weights=args.weights, device="cpu", labels=args.labels)
    except ModelLoadError as error:
        raise CLIError(error_message(error, args)) from None


def run(args: argparse.Namespace) -> int:
    from ..evaluation import TASKS, EvaluationSettings, evaluate, load_annotated_folder, synthetic_items
    from ..evaluation.report import describe, format_table, write_report

    if args.task == "adversarial":
        from ._adversarial import run_adversarial

        return run_adversarial(args)
    from ._adversarial import reject_adversarial_options

    reject_adversarial_options(args)
    defaults = SYNTHETIC_DEFAULTS if args.synthetic else FOLDER_DEFAULTS
    if args.figure_images < 0:
        raise CLIError(f"--figure-images must be >= 0; got {args.figure_images}")
    for name in ("images", "top_k", "faithfulness_images", "step", "batch_size", "patch", "stride", "sanity_images"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.synthetic and args.path:
        raise CLIError("give either IMAGES (a folder) or --synthetic, not both")
    if not args.synthetic and not args.path:
        raise CLIError("give a folder of images with .xml annotations, or --synthetic")
    if args.annotations is not None and not Path(args.annotations).is_dir():
        raise CLIError(f"--annotations {args.annotations} is not a folder; expected the folder of the .xml files")
    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must be a fraction in [0, 1]; got {args.threshold}")
    if not 0.0 < args.iou <= 1.0:
        raise CLIError(f"--iou must be in (0, 1]; got {args.iou}")
    for option in ("road_images", "robustness_samples", "robustness_images"):
        if getattr(args, option) < 0:
            raise CLIError(f"--{option.replace('_', '-')} must be >= 0; got {getattr(args, option)}")
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0; got {args.seed}")
    if not math.isfinite(args.fill):
        raise CLIError(f"--fill must be a finite number; got {args.fill}")
    tolerance = defaults["tolerance"] if args.tolerance is None else args.tolerance
    if not tolerance >= 0:  # NaN too
        raise CLIError(f"--tolerance must be >= 0 pixels; got {tolerance}")
    check_out_folder(args.out)
    device = resolve_device(args.device)
    loaded = _load(args)
    if args.layer is not None:
        from ..layers import resolve_layer

        resolve_layer(loaded.model, args.layer)  # LayerError naming close matches: a bad --layer is a usage error
    count = args.images if args.images is not None else defaults["images"]
    if args.synthetic:
        items = synthetic_items(count, seed=args.seed)
    else:
        try:
            items = load_annotated_folder(args.path, args.annotations, loaded.labels, origin=args.origin, limit=count)
        except (ValueError, FileNotFoundError) as error:
            raise CLIError(str(error)) from None
    from ..evaluation.localization import SWEEP
    from ..evaluation.sources import BASELINES

    settings = EvaluationSettings(
        tasks=TASKS if args.task == "all" else (args.task,),
        methods=tuple(dict.fromkeys(args.method)) if args.method else None,
        baselines=() if args.no_baselines else BASELINES,
        layer=args.layer,
        threshold=args.threshold,
        iou=args.iou,
        connectivity=args.connectivity,
        top_k=args.top_k or defaults["top_k"],
        sweep=() if args.no_sweep else SWEEP,
        tolerance=tolerance,
        step=args.step or defaults["step"],
        deletion_baseline=args.deletion_baseline,
        insertion_baseline=args.insertion_baseline,
        score=args.score,
        occlusion=args.occlusion,
        patch=args.patch,
        stride=args.stride,
        fill=args.fill,
        batch_size=args.batch_size,
        faithfulness_images=args.faithfulness_images or defaults["faithfulness_images"],
        road=not args.no_road and args.road_images > 0,
        road_images=args.road_images,
        robustness_samples=args.robustness_samples,
        robustness_images=args.robustness_images,
        figure_images=args.figure_images,
        sanity_images=args.sanity_images,
        sanity_modes=("cascading", "independent") if args.sanity_independent else ("cascading",),
    )

    def report(line: str) -> None:
        print(f"gradcam evaluate: {line}", file=sys.stderr)

    from ..batch.distributed import distributed_rank
    from ..errors import GradCAMError

    out = Path(args.out)
    try:
        result = evaluate(
            loaded, items, settings, device=device, progress=not args.quiet and sys.stderr.isatty(), report=report,
            resume=out / "partial", overwrite=args.overwrite,
        )  # fmt: skip
    except (GradCAMError, ValueError) as error:
        raise CLIError(str(error)) from None
    failed = {m.name: m.error for m in result.methods if m.error and not m.is_baseline}
    if failed and not any(not m.error and not m.is_baseline for m in result.methods):
        reasons = "; ".join(f"{name}: {error.splitlines()[0]}" for name, error in failed.items())
        raise RunError(f"no method could be evaluated ({reasons})")
    if distributed_rank()[0] != 0:  # under torchrun, rank 0 writes and reports for everyone
        return 0
    written = write_report(result, out, plots=not args.no_plots)
    print(describe(result))
    print()
    print(format_table(result))
    print()
    print(
        f"{result.evaluated_images} images evaluated, {result.reused_images} reused from {out / 'partial'}/; "
        f"per-image and per-method CSV/JSON, figures and examples in {out}/ ({len(written)} files)"
    )
    if args.html:
        from .report import write_html

        write_html(out)
    requested = [name for name in failed if args.method and name in args.method]
    if failed:
        listed = ", ".join(f"{name} ({error.splitlines()[0]})" for name, error in failed.items())
        if requested:  # the table of the others is written; the user asked for these
            raise RunError(f"not evaluated: {listed}")
        print(f"gradcam evaluate: default methods not evaluated with {loaded.name}: {listed}", file=sys.stderr)
    return 0
