"""``gradcam explain PATH...``: maps, overlays and panels for image files.

``--task`` chooses the explained scalar (default: what the model's output calls for; ``class`` for
classifiers, the paper's logit ``y^c``): ``probability``, ``segmentation --class C [--mask M.npy]``,
``detection [--detection N | --box x0,y0,x1,y1]``, ``similarity --embedding E.npy | --text PROMPT``.
Boxes and masks are in original image pixels.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TextIO

from ..assets import sample_names, sample_path
from ..batch.distributed import distributed_rank
from ..batch.explainers import as_detector
from ..batch.loop import default_pipeline, explain_files
from ..batch.settings import (
    CLASS_TASKS,
    DEFAULT_OUTPUTS,
    DEFAULT_TASK,
    JPEG_QUALITY,
    OUTPUT_KINDS,
    PICTURE_FORMATS,
    ExplainSettings,
    TaskOptions,
    valid_outputs,
)
from ..imaging.draw import available_colormaps
from ..imaging.io import IMAGE_EXTENSIONS, find_images
from ..methods import METHODS
from ..models import LoadedModel
from ._common import (
    CLIError,
    RunError,
    add_model_arguments,
    check_out_folder,
    load_or_exit,
    parse_class,
    parse_targets,
    resolve_device,
)
from .targets import TASKS

COMMAND = "explain"
HELP = "explain the predictions of a model on image files, folders or globs"
EPILOG = "Exit code 1 when an image failed (the others are written, and a rerun resumes)."
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
    task = parser.add_argument_group("task targets (what y is; boxes and masks in original image pixels)")
    task.add_argument(
        "--task",
        choices=list(TASKS),
        help="the explained scalar (default: class for classifiers, detection for detectors, segmentation "
        "for segmentation models, similarity for image-text models)",
    )
    task.add_argument("--class", dest="category", metavar="N|NAME", help="segmentation: the class to explain")
    task.add_argument("--mask", metavar="FILE.npy", help="segmentation: the region, an (H, W) array of the image")
    task.add_argument("--detection", type=int, metavar="N", help="detection: explain detection N (0: most confident)")
    task.add_argument("--box", metavar="x0,y0,x1,y1", help="detection: explain the detection best matching this box")
    task.add_argument("--iou-threshold", type=float, metavar="T", help="detection: least IoU with --box (default 0.5)")
    task.add_argument("--box-weight", type=float, metavar="W", help="detection: y = score + W * IoU(box, --box)")
    task.add_argument("--embedding", metavar="FILE.npy", help="similarity: reference embedding(s), (D,) or (k, D)")
    task.add_argument(
        "--text", action="append", metavar="PROMPT", help="similarity: a text prompt for CLIP-style models (repeatable)"
    )
    parser.add_argument(
        "--method",
        action="append",
        choices=[*METHODS, "dff"],
        help=f"method (repeatable; default: {', '.join(DEFAULT_METHODS)}; dff: Deep Feature Factorization "
        "concepts, one picture per image)",
    )
    parser.add_argument(
        "--concepts",
        type=int,
        metavar="N",
        help="dff: N concepts per image (default 4; implies --method dff), each named by its max(3, --top-k) best "
        "classes",
    )
    parser.add_argument("--out", default="gradcam-out", metavar="DIR", help="output folder (default gradcam-out)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image decoding processes (default on a GPU: every core but 3, up to 16; 0 on the CPU: threads "
        "between model steps)",
    )
    parser.add_argument(
        "--writers",
        type=int,
        default=None,
        help="threads drawing and writing outputs (default 2 on a GPU; 0 = one per torch thread, the CPU default)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    parser.add_argument("--colormap", default="jet", choices=available_colormaps())
    parser.add_argument(
        "--outputs",
        default=",".join(DEFAULT_OUTPUTS),
        metavar="KINDS",
        help=f"files to write per image and class, comma-separated from {','.join(OUTPUT_KINDS)} (default: "
        f"{','.join(DEFAULT_OUTPUTS)}; raw: the method's map before upsampling, e.g. 7 x 7 floats)",
    )
    parser.add_argument(
        "--picture-format",
        default="png",
        choices=PICTURE_FORMATS,
        help=f"overlays and panels as PNG (lossless, default) or JPEG (quality {JPEG_QUALITY}: smaller, "
        "faster to write)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo items that are already done")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-image lines")
    parser.add_argument("--html", action="store_true", help="also write OUT/report.html to browse the outputs")


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1]; got {args.alpha}")
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1; got {args.top_k}")
    if args.concepts is not None and args.concepts < 1:
        raise CLIError(f"--concepts must be >= 1; got {args.concepts}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1; got {args.batch_size}")
    for option, value in (("--workers", args.workers), ("--writers", args.writers)):
        if value is not None and value < 0:
            raise CLIError(f"{option} must be >= 0 (0: threads in this process); got {value}")
    check_out_folder(args.out)
    outputs = tuple(dict.fromkeys(kind.strip() for kind in args.outputs.split(",") if kind.strip()))
    if not valid_outputs(outputs):
        raise CLIError(f"--outputs takes a comma-separated subset of {','.join(OUTPUT_KINDS)}; got {args.outputs!r}")
    if not args.paths and not args.samples:
        raise CLIError("give image files, folders or globs (or --samples for the bundled photos)")
    try:
        paths = find_images(args.paths, exclude=args.out) if args.paths else []
        if args.paths and not paths:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise CLIError(f"no image files in {', '.join(args.paths)} (looked for {extensions})")
    except FileNotFoundError as error:
        raise CLIError(str(error)) from None
    if args.samples:
        paths += [sample_path(name) for name in sample_names()]
    device = resolve_device(args.device)
    loaded = load_or_exit(args)
    task = task_options(args, loaded)
    if loaded.labels is not None and args.top_k > len(loaded.labels):
        raise CLIError(f"--top-k {args.top_k} asks for more classes than {loaded.name} has ({len(loaded.labels)})")
    requested = tuple(dict.fromkeys(args.method or ()))
    concepts = "dff" in requested or args.concepts is not None
    methods = tuple(m for m in requested if m != "dff") or (() if concepts else DEFAULT_METHODS)
    if concepts and loaded.task != "classification":
        raise CLIError(f"--method dff names concepts with a classifier head; {loaded.name} is a {loaded.task} model")
    settings = ExplainSettings(
        methods=methods or DEFAULT_METHODS,
        targets=parse_targets(args.target, loaded),
        top_k=args.top_k,
        alpha=args.alpha,
        colormap=args.colormap,
        layer=args.layer,
        task=task,
        outputs=outputs,
        picture_format=args.picture_format,
    )
    default_workers, default_writers = default_pipeline(device, len(paths))
    workers = default_workers if args.workers is None else args.workers
    writers = default_writers if args.writers is None else args.writers
    out = Path(args.out)

    def report(line: str, is_error: bool) -> None:
        if is_error:
            _print(line, sys.stderr)
        elif not args.quiet:
            _print(line)

    from ..errors import GradCAMError

    if concepts:
        _explain_concepts(args, paths, loaded, device, report)
        if not methods:
            return 0
    try:
        summary = explain_files(
            paths,
            loaded,
            settings,
            out,
            batch_size=args.batch_size,
            device=device,
            workers=workers,
            writers=writers,
            overwrite=args.overwrite,
            progress=not args.quiet and sys.stderr.isatty(),
            report=report,
        )
    except (GradCAMError, ValueError) as error:
        raise CLIError(str(error)) from None
    except OSError as error:  # the outputs could not be written: a full disk, a read-only folder, ...
        raise RunError(
            f"cannot write the outputs under {out}: {error}; the items written before it are kept, and a rerun resumes"
        ) from None
    if distributed_rank()[0] != 0:  # under torchrun, rank 0 reports for everyone
        return 1 if summary.failed else 0
    _print(
        f"{summary.done} explained, {summary.skipped} already done, {summary.failed} failed "
        f"in {summary.seconds:.1f} s; model {loaded.name}, layer {summary.layer}"
    )
    if summary.items:
        first = summary.items[0]["outputs"][0]
        example = next((first[kind] for kind in OUTPUT_KINDS if first.get(kind)), None)
        _print(f"{', '.join(settings.outputs)} files in {out}/ (e.g. {example}); index: {out / 'manifest.json'}")
    if args.html:  # before the exit code of failed items: the page lists them
        from .report import write_html

        write_html(out)
    if summary.failed:
        others = "; the others are written" if summary.failed < len(paths) else ""
        raise RunError(f"{summary.failed} of {len(paths)} images failed (the lines above say why){others}")
    return 0


def _explain_concepts(args: argparse.Namespace, paths: list[Path], loaded: LoadedModel, device, report) -> None:
    """The dff pictures, maps and records of every image (:mod:`gradcam.batch.concepts`)."""
    from ..batch.concepts import ConceptSettings, explain_concepts
    from ..errors import GradCAMError

    settings = ConceptSettings(n_components=args.concepts or 4, top_k=max(args.top_k, 3), layer=args.layer)
    try:
        index = explain_concepts(paths, loaded, settings, Path(args.out), device=device, report=report)
    except GradCAMError as error:
        raise CLIError(str(error)) from None
    except OSError as error:
        raise RunError(f"cannot write the concept outputs under {args.out}: {error}") from None
    done, failed = len(index["items"]), len(index["failed"])
    images = f"{done} image{'' if done == 1 else 's'}"
    _print(f"dff: {images}, {settings.n_components} concepts each, in {args.out}/ (index: concepts.json)")
    if failed:
        raise RunError(f"dff: {failed} of {len(paths)} images failed (the lines above say why)")


def parse_box(value: str) -> tuple[float, float, float, float]:
    """``--box x0,y0,x1,y1`` as 4 floats with x1 > x0 and y1 > y0 (CLIError otherwise)."""
    try:
        numbers = [float(v) for v in value.replace(" ", ",").split(",") if v]
    except ValueError:
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise CLIError(f"--box must be x0,y0,x1,y1 (4 numbers, original image pixels); got {value!r}")
    x0, y0, x1, y1 = numbers
    if x1 <= x0 or y1 <= y0:
        raise CLIError(f"--box must have x1 > x0 and y1 > y0; got {value!r}")
    return x0, y0, x1, y1


def task_options(args: argparse.Namespace, loaded: LoadedModel) -> TaskOptions:
    """The task options from the command line, checked against each other (CLIError naming the option)."""
    kind = "detection" if as_detector(loaded.model) is not loaded.model else loaded.task
    task = args.task or DEFAULT_TASK.get(kind, "class")
    owners = {
        "--class": ("segmentation", args.category),
        "--mask": ("segmentation", args.mask),
        "--detection": ("detection", args.detection),
        "--box": ("detection", args.box),
        "--iou-threshold": ("detection", args.iou_threshold),
        "--box-weight": ("detection", args.box_weight),
        "--embedding": ("similarity", args.embedding),
        "--text": ("similarity", args.text),
    }
    for option, (owner, value) in owners.items():
        if value is not None and task != owner:
            hint = "; for classifiers use --target" if option == "--class" else ""
            raise CLIError(f"{option} applies to --task {owner}, not --task {task}{hint}")
    if task not in CLASS_TASKS and (args.target or args.top_k != 1):
        option = "--target" if args.target else "--top-k"
        hint = " (use --class)" if task == "segmentation" else ""
        raise CLIError(f"{option} applies to the class tasks ({', '.join(CLASS_TASKS)}), not --task {task}{hint}")
    options: dict = {"name": task}
    if task == "segmentation":
        if args.category is None:
            raise CLIError("--task segmentation needs a class (--class INDEX or NAME)")
        options["category"] = parse_class(args.category, loaded, "--class")
        options["mask"] = args.mask
    elif task == "detection":
        if args.box is not None and args.detection is not None:
            raise CLIError("give --box or --detection, not both")
        if args.detection is not None and args.detection < 0:
            raise CLIError(f"--detection must be >= 0 (0 is the most confident detection); got {args.detection}")
        if args.box is None:
            for option, value in (("--iou-threshold", args.iou_threshold), ("--box-weight", args.box_weight)):
                if value is not None:
                    raise CLIError(f"{option} needs --box (it compares the detections with that box)")
        else:
            options["box"] = parse_box(args.box)
            threshold = 0.5 if args.iou_threshold is None else args.iou_threshold
            if not 0.0 <= threshold <= 1.0:
                raise CLIError(f"--iou-threshold must be in [0, 1]; got {threshold}")
            options["iou_threshold"] = threshold
            options["box_weight"] = 0.0 if args.box_weight is None else args.box_weight
            if not math.isfinite(options["box_weight"]):
                raise CLIError(f"--box-weight must be a finite number; got {args.box_weight}")
        options["detection"] = args.detection
    elif task == "similarity":
        if args.embedding is None and not args.text:
            raise CLIError("--task similarity needs a reference: --embedding FILE.npy, or --text PROMPT (CLIP models)")
        if args.embedding is not None and args.text:
            raise CLIError("give --embedding or --text as the reference, not both")
        if args.embedding is not None and not Path(args.embedding).is_file():
            raise CLIError(f"--embedding file not found: {args.embedding}")
        options["embedding"] = args.embedding
        options["texts"] = tuple(args.text or ())
    if args.mask is not None and not Path(args.mask).is_file():
        raise CLIError(f"--mask file not found: {args.mask}")
    if task == "detection" and kind != "detection":
        raise CLIError(f"--task detection needs a detection model; {loaded.name} is a {kind} model")
    return TaskOptions(**options)


def _write(line: str, stream) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=stream)


def _print(line: str, stream: TextIO | None = None) -> None:
    """Print a line on ``stream`` (stdout by default); once it is a closed pipe (``gradcam explain DIR |
    head -2``), print nothing more there: the job goes on, its outputs are written and its exit code is
    unchanged."""
    stream = sys.stdout if stream is None else stream
    if stream is None:
        return
    try:
        _write(line, stream)
        stream.flush()
    except BrokenPipeError:
        # Python flushes the stream again at exit: point it at /dev/null, as the signal module's docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
