"""Run every method and baseline over annotated images and collect the metrics (what ``gradcam evaluate`` does).

Per batch: one forward pass for the predictions; then, for each map source, ONE call that explains
the top-k predicted classes (ILSVRC localization; faithfulness uses the top-1 map) followed by the
ground-truth classes present (box accuracy, pointing, energy: classification errors cannot hide
localization, and two-object images test class discrimination). Occlusion maps, when asked for, are
computed once per batch and shared by every source. Each source's call is timed against a plain
``torch.inference_mode()`` forward pass of the same batch measured just before it, so the table can give
its cost in forward passes (the median ratio over the batches after the first).

The pieces: :mod:`.results` (settings and what a run returns), :mod:`.metric_set` (one source's metrics),
:mod:`.resume` (per-batch partial results), :mod:`.examples` (the figures' images), :mod:`.merge` (parts ->
one result); this module is the loop.

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

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..batch.distributed import all_gather, distributed_rank, rank_device
from ..capture import model_guard
from ..errors import GradCAMError
from ..imaging.geometry import Geometry, preprocess_batch
from ..models import LoadedModel
from ..targets import select_output
from .datasets import AnnotatedImage
from .examples import figure_rows, figure_selection, keep_examples, own_copy
from .merge import combine
from .metric_set import MetricSet
from .results import EvaluationResult, EvaluationSettings, Example, Timing
from .resume import BatchPart, PartStore, run_key
from .sanity import image_rows, source_factory
from .sources import MapSource, make_sources


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
    layer: Any  # the layer methods' layer (rebuilt on randomised copies by the sanity checks)
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
    figure = set(figure_selection(items, settings.figure_images))
    run = _Run(loaded, model, settings, list(sources), key, figure, device, layer=layer)
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
    result = combine(loaded, items, settings, order, failures, [*reused.values(), *parts], sources)
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
    one = "faithfulness" in tasks or "sanity" in tasks  # both explain the top-1 class
    explained = top if "localization" in tasks else top[:, :1] if one else top[:, :0]
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
    keep = _subset(first, len(batch), settings.faithfulness_images)  # faithfulness on the run's first N images
    faithful = "faithfulness" in tasks and keep > 0
    occlusion = None
    if faithful and settings.occlusion:  # computed once per batch, shared by every source
        occlusion = MetricSet(settings, run.loaded).occlusion.occlusion(model, x[:keep], top[:keep, 0])
    part = BatchPart(
        first=first, names=[item.name for item in batch], key=run.key, k=k, hits=hits, metrics={}, rows={},
        examples={}, figure=figure_rows(run.figure, first, batch, geometries, truths, targets), timings={}, failures={},
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
        m = part.metrics[source.name] = MetricSet(settings, run.loaded)
        top_maps = maps[:, :split] if split else None
        truth_maps = maps[:, split:] if need_truth else None
        _update(
            m, source, settings, model, x, explained, top_maps, truth_classes, truth_maps, truths, geometries,
            faithful, keep, occlusion, first, batch, part.rows,
        )  # fmt: skip
        sane = _subset(first, len(batch), settings.sanity_images)
        if "sanity" in tasks and sane:
            _sanity(run, m, source, x[:sane], top[:, 0], first, part, batch, report)
        if truth_maps is not None:
            before = dict(run.kept[source.name])
            keep_examples(source, truth_maps, truth_classes, truths, geometries, batch, first, m, settings, run.kept)
            changed = {kind: ex for kind, ex in run.kept[source.name].items() if before.get(kind) is not ex}
            if changed:
                part.examples[source.name] = changed
        for row in part.figure:
            j = int((targets[row.index - first] == row.cls).nonzero()[0, 0])
            row.maps[source.name] = own_copy(maps[row.index - first, j])
    run.batches_done += 1
    return part


def _update(
    m: MetricSet,
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
        _update_more(m, source, settings, model, x[:keep], saliency, classes, first, row)


def _subset(first: int, size: int, limit: int | None) -> int:
    """How many of a batch's ``size`` images, starting at image ``first`` of the run, are among the first
    ``limit`` (None: all)."""
    return size if limit is None else max(0, min(size, limit - first))


def _update_more(
    m: MetricSet,
    source: MapSource,
    settings: EvaluationSettings,
    model: torch.nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    classes: torch.Tensor,
    first: int,
    row: Callable[[int], dict[str, Any]],
) -> None:
    """Complexity of the top-1 maps; ROAD and Max/Avg-Sensitivity on the first ``road_images`` /
    ``robustness_images`` of the faithfulness images (the explanation recomputed by the same source)."""
    for record in m.complexity.update(saliency):
        row(record["index"]).update({"sparseness": record["sparseness"], "entropy": record["entropy"]})
    count = _subset(first, x.shape[0], settings.road_images)
    if settings.road and count:
        for b, record in enumerate(m.road.update(model, x[:count], saliency[:count], classes[:count])):
            row(b).update({key: record[key] for key in ("road_morf", "road_lerf", "road_gap")})
    count = _subset(first, x.shape[0], settings.robustness_images)
    if settings.robustness_samples and count:

        def explain(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return source.maps(inputs, target[:, None], first)[:, 0]

        for b, record in enumerate(m.robustness.update(explain, x[:count], classes[:count])):
            row(b).update(record)


def _sanity(
    run: _Run,
    m: MetricSet,
    source: MapSource,
    x: torch.Tensor,
    classes: torch.Tensor,
    first: int,
    part: BatchPart,
    batch: Sequence[AnnotatedImage],
    report: Callable[[str], None],
) -> None:
    """The sanity checks of one source on the batch's first images (:mod:`.sanity`), folded into per-image rows:
    each image's mean similarity over the cascading steps and its random-logit SSIM."""
    try:
        records = m.sanity.update(run.model, source_factory(source, run.layer, first), x, classes[: len(x)], first)
    except (GradCAMError, RuntimeError, ValueError) as error:
        report(f"{source.name}: sanity checks not run on images {first}.. ({type(error).__name__}: {error})")
        return
    for image, values in image_rows(records).items():
        key = (image, source.name)
        part.rows.setdefault(key, {"image": batch[image - first].name, "method": source.name}).update(values)
