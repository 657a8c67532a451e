"""Run every method and baseline over annotated images and collect the metrics (what ``gradcam evaluate`` does).

Per batch: one forward pass for the predictions; then, for each map source, ONE call that explains
the top-k predicted classes (ILSVRC localization; faithfulness uses the top-1 map) followed by the
ground-truth classes present (box accuracy, pointing, energy: classification errors cannot hide
localization, and two-object images test class discrimination). Occlusion maps, when asked for, are computed once per
batch and shared by every source.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..capture import model_guard
from ..errors import GradCAMError
from ..imaging.geometry import Geometry, preprocess_batch
from ..models import LoadedModel
from ..targets import select_output
from .datasets import AnnotatedImage
from .faithfulness import ConfidenceChange, DeletionInsertion, OcclusionCorrelation
from .localization import SWEEP, BoxAccuracy, BoxEnergy, LocalizationError, PointingGame, boxes_to_original
from .regions import map_to_box
from .sources import BASELINES, MapSource, make_sources, title

logger = logging.getLogger("gradcam")

TASKS = ("localization", "pointing", "faithfulness")


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

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}; got {self.tasks}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")


@dataclass
class Example:
    """One map kept for the best/worst-case figures."""

    name: str
    image: Image.Image
    geometry: Geometry
    heatmap: torch.Tensor  # (H, W) in the input frame, CPU
    box: list[float]  # predicted, original pixels
    truths: list[list[float]]  # ground-truth boxes of the class, original pixels
    cls: int
    iou: float


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

    def row(self, name: str) -> MethodResult:
        for result in self.methods:
            if result.name == name:
                return result
        raise KeyError(name)


class _Metrics:
    """The metric objects of one source."""

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


def evaluate(
    loaded: LoadedModel,
    items: Sequence[AnnotatedImage],
    settings: EvaluationSettings | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    report: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate every source on ``items`` (see the module docstring); returns an :class:`EvaluationResult`."""
    settings = settings or EvaluationSettings()
    if not items:
        raise ValueError("items is empty: nothing to evaluate")
    start = time.perf_counter()
    device = torch.device(device)
    model = loaded.model.to(device)
    report = report or (lambda line: None)
    layer = settings.layer or loaded.default_layer
    sources, failures = make_sources(model, settings.methods, settings.baselines, layer, settings.seed)
    for name, reason in failures.items():
        report(f"{name}: not evaluated ({reason})")
    metrics = {source.name: _Metrics(settings, loaded) for source in sources}
    shared_occlusion = _Metrics(settings, loaded).occlusion
    tasks = settings.tasks
    need_truth = "localization" in tasks or "pointing" in tasks
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    examples: dict[str, dict[str, Example]] = defaultdict(dict)
    hits = {"top1": 0, "topk": 0}
    seen = 0
    k = settings.top_k
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="img", disable=not progress, leave=False)
    try:
        for first in range(0, len(items), settings.batch_size):
            batch = items[first : first + settings.batch_size]
            images = [item.load() for item in batch]
            x, geometries = preprocess_batch(images, loaded.preprocess)
            x = x.to(device)
            truths = [item.objects_for(image.size) for item, image in zip(batch, images)]
            logits = _predict(model, x)
            k = min(settings.top_k, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            explained = top if "localization" in tasks else top[:, :1] if "faithfulness" in tasks else top[:, :0]
            for b, truth in enumerate(truths):
                present = {c for c, _ in truth}
                hits["top1"] += int(int(top[b, 0]) in present)
                hits["topk"] += int(bool(present & set(top[b].tolist())))
            seen += len(batch)
            truth_classes = _ground_truth_targets(truths, device)
            truth_targets = torch.where(truth_classes < 0, truth_classes[:, :1], truth_classes)
            # one call per source: the predicted classes, then the ground-truth classes
            targets = torch.cat([explained, truth_targets if need_truth else truth_targets[:, :0]], dim=1)
            split = explained.shape[1]
            faithful = "faithfulness" in tasks and (
                settings.faithfulness_images is None or first < settings.faithfulness_images
            )
            if faithful and settings.faithfulness_images is not None:
                keep = min(len(batch), settings.faithfulness_images - first)
            else:
                keep = len(batch)
            occlusion = None
            if faithful and settings.occlusion:
                occlusion = shared_occlusion.occlusion(model, x[:keep], top[:keep, 0])
            for source in list(sources):
                m = metrics[source.name]
                try:
                    maps = source.maps(x, targets)
                except (GradCAMError, RuntimeError) as error:
                    failures[source.name] = f"{type(error).__name__}: {error}"
                    report(f"{source.name}: stopped ({failures[source.name]})")
                    sources.remove(source)
                    continue
                top_maps = maps[:, :split] if split else None
                truth_maps = maps[:, split:] if need_truth else None
                _update(
                    m, source, settings, model, x, explained, top_maps, truth_classes, truth_maps, truths, geometries,
                    faithful, keep, occlusion, first, batch, images, rows, examples,
                )  # fmt: skip
            bar.update(len(batch))
    finally:
        bar.close()
    results = []
    names = [s.name for s in sources]
    for source in sources:
        summary = metrics[source.name].summary(tasks, settings.occlusion)
        results.append(MethodResult(source.name, source.title, source.is_baseline, source.layer, summary))
    for name, reason in failures.items():
        if name not in names:
            results.append(MethodResult(name, title(name), False, None, {}, reason))
    curves = {}
    if "faithfulness" in tasks:
        for source in sources:
            m = metrics[source.name].curves
            deletion, insertion = m.mean_curve("deletion"), m.mean_curve("insertion")
            if deletion is not None and m.fractions is not None:
                curves[source.name] = {
                    "fractions": m.fractions.tolist(),
                    "deletion": deletion.tolist(),
                    "insertion": insertion.tolist(),
                }
    classification = {
        "images": seen,
        "top1_accuracy": 100.0 * hits["top1"] / max(seen, 1),
        f"top{k}_accuracy": 100.0 * hits["topk"] / max(seen, 1),
    }
    per_image = [
        rows[key] for key in sorted(rows, key=lambda key: (key[0], names.index(key[1]) if key[1] in names else 0))
    ]
    return EvaluationResult(
        model=loaded.name,
        settings=settings,
        methods=results,
        per_image=per_image,
        curves=curves,
        examples=dict(examples),
        classification=classification,
        images=seen,
        seconds=time.perf_counter() - start,
        labels=loaded.labels,
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
    images: Sequence[Image.Image],
    rows: dict[tuple[int, str], dict[str, Any]],
    examples: dict[str, dict[str, Example]],
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
        _keep_examples(source, truth_maps, truth_classes, truths, geometries, batch, images, m, settings, examples)
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


def _keep_examples(
    source: MapSource,
    maps: torch.Tensor,
    classes: torch.Tensor,
    truths: Sequence[Sequence[tuple[int, Any]]],
    geometries: Sequence[Geometry],
    batch: Sequence[AnnotatedImage],
    images: Sequence[Image.Image],
    m: _Metrics,
    settings: EvaluationSettings,
    examples: dict[str, dict[str, Example]],
) -> None:
    """Keep the best and worst box (by IoU) of this source so far, for the figures."""
    records = m.boxes.records[-int((classes >= 0).sum()) :]
    kept = examples[source.name]
    for record in records:
        for kind, better in (("best", lambda a, b: a > b), ("worst", lambda a, b: a < b)):
            current = kept.get(kind)
            if current is not None and not better(record["iou"], current.iou):
                continue
            b, cls = record["image"], record["class"]
            j = [int(c) for c in classes[b].tolist()].index(cls)
            box = boxes_to_original(
                map_to_box(maps[b, j], settings.threshold, settings.connectivity)[None], geometries[b]
            )
            kept[kind] = Example(
                name=batch[b].name,
                image=images[b],
                geometry=geometries[b],
                heatmap=maps[b, j].detach().cpu(),
                box=box[0].tolist(),
                truths=[list(bx) for c, bx in truths[b] if c == cls],
                cls=cls,
                iou=record["iou"],
            )
