"""Dense-prediction targets: semantic segmentation and object detection.

``SegmentationScore(c, m)``: ``y = sum_ij m_ij s_c[i, j]``, a class's logits summed over a pixel mask.
``DetectionScore``: one detection's score, plus ``box_weight * IoU(its box, a reference box)``
(IoU: ``torchvision.ops.box_iou``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torchvision.ops import box_iou

from ..errors import TargetError
from .composition import PerImage, TaskTarget, check_range, finish, per_image
from .resolution import OutputSelector, select_output

SEGMENTATION_KEYS: tuple[str, ...] = ("out", "logits")


class SegmentationScore(TaskTarget):
    """Semantic segmentation: ``y = sum_ij m_ij s_c[i, j]``, a class's logits summed over a mask.

    ``category``: an int, B ints or a (B, k) tensor. ``mask``: an (H, W) or (B, H, W) tensor at the
    logits' resolution (bool, or float weights); None uses the pixels predicted as the class
    (``argmax_c' s_c'[i, j] == c``, a constant mask, as in pytorch-grad-cam's recipe). An image with
    no such pixel gets y = 0 and an all-zero map. torchvision models' ``{"out", "aux"}`` dicts use
    ``out``.
    """

    _per_image: ClassVar[dict[str, int]] = {"category": 1, "mask": 3}

    def __init__(self, category: PerImage, mask: torch.Tensor | None = None, select: OutputSelector = None) -> None:
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3)):
            raise TargetError("mask must be an (H, W) or (B, H, W) tensor (bool or float weights), or None")
        self.category = category
        self.mask = mask
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        logits = select_output(output, self.select, SEGMENTATION_KEYS)
        if logits.dim() != 4:
            raise TargetError(f"SegmentationScore needs (B, num_classes, H, W) logits; got shape {tuple(logits.shape)}")
        batch, num, height, width = logits.shape
        categories, multi = per_image(self.category, batch, logits.device, "category")
        check_range(categories, num, "category", "classes")
        index = categories[:, :, None, None].expand(-1, -1, height, width)
        selected = logits.gather(1, index)  # (B, k, H, W)
        if self.mask is None:
            mask = (logits.detach().argmax(1, keepdim=True) == categories[:, :, None, None]).to(logits.dtype)
        else:
            mask = self.mask.to(device=logits.device, dtype=logits.dtype)
            if tuple(mask.shape[-2:]) != (height, width) or (mask.dim() == 3 and mask.shape[0] != batch):
                raise TargetError(
                    f"mask has shape {tuple(mask.shape)} but the logits are {height}x{width} for {batch} "
                    f"images; pass an ({height}, {width}) or ({batch}, {height}, {width}) mask"
                )
            mask = mask.reshape(-1, 1, height, width)
        return finish((selected * mask).sum((-2, -1)), multi)


def _detections(output: Any, select: OutputSelector, batch: int | None = None) -> list[Mapping[str, torch.Tensor]]:
    detections = select(output) if callable(select) else output if select is None else output[select]
    if not isinstance(detections, (list, tuple)) or not all(
        isinstance(d, Mapping) and "boxes" in d and "scores" in d for d in detections
    ):
        raise TargetError(
            "DetectionScore needs the detector's output: a list of B dicts with 'boxes' (n, 4) and 'scores' "
            f"(n,), as torchvision detection models return in eval mode; got {type(detections).__name__}"
        )
    if batch is not None and len(detections) != batch:
        raise TargetError(f"the detector returned {len(detections)} results for {batch} images")
    return list(detections)


def match_detections(
    output: Any,
    box: torch.Tensor | Sequence[float],
    label: int | None = None,
    iou_threshold: float = 0.5,
    select: OutputSelector = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image and reference box, the detection with the highest IoU (of ``label`` if given).

    ``box``: (4,), (B, 4) or (B, k, 4) in the input's pixels (x0, y0, x1, y1). Returns the indices
    (B, k) into each image's detections and their IoUs (B, k); raises when a best IoU is below
    ``iou_threshold``.
    """
    detections = _detections(output, select)
    batch = len(detections)
    device = detections[0]["boxes"].device if batch else torch.device("cpu")
    references = _reference_boxes(box, batch, device)[0]
    indices = torch.zeros(references.shape[:2], dtype=torch.long, device=device)
    ious = torch.zeros(references.shape[:2], device=device)
    for b, found in enumerate(detections):
        boxes = found["boxes"].detach().float()
        for j in range(references.shape[1]):
            overlap = box_iou(boxes, references[b, j, None])[:, 0]
            if label is not None and len(boxes):
                overlap = torch.where(found["labels"] == label, overlap, torch.full_like(overlap, -1.0))
            best = float(overlap.max()) if len(overlap) else -1.0
            if best < iou_threshold:
                what = f" of label {label}" if label is not None else ""
                raise TargetError(
                    f"image {b}: no detection{what} overlaps box {references[b, j].tolist()} with IoU >= "
                    f"{iou_threshold} ({len(boxes)} detections, best IoU {max(best, 0.0):.3f}); lower "
                    "iou_threshold or choose a detection by index"
                )
            indices[b, j] = int(overlap.argmax())
            ious[b, j] = best
    return indices, ious


def _reference_boxes(box: Any, batch: int | None, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``box`` as (B, k, 4) float boxes and whether it had a k axis; ``batch=None`` only validates."""
    try:
        boxes = torch.as_tensor(box, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(f"box must be (x0, y0, x1, y1), a (B, 4) or a (B, k, 4) tensor; got {box!r}") from None
    if batch is None:
        batch = boxes.shape[0] if boxes.dim() > 1 else 1
    if boxes.shape[-1:] != (4,) or boxes.dim() > 3 or (boxes.dim() > 1 and boxes.shape[0] != batch):
        raise TargetError(
            f"box must be (x0, y0, x1, y1), a (B={batch}, 4) or a (B={batch}, k, 4) tensor; got shape "
            f"{tuple(boxes.shape)}"
        )
    if bool((boxes[..., 2:] <= boxes[..., :2]).any()):
        raise TargetError(f"box must have x1 > x0 and y1 > y0; got {boxes.tolist()}")
    multi = boxes.dim() == 3
    return boxes.expand(batch, 4).reshape(batch, 1, 4) if boxes.dim() == 1 else boxes.reshape(batch, -1, 4), multi


class DetectionScore(TaskTarget):
    """Object detection: the score of one detection, optionally plus its box's overlap with a box.

    ``y = score_d + box_weight * IoU(box_d, reference)``. The detection ``d`` is chosen by ``index``
    (an int, B ints or a (B, k) tensor into each image's detections -- torchvision sorts them by
    score, so 0 is the most confident), or matched to a reference ``box`` (x0, y0, x1, y1 in the
    input's pixels; (4,), (B, 4) or (B, k, 4)) as the detection of highest IoU (of ``label`` when
    given), which must reach ``iou_threshold``. With a reference box and ``box_weight > 0`` the IoU
    term differentiates through the detector's box regression, the recipe of pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` (``box_weight=1``). With neither index nor box, ``index=0``.

    The output is the torchvision eval-mode list of B dicts (``boxes``, ``scores``, ``labels``); run
    torchvision detectors through :class:`DetectorAdapter`.
    """

    _per_image: ClassVar[dict[str, int]] = {"index": 1, "box": 2}

    def __init__(
        self,
        index: PerImage | None = None,
        box: torch.Tensor | Sequence[float] | None = None,
        *,
        label: int | None = None,
        iou_threshold: float = 0.5,
        box_weight: float = 0.0,
        select: OutputSelector = None,
    ) -> None:
        if index is not None and box is not None:
            raise TargetError("DetectionScore takes index= or box=, not both")
        if box_weight and box is None:
            raise TargetError("box_weight needs a reference box= (the IoU term compares the detection with it)")
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise TargetError(f"iou_threshold must be in [0, 1]; got {iou_threshold!r}")
        if box is not None:  # validate early; per-image boxes are checked against B at call time
            _reference_boxes(box, None, torch.device("cpu"))
        self.index = 0 if index is None and box is None else index
        self.box = box
        self.label = label
        self.iou_threshold = float(iou_threshold)
        self.box_weight = float(box_weight)
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        detections = _detections(output, self.select)
        batch = len(detections)
        device = detections[0]["scores"].device
        if self.box is None:
            indices, multi = per_image(self.index, batch, device, "index")
            references = None
        else:
            references, multi = _reference_boxes(self.box, batch, device)
            indices, _ = match_detections(detections, references, self.label, self.iou_threshold)
        rows = []
        for b, found in enumerate(detections):
            count = len(found["scores"])
            if self.box is None and bool(((indices[b] < 0) | (indices[b] >= count)).any()):
                raise TargetError(f"image {b} has {count} detections; index {indices[b].tolist()} is out of range")
            score = found["scores"][indices[b]]
            if references is not None and self.box_weight:
                score = score + self.box_weight * box_iou(found["boxes"][indices[b]], references[b]).diagonal()
            rows.append(score)
        return finish(torch.stack(rows), multi)
