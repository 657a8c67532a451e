"""Run every method and baseline over annotated images and collect the metrics (what ``gradcam evaluate`` does).

Per batch: one forward pass for the predictions; then, for each map source, ONE call that explains
the top-k predicted classes (ILSVRC localization; faithfulness uses the top-1 map) followed by the
ground-truth classes present (box accuracy, pointing, energy: classification errors cannot hide
localization, and two-object images test class discrimination). Occlusion maps, when asked for, are
computed once per batch and shared by every source. Each source's call is timed against a plain
``torch.inference_mode()`` forward pass of the same batch measured just before it, so the table can give
its cost in forward passes (the median ratio over the batches after the first).

Scale-out and resume. The images are cut into batches of ``batch_size`` (image ``i`` is in the batch
starting at ``batch_size * floor(i / batch_size)`` whatever the number of processes). Each batch
gives a :class:`BatchPart`: fresh metric objects that saw only that batch, its per-image rows, its
figure maps and timings. Under ``torchrun`` each rank evaluates the batches ``pending[rank::world]``
and the parts are gathered to every rank; with ``resume`` each part is also written atomically to
``resume/batch-<first>.pkl`` and reused by a rerun with the same settings and images. The summary is
always made the same way, by merging the parts in batch order (:meth:`.state.Mergeable.merge`), so a
sharded or resumed run gives exactly the numbers of one uninterrupted process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..capture import model_guard
from ..errors import GradCAMError
from ..imaging.geometry import Geometry, preprocess_batch
from ..imaging.io import write_bytes_atomic
from ..jobs.distributed import all_gather, distributed_rank, rank_device
from ..models import LoadedModel
from ..targets import select_output
from .datasets import AnnotatedImage
from .faithfulness import ConfidenceChange, DeletionInsertion, OcclusionCorrelation
from .localization import SWEEP, BoxAccuracy, BoxEnergy, LocalizationError, PointingGame, boxes_to_original
from .regions import map_to_box
from .sources import BASELINES, MapSource, make_sources, title

logger = logging.getLogger("gradcam")

TASKS = ("localization", "pointing", "faithfulness")
PART_VERSION = 1  # bump when BatchPart changes: older partial files are then recomputed


@dataclass(frozen=True)
class EvaluationSettings:
    """What to measure and how (defaults: the published protocols)."""

    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] | None = None  # None: every registered method + the input gradient
    baselines: tuple[str, ...] = BASELINES
    layer: str | None = None
    threshold: float = 0.15  # localization: fraction of the map's max
    iou: float = 0.5
    connectivity: int = 8
    top_k: int = 5
    sweep: tuple[float, ...] = SWEEP  # MaxBoxAcc over these thresholds (Choe et al. 2020); () to skip
    tolerance: float = 15.0  # pointing, original-image pixels
    step: int | None = None  # deletion/insertion pixels per step (None: one image row)
    deletion_baseline: str = "zero"
    insertion_baseline: str = "blur"
    score: str = "probability"
    occlusion: bool = False
    patch: int = 32
    stride: int = 16
    fill: float = 0.0
    batch_size: int = 16
    curve_batch_size: int = 128
    faithfulness_images: int | None = None  # faithfulness on the first N images only (None: all)
    seed: int = 0
    figure_images: int = 4  # images in the every-method figure: half with one class, half with several

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}; got {self.tasks}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.figure_images < 0:
            raise ValueError(f"figure_images must be >= 0; got {self.figure_images}")


@dataclass
class Example:
    """One map kept for the best/worst-case figures (``image`` is loaded when the run is summarised)."""

    name: str
    index: int  # of the image in the run
    geometry: Geometry
    heatmap: torch.Tensor  # (H, W) in the input frame, CPU
    box: list[float]  # predicted, original pixels
    truths: list[list[float]]  # ground-truth boxes of the class, original pixels
    cls: int
    iou: float
    image: Image.Image | None = None


@dataclass
class FigureRow:
    """One row of the every-method figure: an image, one class, and every source's map of that class."""

    index: int  # of the image in the run
    name: str
    cls: int
    several: bool  # the image holds objects of several classes
    geometry: Geometry
    maps: dict[str, torch.Tensor]  # source name -> (H, W) map in the input frame, CPU
    image: Image.Image | None = None


