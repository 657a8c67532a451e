"""Metrics that compare maps with ground-truth boxes: ILSVRC localization, box accuracy, pointing, energy.

Every metric keeps state TorchCAM-style: ``update(...)`` takes one batch and returns one record per
image (or per map), ``summary()`` aggregates everything seen, ``reset()`` starts over.

Shared inputs:

- ``maps``: (B, k, H, W) non-negative maps in the *input* frame (what the network saw), one per
  explained class; (B, H, W) is read as k = 1. Use :func:`.regions.saliency_2d` for input-space maps.
- ``classes``: (B, k) class indices the maps explain (-1 marks padding to ignore).
- ``truths``: per image, a sequence of ``(class_index, (x0, y0, x1, y1))`` ground-truth objects in
  *original-image* pixels (continuous coordinates, x1/y1 exclusive; see :mod:`.datasets`).
- ``geometries``: per image, the :class:`~gradcam.imaging.geometry.Geometry` of its preprocessing
  (None when the input frame is the original image).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from ..imaging.geometry import Geometry
from .regions import box_iou, box_mask, map_to_box, map_to_boxes, peak_point, point_box_distance
from .state import Mergeable

Truth = Sequence[tuple[int, Sequence[float]]]


def _as_maps(maps: torch.Tensor, classes: torch.Tensor | Sequence | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (B, k, H, W) maps and (B, k) classes (a (B, H, W) / (B,) pair is read as k = 1)."""
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a (B, k, H, W) or (B, H, W) tensor of 2-D maps; got {shape}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if classes is None:
        raise ValueError("classes must give the class index each map explains, (B, k)")
    classes = torch.as_tensor(classes, device=maps.device).long()
    if classes.dim() == 1:
        classes = classes.unsqueeze(1)
    if tuple(classes.shape) != tuple(maps.shape[:2]):
        raise ValueError(f"classes must be (B, k) = {tuple(maps.shape[:2])} to match maps; got {tuple(classes.shape)}")
    return maps.detach().float(), classes


def _check_batch(maps: torch.Tensor, truths: Sequence[Truth], geometries: Sequence[Geometry | None] | None) -> list:
    batch = maps.shape[0]
    if len(truths) != batch:
        raise ValueError(f"truths must hold one list of (class, box) objects per image: {batch}; got {len(truths)}")
    if geometries is None:
        return [None] * batch
    if len(geometries) != batch:
        raise ValueError(f"geometries must hold one Geometry per image: {batch}; got {len(geometries)}")
    return list(geometries)


def _truth_tensors(truth: Truth, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) classes and (M, 4) boxes of one image's ground truth."""
    if len(truth) == 0:
        return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, 4, device=device)
    classes = torch.tensor([int(c) for c, _ in truth], dtype=torch.long, device=device)
    boxes = torch.tensor([[float(v) for v in box] for _, box in truth], dtype=torch.float32, device=device)
    if boxes.shape[-1] != 4:
        raise ValueError(f"ground-truth boxes must be (x0, y0, x1, y1); got {truth!r}")
    return classes, boxes


def boxes_to_original(boxes: torch.Tensor, geometry: Geometry | None) -> torch.Tensor:
    """(N, 4) input-frame boxes -> original-image boxes via ``Geometry.box_to_original`` (NaN stays NaN)."""
    if geometry is None:
        return boxes
    return torch.tensor(
        [geometry.box_to_original(box) for box in boxes.tolist()], dtype=torch.float32, device=boxes.device
    ).reshape(-1, 4)


def points_to_original(points: torch.Tensor, geometry: Geometry | None) -> torch.Tensor:
    """(N, 2) input-frame points -> original-image points."""
    if geometry is None:
        return points
    return torch.tensor(
        [geometry.point_to_original(x, y) for x, y in points.tolist()], dtype=torch.float32, device=points.device
    ).reshape(-1, 2)