@dataclass(frozen=True)
class Timing:
    """One batch's timing of one source: its whole call and a plain forward pass just before it."""

    forward: float  # seconds, ``model(x)`` under ``torch.inference_mode()``
    call: float  # seconds, ``source.maps(x, targets)`` (explanation, upsampling, normalisation)
    warm: bool  # False for the first batch a process evaluates (the warm-up)


@dataclass
class MethodResult:
    """One method's (or baseline's) summary over the whole run."""

    name: str
    title: str
    is_baseline: bool
    layer: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class EvaluationResult:
    """Everything one run measured."""

    model: str
    settings: EvaluationSettings
    methods: list[MethodResult]
    per_image: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]]
    examples: dict[str, dict[str, Example]]
    classification: dict[str, Any]
    images: int
    seconds: float
    labels: list[str] | None = None
    figure: list[FigureRow] = field(default_factory=list)
    evaluated_images: int = 0  # by this run (all ranks); the rest came from partial results
    reused_images: int = 0
    world: int = 1

    def row(self, name: str) -> MethodResult:
        for result in self.methods:
            if result.name == name:
                return result
        raise KeyError(name)


class _Metrics:
    """The metric objects of one source."""

    NAMES = ("localization", "boxes", "pointing", "energy", "curves", "confidence", "occlusion")

    def __init__(self, settings: EvaluationSettings, loaded: LoadedModel) -> None:
        s = settings
        self.localization = LocalizationError(s.threshold, s.iou, s.connectivity)
        self.boxes = BoxAccuracy(s.threshold, s.iou, s.connectivity, s.sweep)
        self.pointing = PointingGame(s.tolerance)
        self.energy = BoxEnergy()
        self.curves = DeletionInsertion(
            s.step, s.deletion_baseline, s.insertion_baseline, s.score, batch_size=s.curve_batch_size, seed=s.seed
        )
        pre = loaded.preprocess
        self.confidence = ConfidenceChange(pre.mean, pre.std, s.score, batch_size=s.curve_batch_size)
        self.occlusion = OcclusionCorrelation(s.patch, s.stride, s.fill, s.score, batch_size=s.curve_batch_size)

    def merge(self, other: _Metrics) -> _Metrics:
        """Append another batch's state, metric by metric (see :mod:`.state`)."""
        for name in self.NAMES:
            getattr(self, name).merge(getattr(other, name))
        return self

    def summary(self, tasks: Sequence[str], occlusion: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "localization" in tasks:
            loc = self.localization.summary()
            k = loc["k"]
            out.update(
                {
                    "top1_loc_error": loc["top1_loc_error"],
                    "topk_loc_error": loc[f"top{k}_loc_error"],
                    "top1_cls_error": loc["top1_cls_error"],
                    "topk_cls_error": loc[f"top{k}_cls_error"],
                    "k": k,
                }
            )
        if "localization" in tasks or "pointing" in tasks:
            boxes = self.boxes.summary()
            pointing = self.pointing.summary()
            energy = self.energy.summary()
            out.update(
                {
                    "box_accuracy": boxes["accuracy"],
                    "mean_iou": boxes["mean_iou"],
                    "pointing": pointing["accuracy"],
                    "pointing_overall": pointing["overall"],
                    "pointing_two_object": pointing["multi_class_accuracy"],
                    "points_at_other": pointing["confusion"],
                    "energy": energy["energy"],
                    "in_out_ratio": energy["ratio"],
                    "box_accuracy_two_object": boxes["multi_class_accuracy"],
                    "max_box_accuracy": boxes.get("max_accuracy"),
                    "best_threshold": boxes.get("best_threshold"),
                    "box_accuracy_by_threshold": boxes.get("accuracy_by_threshold"),
                }
            )
        if "faithfulness" in tasks:
            curves = self.curves.summary()
            confidence = self.confidence.summary()
            out.update(
                {
                    "deletion_auc": curves["deletion_auc"],
                    "insertion_auc": curves["insertion_auc"],
                    "average_drop": confidence["average_drop"],
                    "increase_in_confidence": confidence["increase_in_confidence"],
                }
            )
            if occlusion:
                out["rank_correlation"] = self.occlusion.summary()["rank_correlation"]
        return {key: value for key, value in out.items() if value is not None}


@dataclass
class BatchPart:
    """What one batch contributed to the run; picklable, CPU only (see the module docstring)."""

    first: int  # index of the batch's first image
    names: list[str]  # the batch's image names
    key: str  # the run's settings (:func:`run_key`): a part is reused only by a run with the same key
    k: int
    hits: dict[str, int]
    metrics: dict[str, _Metrics]
    rows: dict[tuple[int, str], dict[str, Any]]
    examples: dict[str, dict[str, Example]]  # new best / worst of the evaluating process, per source
    figure: list[FigureRow]
    timings: dict[str, Timing]
    failures: dict[str, str]  # sources that raised on this batch
    version: int = PART_VERSION


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _ground_truth_targets(truths: Sequence[Sequence[tuple[int, Any]]], device: torch.device) -> torch.Tensor:
    """(B, g) distinct classes present in each image, padded with -1."""
    present = [list(dict.fromkeys(int(c) for c, _ in truth)) for truth in truths]
    width = max(len(p) for p in present)
    return torch.tensor([p + [-1] * (width - len(p)) for p in present], dtype=torch.long, device=device)


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with model_guard(model), torch.no_grad():
        logits = select_output(model(x)).float()
    if logits.dim() != 2:
        raise ValueError(f"evaluation needs a classifier giving (B, num_classes) scores; got {tuple(logits.shape)}")
    return logits


def _own_copy(view: torch.Tensor) -> torch.Tensor:
    """A float CPU copy with its own storage (a pickled view would carry the whole batch's maps)."""
    return view.detach().to("cpu", torch.float32, copy=True).contiguous()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(function(), seconds)``, waiting for queued accelerator work on both sides."""
    _synchronize(device)
    start = time.perf_counter()
    value = function()
    _synchronize(device)
    return value, time.perf_counter() - start


def _plain_forward_seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one ``torch.inference_mode()`` forward pass of ``x`` (the unit of the cost column)."""
    with model_guard(model), torch.inference_mode():
        return _timed(lambda: model(x), x.device)[1]


def cost(timings: Sequence[Timing]) -> dict[str, float]:
    """``cost = median_b(call_b / forward_b)`` over the warm batches (all batches when none is warm), with
    ``cost_seconds`` the median call time per batch and ``cost_batches`` the number of batches used."""
    used = [t for t in timings if t.warm] or list(timings)
    if not used:
        return {}
    return {
        "cost": statistics.median(t.call / max(t.forward, 1e-9) for t in used),
        "cost_seconds": statistics.median(t.call for t in used),
        "cost_batches": len(used),
    }


def figure_selection(items: Sequence[AnnotatedImage], count: int) -> list[int]:
    """Indices of the figure's images: the first ``ceil(count / 2)`` holding one class and the first
    ``floor(count / 2)`` holding several, topped up with the next images when one kind runs short."""
    several = [i for i, item in enumerate(items) if len({c for c, _ in item.objects}) > 1]
    taken = set(several[: count // 2])
    singles = [i for i in range(len(items)) if i not in taken and i not in several]
    chosen = taken | set(singles[: count - len(taken)])
    rest = [i for i in range(len(items)) if i not in chosen]
    return sorted(chosen | set(rest[: max(0, count - len(chosen))]))


def run_key(loaded: LoadedModel, settings: EvaluationSettings, layer: Any, sources: Sequence[str]) -> str:
    """What a partial result must have been made with to be reused (JSON text): the model's name and a
    fingerprint of its weights (``sum_p sum |p|`` and the parameter count), the layer, the sources and the
    settings. Images are matched by name, batch by batch (:meth:`PartStore.load`)."""
    layer_name = layer if isinstance(layer, str) or layer is None else type(layer).__name__
    with torch.no_grad():
        parameters = list(loaded.model.parameters())
        total = float(sum(p.detach().cpu().double().abs().sum() for p in parameters))
        weights = [sum(p.numel() for p in parameters), total]
    data = {"model": loaded.name, "weights": weights, "layer": layer_name, "sources": list(sources),
            "settings": asdict(settings)}  # fmt: skip
    return json.dumps(data, sort_keys=True, default=str)


class PartStore:
    """Partial results of one run in ``folder``: ``batch-<first>.pkl``, written atomically (temp + rename).

    The files are pickles this library wrote; only point ``folder`` at output folders you trust.
    """

    def __init__(self, folder: str | os.PathLike[str], key: str) -> None:
        self.folder = Path(folder)
        self.key = key

    def path(self, first: int) -> Path:
        return self.folder / f"batch-{first:08d}.pkl"

    def load(self, first: int, names: Sequence[str]) -> BatchPart | None:
        """The stored part of the batch starting at ``first`` if it was made with this key and these images."""
        try:
            part = pickle.loads(self.path(first).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
            return None
        if not isinstance(part, BatchPart) or part.version != PART_VERSION:
            return None
        return part if part.key == self.key and part.first == first and part.names == list(names) else None

    def save(self, part: BatchPart) -> Path:
        return write_bytes_atomic(self.path(part.first), pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass
class _Run:
    """What every batch of one process shares."""

    loaded: LoadedModel
    model: torch.nn.Module
    settings: EvaluationSettings
    sources: list[MapSource]  # a source that raises is dropped for this process's later batches
    key: str
    figure: set[int]
    device: torch.device
    kept: dict[str, dict[str, Example]] = field(default_factory=lambda: defaultdict(dict))  # running best/worst
    batches_done: int = 0


def evaluate(
    loaded: LoadedModel,
    items: Sequence[AnnotatedImage],
    settings: EvaluationSettings | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    report: Callable[[str], None] | None = None,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Evaluate every source on ``items`` (see the module docstring); returns an :class:`EvaluationResult`.

    ``resume``: a folder for per-batch partial results; batches already there (same settings, same
    images) are reused unless ``overwrite``, new ones are written. Under ``torchrun`` every rank returns
    the merged result.
    """
    settings = settings or EvaluationSettings()
    if not items:
        raise ValueError("items is empty: nothing to evaluate")
    start = time.perf_counter()
    rank, world = distributed_rank()
    device = rank_device(torch.device(device), rank, world)
    model = loaded.model.to(device)
    report = report if report is not None and rank == 0 else (lambda line: None)
    layer = settings.layer or loaded.default_layer
    sources, failures = make_sources(model, settings.methods, settings.baselines, layer, settings.seed)
    for name, reason in failures.items():
        report(f"{name}: not evaluated ({reason})")
    order = [source.name for source in sources]
    key = run_key(loaded, settings, layer, order)
    store = PartStore(resume, key) if resume is not None else None
    firsts = list(range(0, len(items), settings.batch_size))
    batch_items = {first: items[first : first + settings.batch_size] for first in firsts}
    reused: dict[int, BatchPart] = {}
    if store is not None and not overwrite:
        for first in firsts:
            part = store.load(first, [item.name for item in batch_items[first]])
            if part is not None:
                reused[first] = part
    # every rank has read the partial results before any rank writes new ones, and all agree on them
    agreed = set.intersection(*[set(found) for found in all_gather(sorted(reused))])
    reused = {first: part for first, part in reused.items() if first in agreed}
    pending = [first for first in firsts if first not in reused]
    mine = pending[rank::world]
    run = _Run(
        loaded, model, settings, list(sources), key, set(figure_selection(items, settings.figure_images)), device
    )
    from tqdm.auto import tqdm

    parts: list[BatchPart] = []
    bar = tqdm(total=sum(len(batch_items[f]) for f in mine), unit="img", disable=not progress or rank != 0, leave=False)
    try:
        for first in mine:
            part = _evaluate_batch(run, first, batch_items[first], report)
            if store is not None:
                store.save(part)
            parts.append(part)
            bar.update(len(batch_items[first]))
    finally:
        bar.close()
    if world > 1:
        parts = [part for gathered in all_gather(parts) for part in gathered]
    evaluated = sum(len(part.names) for part in parts)
    result = _combine(loaded, items, settings, order, failures, [*reused.values(), *parts], sources)
    result.seconds = time.perf_counter() - start
    result.evaluated_images, result.reused_images, result.world = evaluated, len(items) - evaluated, world
    return result


def _evaluate_batch(run: _Run, first: int, batch: Sequence[AnnotatedImage], report: Callable[[str], None]) -> BatchPart:
    """Evaluate one batch with every live source; the batch's state goes into a fresh :class:`BatchPart`."""
    settings, model, device = run.settings, run.model, run.device
    tasks = settings.tasks
    need_truth = "localization" in tasks or "pointing" in tasks
    images = [item.load() for item in batch]
    x, geometries = preprocess_batch(images, run.loaded.preprocess)
    x = x.to(device)
    truths = [item.objects_for(image.size) for item, image in zip(batch, images)]
    logits = _predict(model, x)
    k = min(settings.top_k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    explained = top if "localization" in tasks else top[:, :1] if "faithfulness" in tasks else top[:, :0]
    hits = {"top1": 0, "topk": 0}
    for b, truth in enumerate(truths):
        present = {c for c, _ in truth}
        hits["top1"] += int(int(top[b, 0]) in present)
        hits["topk"] += int(bool(present & set(top[b].tolist())))
    truth_classes = _ground_truth_targets(truths, device)
    truth_targets = torch.where(truth_classes < 0, truth_classes[:, :1], truth_classes)
    # one call per source: the predicted classes, then the ground-truth classes
    targets = torch.cat([explained, truth_targets if need_truth else truth_targets[:, :0]], dim=1)
    split = explained.shape[1]
    faithful = "faithfulness" in tasks and (
        settings.faithfulness_images is None or first < settings.faithfulness_images
    )
    keep = len(batch)
    if faithful and settings.faithfulness_images is not None:
        keep = min(len(batch), settings.faithfulness_images - first)
    occlusion = None
    if faithful and settings.occlusion:  # computed once per batch, shared by every source
        occlusion = _Metrics(settings, run.loaded).occlusion.occlusion(model, x[:keep], top[:keep, 0])
    part = BatchPart(
        first=first, names=[item.name for item in batch], key=run.key, k=k, hits=hits, metrics={}, rows={},
        examples={}, figure=_figure_rows(run, first, batch, geometries, truths, targets), timings={}, failures={},
    )  # fmt: skip
    warm = run.batches_done > 0
    for source in list(run.sources):
        forward = _plain_forward_seconds(model, x)
        try:
            maps, seconds = _timed(lambda source=source: source.maps(x, targets, first), device)
        except (GradCAMError, RuntimeError) as error:
            part.failures[source.name] = f"{type(error).__name__}: {error}"
            report(f"{source.name}: stopped ({part.failures[source.name]})")
            run.sources.remove(source)
            continue
        part.timings[source.name] = Timing(forward, seconds, warm)
        m = part.metrics[source.name] = _Metrics(settings, run.loaded)
        top_maps = maps[:, :split] if split else None
        truth_maps = maps[:, split:] if need_truth else None
        _update(
            m, source, settings, model, x, explained, top_maps, truth_classes, truth_maps, truths, geometries,
            faithful, keep, occlusion, first, batch, part.rows,
        )  # fmt: skip
        if truth_maps is not None:
            before = dict(run.kept[source.name])
            _keep_examples(source, truth_maps, truth_classes, truths, geometries, batch, first, m, settings, run.kept)
            changed = {kind: ex for kind, ex in run.kept[source.name].items() if before.get(kind) is not ex}
            if changed:
                part.examples[source.name] = changed
        for row in part.figure:
            j = int((targets[row.index - first] == row.cls).nonzero()[0, 0])
            row.maps[source.name] = _own_copy(maps[row.index - first, j])
    run.batches_done += 1
    return part


def _figure_rows(
    run: _Run,
    first: int,
    batch: Sequence[AnnotatedImage],
    geometries: Sequence[Geometry],
    truths: Sequence[Sequence[tuple[int, Any]]],
    targets: torch.Tensor,
) -> list[FigureRow]:
    """The figure's rows in this batch: per chosen image, each explained ground-truth class (else the
    first explained class), maps to be filled in source by source."""
    rows = []
    for b, item in enumerate(batch):
        if first + b not in run.figure or targets.shape[1] == 0:
            continue
        present = list(dict.fromkeys(int(c) for c, _ in truths[b]))
        explained = set(targets[b].tolist())
        classes = [c for c in present if c in explained] or [int(targets[b, 0])]
        rows += [FigureRow(first + b, item.name, c, len(present) > 1, geometries[b], {}) for c in classes]
    return rows


def _combine(
    loaded: LoadedModel,
    items: Sequence[AnnotatedImage],
    settings: EvaluationSettings,
    order: list[str],
    failures: dict[str, str],
    parts: list[BatchPart],
    sources: Sequence[MapSource],
) -> EvaluationResult:
    """Merge the batches' parts in batch order into one result (the same numbers however the batches
    were shared out between processes and reruns)."""
    parts = sorted(parts, key=lambda part: part.first)
    failures = dict(failures)
    for part in parts:
        for name, reason in part.failures.items():
            failures.setdefault(name, reason)
    live = [name for name in order if name not in failures]
    metrics = {name: _Metrics(settings, loaded) for name in live}
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    examples: dict[str, dict[str, Example]] = defaultdict(dict)
    hits = {"top1": 0, "topk": 0}
    figure: list[FigureRow] = []
    for part in parts:
        for name in live:
            if name in part.metrics:
                metrics[name].merge(part.metrics[name])
        rows.update(part.rows)
        for name, candidates in part.examples.items():
            for kind, example in candidates.items():
                _keep_if_better(examples[name], kind, example)
        for counter in hits:
            hits[counter] += part.hits[counter]
        figure += [row for row in part.figure if all(name in row.maps for name in live)]
    for kept in examples.values():
        for example in kept.values():
            example.image = items[example.index].load()
    for row in figure:
        row.image = items[row.index].load()
    by_name = {source.name: source for source in sources}
    results = [
        MethodResult(
            name, by_name[name].title, by_name[name].is_baseline, by_name[name].layer,
            {**metrics[name].summary(settings.tasks, settings.occlusion),
             **cost([part.timings[name] for part in parts if name in part.timings])},
        )
        for name in live
    ]  # fmt: skip
    results += [MethodResult(name, title(name), False, None, {}, reason) for name, reason in failures.items()]
    curves = {}
    if "faithfulness" in settings.tasks:
        for name in live:
            m = metrics[name].curves
            deletion, insertion = m.mean_curve("deletion"), m.mean_curve("insertion")
            if deletion is not None and m.fractions is not None:
                curves[name] = {
                    "fractions": m.fractions.tolist(),
                    "deletion": deletion.tolist(),
                    "insertion": insertion.tolist(),
                }
    seen = sum(len(part.names) for part in parts)
    k = parts[0].k if parts else settings.top_k
    classification = {
        "images": seen,
        "top1_accuracy": 100.0 * hits["top1"] / max(seen, 1),
        f"top{k}_accuracy": 100.0 * hits["topk"] / max(seen, 1),
    }
    position = {name: i for i, name in enumerate(order)}
    per_image = [rows[key] for key in sorted(rows, key=lambda key: (key[0], position.get(key[1], 0)))]
    return EvaluationResult(
        model=loaded.name,
        settings=settings,
        methods=results,
        per_image=per_image,
        curves=curves,
        examples=dict(examples),
        classification=classification,
        images=seen,
        seconds=0.0,
        labels=loaded.labels,
        figure=[row for row in figure if row.maps],
    )


def _update(
    m: _Metrics,
    source: MapSource,
    settings: EvaluationSettings,
    model: torch.nn.Module,
    x: torch.Tensor,
    top: torch.Tensor,
    top_maps: torch.Tensor | None,
    truth_classes: torch.Tensor,
    truth_maps: torch.Tensor | None,
    truths: Sequence[Sequence[tuple[int, Any]]],
    geometries: Sequence[Geometry],
    faithful: bool,
    keep: int,
    occlusion: torch.Tensor | None,
    first: int,
    batch: Sequence[AnnotatedImage],
    rows: dict[tuple[int, str], dict[str, Any]],
) -> None:
    """Update one source's metrics with one batch and fold the records into per-image rows."""
    tasks = settings.tasks

    def row(b: int) -> dict[str, Any]:
        key = (first + b, source.name)
        if key not in rows:
            rows[key] = {"image": batch[b].name, "method": source.name}
        return rows[key]

    if "localization" in tasks:
        for b, record in enumerate(m.localization.update(top_maps, top, truths, geometries)):
            row(b).update(
                {
                    "top1_class": record["top1_class"],
                    "top1_loc_error": record["top1_loc_error"],
                    "topk_loc_error": record["topk_loc_error"],
                    "top1_cls_error": record["top1_cls_error"],
                    "topk_cls_error": record["topk_cls_error"],
                    "top1_iou": record["top1_iou"],
                    "top1_box": record["top1_box"],
                }
            )
    if truth_maps is not None:
        grouped: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for record in m.boxes.update(truth_maps, truth_classes, truths, geometries):
            grouped[record["image"]]["iou"].append(record["iou"])
            grouped[record["image"]]["correct"].append(float(record["correct"]))
        for record in m.pointing.update(truth_maps, truth_classes, truths, geometries):
            grouped[record["image"]]["hit"].append(float(record["hit"]))
            grouped[record["image"]]["hit_other"].append(float(record["hit_other"]))
        for record in m.energy.update(truth_maps, truth_classes, truths, geometries):
            grouped[record["image"]]["energy"].append(record["energy"])
            grouped[record["image"]]["ratio"].append(record["ratio"])
        for b, values in grouped.items():
            row(b).update(
                {
                    "classes": [int(c) for c in truth_classes[b].tolist() if c >= 0],
                    "box_iou": _mean(values["iou"]),
                    "box_correct": _mean(values["correct"]),
                    "pointing_hit": _mean(values["hit"]),
                    "points_at_other": _mean(values["hit_other"]),
                    "energy": _mean(values["energy"]),
                    "in_out_ratio": _mean(values["ratio"]),
                }
            )
    if faithful and keep > 0:
        saliency, classes = top_maps[:keep, 0], top[:keep, 0]
        curve_records = m.curves.update(model, x[:keep], saliency, classes)
        drop_records = m.confidence.update(model, x[:keep], saliency, classes)
        for b, (curve, drop) in enumerate(zip(curve_records, drop_records)):
            row(b).update(
                {
                    "explained_class": int(classes[b]),
                    "deletion_auc": curve["deletion_auc"],
                    "insertion_auc": curve["insertion_auc"],
                    "confidence_drop": drop["drop"],
                    "confidence_increase": drop["increase"],
                }
            )
        if occlusion is not None:
            for b, record in enumerate(m.occlusion.update(model, x[:keep], saliency, classes, occlusion)):
                row(b)["rank_correlation"] = record["rank_correlation"]


_BETTER: dict[str, Callable[[float, float], bool]] = {"best": lambda a, b: a > b, "worst": lambda a, b: a < b}


def _beats(kept: dict[str, Example], kind: str, iou: float) -> bool:
    """Whether an IoU of ``iou`` replaces the kept ``kind`` ('best' / 'worst') example (ties keep the
    earlier image, so merging in batch order picks what one process would)."""
    current = kept.get(kind)
    return current is None or _BETTER[kind](iou, current.iou)


def _keep_if_better(kept: dict[str, Example], kind: str, example: Example) -> bool:
    """Keep ``example`` as ``kind`` unless the kept one is at least as good (:func:`_beats`)."""
    if not _beats(kept, kind, example.iou):
        return False
    kept[kind] = example
    return True


def _keep_examples(
    source: MapSource,
    maps: torch.Tensor,
    classes: torch.Tensor,
    truths: Sequence[Sequence[tuple[int, Any]]],
    geometries: Sequence[Geometry],
    batch: Sequence[AnnotatedImage],
    first: int,
    m: _Metrics,
    settings: EvaluationSettings,
    examples: dict[str, dict[str, Example]],
) -> None:
    """Keep the best and worst box (by IoU) of this source so far, for the figures."""
    records = m.boxes.records[-int((classes >= 0).sum()) :]
    kept = examples[source.name]
    for record in records:
        for kind in _BETTER:
            if not _beats(kept, kind, record["iou"]):  # checked first: the box is only drawn for a keeper
                continue
            b, cls = record["image"], record["class"]
            j = [int(c) for c in classes[b].tolist()].index(cls)
            box = boxes_to_original(
                map_to_box(maps[b, j], settings.threshold, settings.connectivity)[None], geometries[b]
            )
            kept[kind] = Example(
                name=batch[b].name,
                index=first + b,
                geometry=geometries[b],
                heatmap=_own_copy(maps[b, j]),
                box=box[0].tolist(),
                truths=[list(bx) for c, bx in truths[b] if c == cls],
                cls=cls,
                iou=record["iou"],
            )