def boxes_from_original(boxes: torch.Tensor, geometry: Geometry | None) -> torch.Tensor:
    """(N, 4) original-image boxes -> input-frame boxes."""
    if geometry is None:
        return boxes
    return torch.tensor(
        [geometry.box_from_original(box) for box in boxes.tolist()], dtype=torch.float32, device=boxes.device
    ).reshape(-1, 4)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class LocalizationError(Mergeable):
    """Weakly-supervised localization error, ILSVRC protocol (Selvaraju et al. 2017, §4.1; ILSVRC devkit).

    For each image the maps of the top-k *predicted* classes (best first) are thresholded at
    ``threshold`` (15 %) of their maximum; one box is drawn around the largest connected segment
    (:func:`.regions.map_to_box`, ``connectivity`` 8 by default) and mapped to original-image pixels.
    With ground-truth classes ``g_1..g_n`` and boxes ``z_km``, the ILSVRC error of an image over the
    first ``t`` predictions is

        ``e_t = 1/n * sum_k min_{j<t} min_m max(d(l_j, g_k), f(b_j, z_km))``

    where ``d`` is 0 when the label is right and ``f`` is 0 when ``IoU(b_j, z_km) >= iou`` (0.5).
    Classification error drops ``f``. ``summary()`` gives top-1 and top-k (k = 5 normally)
    localization and classification errors in percent; Grad-CAM with VGG-16 on ILSVRC-15 val
    reported 56.51 % top-1 and 46.41 % top-5 localization error.
    """

    def __init__(self, threshold: float = 0.15, iou: float = 0.5, connectivity: int = 8) -> None:
        if not 0.0 < iou <= 1.0:
            raise ValueError(f"iou must be in (0, 1]; got {iou}")
        self.threshold = threshold
        self.iou = iou
        self.connectivity = connectivity
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.k: int | None = None

    def merge_extra(self, other: LocalizationError) -> None:
        """k is the smallest number of predictions any batch had."""
        if other.k is not None:
            self.k = other.k if self.k is None else min(self.k, other.k)

    def update(
        self,
        maps: torch.Tensor,
        classes: torch.Tensor,
        truths: Sequence[Truth],
        geometries: Sequence[Geometry | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Score one batch: ``classes`` are the predicted classes, best first. Returns one record per image."""
        maps, classes = _as_maps(maps, classes)
        geometries = _check_batch(maps, truths, geometries)
        k = maps.shape[1]
        self.k = k if self.k is None else min(self.k, k)
        boxes = map_to_box(maps, self.threshold, self.connectivity)  # (B, k, 4), input frame
        records = []
        for b in range(maps.shape[0]):
            truth_classes, truth_boxes = _truth_tensors(truths[b], maps.device)
            if truth_classes.numel() == 0:
                raise ValueError(f"image {b} of the batch has no ground-truth object; ILSVRC needs at least one")
            predicted = boxes_to_original(boxes[b], geometries[b])
            iou = box_iou(predicted, truth_boxes)  # (k, M)
            label_ok = classes[b][:, None] == truth_classes[None, :]  # (k, M)
            box_ok = label_ok & (iou >= self.iou)
            gt_classes = truth_classes.unique()
            # per ground-truth class k and prediction j: correct label / correct label and box
            label_hit = torch.stack([label_ok[:, truth_classes == g].any(dim=1) for g in gt_classes], dim=1)
            box_hit = torch.stack([box_ok[:, truth_classes == g].any(dim=1) for g in gt_classes], dim=1)

            def error(hit: torch.Tensor, top: int) -> float:
                return float(1.0 - hit[:top].any(dim=0).float().mean())

            best_iou = torch.where(label_ok[0], iou[0], torch.zeros_like(iou[0]))
            records.append(
                {
                    "top1_loc_error": error(box_hit, 1),
                    "topk_loc_error": error(box_hit, k),
                    "top1_cls_error": error(label_hit, 1),
                    "topk_cls_error": error(label_hit, k),
                    "top1_class": int(classes[b, 0]),
                    "top1_box": [round(v, 2) for v in predicted[0].tolist()],
                    "top1_iou": float(best_iou.max()) if best_iou.numel() else 0.0,
                    "k": k,
                }
            )
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        """Errors in percent over every image seen (NaN before any update)."""
        k = self.k or 0

        def pct(key: str) -> float:
            return 100.0 * _mean([r[key] for r in self.records])

        return {
            "images": len(self.records),
            "k": k,
            "top1_loc_error": pct("top1_loc_error"),
            f"top{k}_loc_error": pct("topk_loc_error"),
            "top1_cls_error": pct("top1_cls_error"),
            f"top{k}_cls_error": pct("topk_cls_error"),
        }


SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95


class BoxAccuracy(Mergeable):
    """Ground-truth-known localization accuracy (Zhou et al. 2016 CAM; Choe et al. 2020 "GT-known Loc").

    Each map explains a class *present* in the image; its box (threshold + largest segment, as in
    :class:`LocalizationError`) is correct when ``IoU >= iou`` with a ground-truth box of that class.
    Classification errors cannot hide localization here. ``summary()``: accuracy in percent and mean IoU
    at ``threshold``, overall and on images holding several classes (where the box must find the right
    object).

    With ``sweep`` (a sequence of thresholds, e.g. :data:`SWEEP`) the accuracy is also measured at every
    threshold, and ``max_accuracy`` is MaxBoxAcc (Choe et al., CVPR 2020): the accuracy at the best
    threshold, which removes the dependence on one fixed threshold (``best_threshold`` says which).
    """

    def __init__(
        self,
        threshold: float = 0.15,
        iou: float = 0.5,
        connectivity: int = 8,
        sweep: Sequence[float] | None = None,
    ) -> None:
        self.threshold = threshold
        self.iou = iou
        self.connectivity = connectivity
        self.sweep = tuple(sweep) if sweep else ()
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def update(
        self,
        maps: torch.Tensor,
        classes: torch.Tensor,
        truths: Sequence[Truth],
        geometries: Sequence[Geometry | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Score one batch; returns one record per valid map (``classes >= 0``)."""
        maps, classes = _as_maps(maps, classes)
        geometries = _check_batch(maps, truths, geometries)
        thresholds = (self.threshold, *self.sweep)
        boxes = map_to_boxes(maps, thresholds, self.connectivity)  # (T, B, k, 4)
        records = []
        for b in range(maps.shape[0]):
            truth_classes, truth_boxes = _truth_tensors(truths[b], maps.device)
            predicted = [boxes_to_original(found[b], geometries[b]) for found in boxes]
            ious = [box_iou(p, truth_boxes) for p in predicted]
            several = truth_classes.unique().numel() > 1
            for j in range(maps.shape[1]):
                cls = int(classes[b, j])
                if cls < 0:
                    continue
                own = truth_classes == cls
                if not bool(own.any()):
                    raise ValueError(f"image {b}: class {cls} has no ground-truth box; explain classes present")
                best = [float(iou[j][own].max()) for iou in ious]
                record = {
                    "image": b,
                    "class": cls,
                    "iou": best[0],
                    "correct": best[0] >= self.iou,
                    "multi_class": several,
                    "box": [round(v, 2) for v in predicted[0][j].tolist()],
                }
                if self.sweep:
                    record["sweep_iou"] = best[1:]
                records.append(record)
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        multi = [r for r in self.records if r["multi_class"]]
        out = {
            "maps": len(self.records),
            "accuracy": 100.0 * _mean([float(r["correct"]) for r in self.records]),
            "mean_iou": _mean([r["iou"] for r in self.records]),
            "multi_class_maps": len(multi),
            "multi_class_accuracy": 100.0 * _mean([float(r["correct"]) for r in multi]),
        }
        if self.sweep:
            curve = [
                100.0 * _mean([float(r["sweep_iou"][i] >= self.iou) for r in self.records])
                for i in range(len(self.sweep))
            ]
            best = max(range(len(curve)), key=lambda i: (curve[i], -i)) if self.records else 0
            out.update(
                {
                    "accuracy_by_threshold": dict(zip(self.sweep, curve)),
                    "max_accuracy": curve[best] if self.records else math.nan,
                    "best_threshold": self.sweep[best] if self.records else math.nan,
                }
            )
        return out


class PointingGame(Mergeable):
    """Pointing game (Zhang et al., ECCV 2016 / IJCV 2018; TorchRay's benchmark).

    Each map explains a class present in the image. Its maximum (:func:`.regions.peak_point`, mapped
    to original-image pixels) is a *hit* when it lies within ``tolerance`` pixels (15, Euclidean) of a
    ground-truth box of that class, otherwise a miss. Accuracy is ``hits / (hits + misses)`` per class,
    averaged over classes (``accuracy``); ``overall`` averages over maps.

    Class discrimination: on images holding several classes, ``confusion`` is the percentage of maps
    whose point misses their own class but hits another class's object.
    """

    def __init__(self, tolerance: float = 15.0) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels; got {tolerance}")
        self.tolerance = tolerance
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def update(
        self,
        maps: torch.Tensor,
        classes: torch.Tensor,
        truths: Sequence[Truth],
        geometries: Sequence[Geometry | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Score one batch; returns one record per valid map."""
        maps, classes = _as_maps(maps, classes)
        geometries = _check_batch(maps, truths, geometries)
        points = peak_point(maps)  # (B, k, 2), input frame
        records = []
        for b in range(maps.shape[0]):
            truth_classes, truth_boxes = _truth_tensors(truths[b], maps.device)
            original = points_to_original(points[b], geometries[b])
            distance = point_box_distance(original, truth_boxes)  # (k, M)
            several = truth_classes.unique().numel() > 1
            for j in range(maps.shape[1]):
                cls = int(classes[b, j])
                if cls < 0:
                    continue
                own = truth_classes == cls
                if not bool(own.any()):
                    raise ValueError(f"image {b}: class {cls} has no ground-truth box; explain classes present")
                hit = bool((distance[j][own] <= self.tolerance).any())
                other = bool((distance[j][~own] <= self.tolerance).any()) if bool((~own).any()) else False
                records.append(
                    {
                        "image": b,
                        "class": cls,
                        "hit": hit,
                        "hit_other": other and not hit,
                        "multi_class": several,
                        "point": [round(v, 2) for v in original[j].tolist()],
                    }
                )
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        by_class: dict[int, list[float]] = defaultdict(list)
        for record in self.records:
            by_class[record["class"]].append(float(record["hit"]))
        multi = [r for r in self.records if r["multi_class"]]
        return {
            "maps": len(self.records),
            "accuracy": 100.0 * _mean([_mean(v) for v in by_class.values()]),
            "overall": 100.0 * _mean([float(r["hit"]) for r in self.records]),
            "per_class": {c: 100.0 * _mean(v) for c, v in sorted(by_class.items())},
            "multi_class_maps": len(multi),
            "multi_class_accuracy": 100.0 * _mean([float(r["hit"]) for r in multi]),
            "confusion": 100.0 * _mean([float(r["hit_other"]) for r in multi]),
        }


class BoxEnergy(Mergeable):
    """How much of a map lies in the ground-truth box of its class.

    - ``energy = sum_{in box} L / sum L`` (the energy-based pointing game of Score-CAM, Wang et al.
      2020, §5.3); a uniform map scores the box's area fraction.
    - ``ratio = mean_{in box} L / mean_{outside} L``, the check of Selvaraju et al. 2017 (§8.1, Grad-CAM
      maps inside vs outside DenseCap boxes); a uniform map scores exactly 1.0. The outside mean is
      floored at ``eps`` (1e-3 of a map in [0, 1]) so a map that is zero outside stays finite; when the
      box covers the whole frame the ratio is undefined (NaN, left out of the mean).

    Boxes are mapped into the input frame (pixels whose centres lie inside count); several boxes of the
    class form one region. Maps that are zero everywhere are skipped (counted in ``empty``).
    """

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.empty = 0

    def merge_extra(self, other: BoxEnergy) -> None:
        self.empty += other.empty

    def update(
        self,
        maps: torch.Tensor,
        classes: torch.Tensor,
        truths: Sequence[Truth],
        geometries: Sequence[Geometry | None] | None = None,
    ) -> list[dict[str, Any]]:
        maps, classes = _as_maps(maps, classes)
        geometries = _check_batch(maps, truths, geometries)
        height, width = maps.shape[-2:]
        records = []
        for b in range(maps.shape[0]):
            truth_classes, truth_boxes = _truth_tensors(truths[b], maps.device)
            frame_boxes = boxes_from_original(truth_boxes, geometries[b])
            masks = box_mask(frame_boxes, height, width)  # (M, H, W)
            for j in range(maps.shape[1]):
                cls = int(classes[b, j])
                if cls < 0:
                    continue
                own = truth_classes == cls
                if not bool(own.any()):
                    raise ValueError(f"image {b}: class {cls} has no ground-truth box; explain classes present")
                region = masks[own].any(dim=0)
                map_ = maps[b, j]
                total = float(map_.sum())
                inside, outside = region.sum(), (~region).sum()
                if total <= 0 or inside == 0:
                    self.empty += 1
                    continue
                mean_in = float(map_[region].mean())
                # no pixel outside the box (it fills the frame): the ratio is undefined
                ratio = mean_in / max(float(map_[~region].mean()), self.eps) if outside > 0 else math.nan
                records.append(
                    {
                        "image": b,
                        "class": cls,
                        "energy": float(map_[region].sum()) / total,
                        "ratio": ratio,
                    }
                )
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        return {
            "maps": len(self.records),
            "empty": self.empty,
            "energy": 100.0 * _mean([r["energy"] for r in self.records]),
            "ratio": _mean([r["ratio"] for r in self.records if not math.isnan(r["ratio"])]),
        }
