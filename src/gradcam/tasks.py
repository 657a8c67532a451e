"""Task targets: explain any differentiable scalar of a model's output.

Grad-CAM (Selvaraju et al., ICCV 2017, sec. 3) needs one differentiable scalar ``y`` per map; the
paper already uses it beyond classification (captioning: the log-probability of the caption; VQA:
the answer's score). A task target is a callable ``output -> (B,)`` (one scalar per image) or
``(B, k)`` (k scalars per image, all explained from the same forward pass); pass it as
``cam(x, target)``. Targets compose: ``t1 + t2``, ``t1 - t2``, ``0.5 * t``, ``-t`` and
``Stack(t1, t2)`` (one map per target, k = 2).

============================  ===========================================================
target                        y for image b
============================  ===========================================================
``ClassScore(c, kind)``       logit ``s_c``, softmax ``p_c``, ``log p_c`` or sigmoid ``σ(s_c)``
``WeightedClasses(w, kind)``  ``sum_c w_c s_c`` (s as above)
``SegmentationScore(c, m)``   ``sum_ij m_ij s_c[i, j]`` over a pixel mask (given, or argmax == c)
``DetectionScore(...)``       score of one detection (+ λ IoU(its box, a reference box))
``EmbeddingSimilarity(r)``    ``cos(e_b, r)``: image embedding vs. a text or image embedding
``TokenLogProbability``       ``log p(token | image, previous tokens)`` at one position
``SequenceLogProbability``    ``sum_t log p(w_t | image, w_<t)`` (a caption, an answer)
============================  ===========================================================

Every target reads its tensor from the model output with ``select`` (a key, an index or a
callable, as ``output=`` of the explainers); left None it takes a plain tensor as is, or the first
of a few conventional keys of a dict / Hugging Face ``ModelOutput`` (``logits``; ``out`` for
torchvision segmentation; ``image_embeds`` / ``pooler_output`` for embeddings). Give ``select`` to
the target *or* ``output=`` to the explainer, not both: the explainer's selection happens first.

Adapters for models that do not take a plain ``(B, C, H, W)`` batch as first argument:
:class:`KeywordImageInput` (``CLIPModel(pixel_values=..., input_ids=...)``) and
:class:`DetectorAdapter` (torchvision detection models, which take a list of 3-D images).
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from .capture import forward_hook, model_guard
from .errors import TargetError
from .targets import OutputSelector, select_output

Kind = Literal["logit", "probability", "log_probability", "sigmoid"]
KINDS: tuple[str, ...] = ("logit", "probability", "log_probability", "sigmoid")
PerImage = Union[int, Sequence[int], torch.Tensor]

LOGIT_KEYS = ("logits",)
SEGMENTATION_KEYS = ("out", "logits")
EMBEDDING_KEYS = ("image_embeds", "pooler_output", "embeddings")


# ----------------------------------------------------------------------------------------------
# helpers


def require_extra(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or fail naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f'{what} needs {module}, an optional extra: pip install "gradcam[{extra}]"') from None


def pick(output: Any, select: OutputSelector = None, keys: Sequence[str] = LOGIT_KEYS) -> torch.Tensor:
    """The tensor a target reads: ``select_output(output, select)``, or with no ``select`` a tensor
    as is / the first of ``keys`` present in a dict or ``ModelOutput``."""
    if select is None and isinstance(output, Mapping):
        for key in keys:
            if key in output and isinstance(output[key], torch.Tensor):
                return output[key]
        raise TargetError(
            f"the model returns a {type(output).__name__} with keys {list(output.keys())} and none of "
            f"{list(keys)}; pass select=KEY to the target (or output=KEY to the explainer)"
        )
    return select_output(output, select)


def per_image(value: PerImage, batch: int, device: torch.device, name: str) -> tuple[torch.Tensor, bool]:
    """An int, B ints or a (B, k) integer tensor as a (B, k) long tensor, and whether it had a k axis."""
    if isinstance(value, bool):
        raise TargetError(f"{name} must be an int, B ints or a (B, k) integer tensor; got a bool")
    if isinstance(value, int):
        return torch.full((batch, 1), value, dtype=torch.long, device=device), False
    try:
        indices = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"{name} must be an int, B ints or a (B, k) integer tensor; got {type(value).__name__}"
        ) from None
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise TargetError(f"{name} must hold integers; got dtype {indices.dtype}")
    if indices.dim() == 0:
        return torch.full((batch, 1), int(indices), dtype=torch.long, device=device), False
    if indices.dim() > 2 or indices.shape[0] != batch or (indices.dim() == 2 and indices.shape[1] == 0):
        raise TargetError(
            f"{name} must be an int, B={batch} ints or a (B={batch}, k>=1) tensor; got shape {tuple(indices.shape)}"
        )
    return indices.to(device=device, dtype=torch.long).reshape(batch, -1), indices.dim() == 2


def _finish(scores: torch.Tensor, multi: bool) -> torch.Tensor:
    return scores if multi else scores[:, 0]


def _check_range(indices: torch.Tensor, size: int, name: str, what: str) -> None:
    bad = (indices < 0) | (indices >= size)
    if bool(bad.any()):
        raise TargetError(f"{name} {int(indices[bad][0])} is out of range for {size} {what} (valid: 0..{size - 1})")


def class_scores(logits: torch.Tensor, kind: str, dim: int = 1) -> torch.Tensor:
    """``logits`` turned into the scores a target reads: logit, softmax, log-softmax or sigmoid."""
    if kind == "logit":
        return logits
    if kind == "probability":
        return logits.softmax(dim)
    if kind == "log_probability":
        return logits.log_softmax(dim)
    if kind == "sigmoid":
        return logits.sigmoid()
    raise TargetError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise TargetError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind


def _image_rows(value: Any, ndim: int, index: int, copies: int) -> Any:
    """A per-image value (one row per image once it has ``ndim`` dims) as ``copies`` rows of image ``index``."""
    if value is None or isinstance(value, (bool, int, float, Mapping)):
        return value
    rows = torch.as_tensor(value)
    if rows.dim() < ndim:
        return value
    if not 0 <= index < rows.shape[0]:
        raise TargetError(f"image index {index} is out of range for a target given for {rows.shape[0]} images")
    return rows[index : index + 1].expand(copies, *rows.shape[1:])


def _scalars(target: Callable[[Any], torch.Tensor], output: Any) -> torch.Tensor:
    scores = target(output)
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (1, 2):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TargetError(f"a combined target must give (B,) or (B, k) scalars; {target!r} gave {shape}")
    return scores


# ----------------------------------------------------------------------------------------------
# composition


class TaskTarget:
    """Base of the task targets: ``target(output) -> (B,)`` or ``(B, k)`` differentiable scalars.

    Arithmetic builds new targets: ``a + b``, ``a - b``, ``w * a``, ``-a`` (same shapes required);
    :class:`Stack` puts several targets on a k axis.

    :meth:`for_image` gives the same target for N modified copies of one image of the batch (what
    perturbation methods rescore); ``_per_image`` names the attributes that hold one row per image
    once they have that many dims.
    """

    _per_image: ClassVar[dict[str, int]] = {}

    def __call__(self, output: Any) -> torch.Tensor:
        raise NotImplementedError

    def for_image(self, index: int, copies: int) -> TaskTarget:
        """This target for ``copies`` copies of image ``index``: per-image values keep row ``index``."""
        clone = copy.copy(self)
        for attr, ndim in self._per_image.items():
            setattr(clone, attr, _image_rows(getattr(self, attr), ndim, index, copies))
        return clone

    def __add__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        return Combined((self, other), (1.0, 1.0))

    def __radd__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return Combined((self,), (1.0,))  # sum([t1, t2, ...]) starts from 0
        return Combined((other, self), (1.0, 1.0))

    def __sub__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        return Combined((self, other), (1.0, -1.0))

    def __rsub__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        return Combined((other, self), (1.0, -1.0))

    def __neg__(self) -> Combined:
        return Combined((self,), (-1.0,))

    def __mul__(self, weight: float) -> Combined:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        return Combined((self,), (float(weight),))

    __rmul__ = __mul__


class Combined(TaskTarget):
    """``y = sum_i c_i t_i(output)``: a weighted sum of targets with equal output shapes."""

    def __init__(self, terms: Sequence[Callable[[Any], torch.Tensor]], coefficients: Sequence[float]) -> None:
        if len(terms) != len(coefficients) or not terms:
            raise TargetError("Combined needs as many coefficients as terms, and at least one term")
        for term in terms:
            if not callable(term):
                raise TargetError(f"a combined target term must be callable; got {type(term).__name__}")
        self.terms = tuple(terms)
        self.coefficients = tuple(float(c) for c in coefficients)

    def for_image(self, index: int, copies: int) -> Combined:
        terms = tuple(t.for_image(index, copies) if isinstance(t, TaskTarget) else t for t in self.terms)
        return Combined(terms, self.coefficients)

    def __call__(self, output: Any) -> torch.Tensor:
        total = None
        for term, coefficient in zip(self.terms, self.coefficients):
            scores = _scalars(term, output)
            if total is not None and scores.shape != total.shape:
                raise TargetError(
                    f"combined targets must give equal shapes; got {tuple(total.shape)} and {tuple(scores.shape)}"
                )
            total = coefficient * scores if total is None else total + coefficient * scores
        return total

    def __repr__(self) -> str:
        return " + ".join(f"{c:g}*{t!r}" for t, c in zip(self.terms, self.coefficients))


class Stack(TaskTarget):
    """k targets side by side: ``(B, k)`` scalars, one map each from one forward pass."""

    def __init__(self, *targets: Callable[[Any], torch.Tensor]) -> None:
        if not targets:
            raise TargetError("Stack needs at least one target")
        self.targets = targets

    def for_image(self, index: int, copies: int) -> Stack:
        return Stack(*(t.for_image(index, copies) if isinstance(t, TaskTarget) else t for t in self.targets))

    def __call__(self, output: Any) -> torch.Tensor:
        columns = [_scalars(t, output) for t in self.targets]
        return torch.cat([c if c.dim() == 2 else c[:, None] for c in columns], dim=1)

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.targets))})"


# ----------------------------------------------------------------------------------------------
# classification


class ClassScore(TaskTarget):
    """One class's score: ``y = s_c`` with s = logits, softmax, log-softmax or sigmoid of the logits.

    ``classes``: None (each image's top-1 class), an int, B ints, or a (B, k) tensor (k maps per
    image). ``kind``: ``"logit"`` (the paper's pre-softmax score), ``"probability"`` (softmax),
    ``"log_probability"``, or ``"sigmoid"`` (multi-label heads, per-class probabilities). With
    ``classes=None`` the top-1 class is picked anew on every output (pin it for rescoring).
    """

    _per_image: ClassVar[dict[str, int]] = {"classes": 1}

    def __init__(self, classes: PerImage | None = None, kind: Kind = "logit", select: OutputSelector = None) -> None:
        self.classes = classes
        self.kind = _check_kind(kind)
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        logits = pick(output, self.select)
        if logits.dim() != 2:
            raise TargetError(f"ClassScore needs (B, num_classes) logits; got shape {tuple(logits.shape)}")
        if self.classes is None:
            indices, multi = logits.detach().argmax(1, keepdim=True), False
        else:
            indices, multi = per_image(self.classes, logits.shape[0], logits.device, "classes")
        _check_range(indices, logits.shape[1], "class", "classes")
        return _finish(class_scores(logits, self.kind).gather(1, indices), multi)

    def __repr__(self) -> str:
        return f"ClassScore({self.classes!r}, kind={self.kind!r})"


class WeightedClasses(TaskTarget):
    """A weighted set of classes: ``y = sum_c w_c s_c`` (s as in :class:`ClassScore`).

    ``weights``: a mapping ``{class: weight}``, a (C,) tensor for every image, or a (B, C) tensor.
    """

    _per_image: ClassVar[dict[str, int]] = {"weights": 2}

    def __init__(
        self,
        weights: Mapping[int, float] | torch.Tensor,
        kind: Kind = "logit",
        select: OutputSelector = None,
    ) -> None:
        if isinstance(weights, Mapping):
            if not weights:
                raise TargetError("weights is empty: give at least one {class: weight}")
            for key in weights:
                if isinstance(key, bool) or not isinstance(key, int):
                    raise TargetError(f"weights keys must be class indices (int); got {key!r}")
        elif not isinstance(weights, torch.Tensor) or weights.dim() not in (1, 2):
            raise TargetError("weights must be a {class: weight} mapping, a (C,) tensor or a (B, C) tensor")
        self.weights = weights
        self.kind = _check_kind(kind)
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        logits = pick(output, self.select)
        if logits.dim() != 2:
            raise TargetError(f"WeightedClasses needs (B, num_classes) logits; got shape {tuple(logits.shape)}")
        batch, num = logits.shape
        if isinstance(self.weights, Mapping):
            keys = torch.tensor(list(self.weights), dtype=torch.long)
            _check_range(keys, num, "class", "classes")
            weights = torch.zeros(num, dtype=logits.dtype, device=logits.device)
            weights[keys.to(logits.device)] = torch.tensor(
                [float(v) for v in self.weights.values()], dtype=logits.dtype, device=logits.device
            )
        else:
            weights = self.weights.to(device=logits.device, dtype=logits.dtype)
            if weights.shape[-1] != num or (weights.dim() == 2 and weights.shape[0] != batch):
                raise TargetError(
                    f"weights of shape {tuple(weights.shape)} do not fit logits of shape {(batch, num)}; "
                    f"expected ({num},) or ({batch}, {num})"
                )
        return (class_scores(logits, self.kind) * weights).sum(1)


# ----------------------------------------------------------------------------------------------
# semantic segmentation


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
        logits = pick(output, self.select, SEGMENTATION_KEYS)
        if logits.dim() != 4:
            raise TargetError(f"SegmentationScore needs (B, num_classes, H, W) logits; got shape {tuple(logits.shape)}")
        batch, num, height, width = logits.shape
        categories, multi = per_image(self.category, batch, logits.device, "category")
        _check_range(categories, num, "category", "classes")
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
        return _finish((selected * mask).sum((-2, -1)), multi)


# ----------------------------------------------------------------------------------------------
# object detection


def box_iou_pairs(boxes: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding (x0, y0, x1, y1) boxes, ``(..., 4), (..., 4) -> (...)``, differentiable."""
    low = torch.maximum(boxes[..., :2], references[..., :2])
    high = torch.minimum(boxes[..., 2:], references[..., 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)
    reference_area = (references[..., 2:] - references[..., :2]).clamp(min=0).prod(-1)
    return inter / (area + reference_area - inter).clamp(min=torch.finfo(inter.dtype).tiny)


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
            overlap = box_iou_pairs(boxes, references[b, j].expand_as(boxes)) if len(boxes) else boxes[:, 0]
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
                score = score + self.box_weight * box_iou_pairs(found["boxes"][indices[b]], references[b])
            rows.append(score)
        return _finish(torch.stack(rows), multi)


class DetectorAdapter(nn.Module):
    """Runs a torchvision detection model (Faster R-CNN, RetinaNet, FCOS, SSD) on a (B, C, H, W) batch.

    torchvision detectors take a *list* of 3-D images in [0, 1] (they normalise, resize and pad
    internally) and return a list of B dicts in eval mode. The adapter passes ``list(x)`` and returns
    that list for :class:`DetectionScore`. It also records how much of the padded batch the images
    cover, so :meth:`crop_padding` -- a pure slicing, usable as ``reshape=`` -- cuts a backbone
    feature map to the image (the detector pads the bottom and right up to a multiple of 32)::

        adapter = DetectorAdapter(fasterrcnn_mobilenet_v3_large_320_fpn(weights=...).eval())
        cam = GradCAM(adapter, adapter.default_layer, reshape=adapter.crop_padding)
        e = cam(images, DetectionScore(box=(x0, y0, x1, y1), box_weight=1.0))

    Images are independent (frozen batch norm, per-image proposals), so batches are exact. Input
    pixels are not normalised: pass images in [0, 1].
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(detector, "transform", None), nn.Module):
            raise TypeError(
                f"detector must be a torchvision detection model (with a .transform); got {type(detector).__name__}"
            )
        self.detector = detector
        self.covered: tuple[float, float] = (1.0, 1.0)

    @property
    def default_layer(self) -> str:
        """The deepest backbone stage (its output feeds every FPN level, so every detection); for SSD the
        base network's map that feeds every detection level: ``backbone.features`` (VGG), the first half
        ``backbone.features.0`` (SSDLite, whose second half already is one of its detection levels)."""
        body = getattr(getattr(self.detector, "backbone", None), "body", None)
        if isinstance(body, nn.Module):
            children = [name for name, _ in body.named_children()]
            if children:
                return f"detector.backbone.body.{children[-1]}"
        features = getattr(getattr(self.detector, "backbone", None), "features", None)
        if isinstance(features, nn.Sequential) and len(features):
            if all(isinstance(child, nn.Sequential) for child in features):  # SSDLite: called half by half
                return "detector.backbone.features.0"
            return "detector.backbone.features"
        backbone = getattr(self.detector, "backbone", None)
        if isinstance(backbone, nn.Module):
            return "detector.backbone"
        raise AttributeError(f"{type(self.detector).__name__} has no .backbone; pass layer= explicitly")

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        seen: list[Any] = []
        with forward_hook(self.detector.transform, lambda module, inputs, out: seen.append(out[0])):
            detections = self.detector(list(x.unbind(0)))
        if seen:
            images = seen[-1]
            padded = images.tensors.shape[-2:]
            height, width = images.image_sizes[0]
            self.covered = (height / padded[0], width / padded[1])
        return detections

    def crop_padding(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid[..., :ceil(u * h / H_pad), :ceil(v * w / W_pad)]``: the cells covering the image."""
        rows = max(1, math.ceil(grid.shape[-2] * self.covered[0] - 1e-6))
        cols = max(1, math.ceil(grid.shape[-1] * self.covered[1] - 1e-6))
        return grid[..., :rows, :cols]


# ----------------------------------------------------------------------------------------------
# embeddings (image-text, image-image)


def _embedding(output: Any, select: OutputSelector) -> torch.Tensor:
    embedding = pick(output, select, EMBEDDING_KEYS)
    if embedding.dim() > 2 and all(s == 1 for s in embedding.shape[2:]):
        embedding = embedding.flatten(1)
    if embedding.dim() != 2:
        raise TargetError(f"an embedding must be (B, D); got shape {tuple(embedding.shape)}; pass select=")
    return embedding


class EmbeddingSimilarity(TaskTarget):
    """Cosine similarity of the image embedding with a reference: ``y = e·r / (|e| |r|)``.

    The reference is a text embedding (CLIP-style prompt) or another image's embedding (see
    :func:`embed`). ``reference``: (D,) for every image -> (B,); (k, D): k references, one map
    each -> (B, k). With ``per_image=True``: (B, D) -> (B,) or (B, k, D) -> (B, k). The image
    embedding is a (B, D) output, or ``image_embeds`` / ``pooler_output`` of a ``ModelOutput``.
    """

    def __init__(self, reference: torch.Tensor, *, per_image: bool = False, select: OutputSelector = None) -> None:
        if not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
            raise TargetError("reference must be a floating-point embedding tensor")
        allowed = (2, 3) if per_image else (1, 2)
        if reference.dim() not in allowed:
            expected = "(B, D) or (B, k, D)" if per_image else "(D,) or (k, D)"
            raise TargetError(f"reference must be {expected}; got shape {tuple(reference.shape)}")
        self.reference = reference.detach()
        self.per_image = per_image
        self._per_image = {"reference": 2} if per_image else {}
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        embedding = _embedding(output, self.select)
        reference = self.reference.to(device=embedding.device, dtype=embedding.dtype)
        if reference.shape[-1] != embedding.shape[1]:
            raise TargetError(
                f"reference has dimension {reference.shape[-1]} but the image embedding has {embedding.shape[1]}"
            )
        if self.per_image and reference.shape[0] != embedding.shape[0]:
            raise TargetError(f"per-image reference has {reference.shape[0]} rows for {embedding.shape[0]} images")
        if self.per_image:
            reference = reference if reference.dim() == 3 else reference[:, None]
            multi = self.reference.dim() == 3
        else:
            reference = reference.expand(1, -1) if reference.dim() == 1 else reference
            reference = reference[None].expand(embedding.shape[0], -1, -1)
            multi = self.reference.dim() == 2
        return _finish(F.cosine_similarity(embedding[:, None, :], reference, dim=-1), multi)


def embed(
    model: nn.Module,
    x: torch.Tensor,
    *,
    select: OutputSelector = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The (N, D) embedding ``model(x, **forward_kwargs)`` gives, without gradients, in eval mode.

    For a reference image: ``EmbeddingSimilarity(embed(image_model, other_image), per_image=...)``.
    """
    with model_guard(model), torch.no_grad():
        return _embedding(model(x, **(forward_kwargs or {})), select).detach()


def text_embedding(
    model: nn.Module,
    texts: Sequence[str] | torch.Tensor,
    *,
    tokenizer: Any = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Text embeddings (N, D) of a CLIP-style model (``model.get_text_features``), without gradients.

    ``texts``: token ids (N, L), or strings with ``tokenizer`` (a callable returning ``input_ids`` /
    ``attention_mask``, or the name / local path of a Hugging Face tokenizer, which needs the
    ``hf`` extra).
    """
    if not callable(getattr(model, "get_text_features", None)):
        raise TargetError(f"{type(model).__name__} has no get_text_features(); embed the text with your model")
    if isinstance(texts, torch.Tensor):
        inputs: dict[str, Any] = {"input_ids": texts}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
    else:
        if isinstance(texts, str):
            texts = [texts]
        if tokenizer is None:
            raise TargetError("text strings need tokenizer= (a tokenizer object, or a Hugging Face name/path)")
        if isinstance(tokenizer, (str, Path)):
            transformers = require_extra("transformers", "hf", "a Hugging Face tokenizer")
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer))
        encoded = tokenizer(list(texts), padding=True, return_tensors="pt")
        inputs = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    with model_guard(model), torch.no_grad():
        features = model.get_text_features(**inputs)
    if not isinstance(features, torch.Tensor):  # transformers >= 5 returns a ModelOutput
        features = pick(features, None, ("text_embeds", "pooler_output"))
    return features.detach()


class KeywordImageInput(nn.Module):
    """Makes ``model(image=..., **kw)`` callable as ``adapter(x, **kw)`` for the explainers.

    For models whose image argument is not the first positional one, e.g. Hugging Face
    ``CLIPModel(input_ids=..., pixel_values=...)``::

        clip = KeywordImageInput(clip_model)                   # image passed as pixel_values=
        cam = GradCAM(clip, layer, reshape=TokenGrid(prefix=1))
        e = cam(x, ClassScore(0, select="logits_per_image"), forward_kwargs={"input_ids": ids})

    ``method`` calls another entry point instead of ``forward`` (``"get_image_features"``). Layer
    names gain the prefix ``model.``. Note: ``forward_kwargs`` tensors whose first dimension equals
    the batch size are treated as per-image by the engine (sliced per image): give k prompts as
    k != B rows, or one prompt per image.
    """

    def __init__(self, model: nn.Module, name: str = "pixel_values", method: str | None = None) -> None:
        super().__init__()
        if method is not None and not callable(getattr(model, method, None)):
            raise AttributeError(f"{type(model).__name__} has no method {method!r}")
        self.model = model
        self.name = name
        self.method = method

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        call = self.model if self.method is None else getattr(self.model, self.method)
        return call(**{self.name: x}, **kwargs)


# ----------------------------------------------------------------------------------------------
# sequence outputs (captioning, VQA)


def _sequence_logits(output: Any, select: OutputSelector) -> torch.Tensor:
    logits = pick(output, select)
    if logits.dim() != 3:
        raise TargetError(f"sequence targets need (B, T, vocab) logits; got shape {tuple(logits.shape)}")
    return logits


class TokenLogProbability(TaskTarget):
    """``y = log p(token | image, previous tokens) = log_softmax(logits[b, position])[token]``.

    ``position`` indexes the logits' T axis (an int or B ints). For a causal decoder fed
    ``input_ids``, the logits at position t-1 predict token t. ``token``: an int, B ints or a (B, k)
    tensor (k candidate words, one map each).
    """

    _per_image: ClassVar[dict[str, int]] = {"token": 1, "position": 1}

    def __init__(self, token: PerImage, position: int | Sequence[int] | torch.Tensor, select: OutputSelector = None):
        self.token = token
        self.position = position
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        logits = _sequence_logits(output, self.select)
        batch, length, vocab = logits.shape
        tokens, multi = per_image(self.token, batch, logits.device, "token")
        positions, position_multi = per_image(self.position, batch, logits.device, "position")
        if position_multi or positions.shape[1] != 1:
            raise TargetError("position must be an int or B ints")
        _check_range(tokens, vocab, "token", "vocabulary entries")
        _check_range(positions, length, "position", "positions")
        rows = logits[torch.arange(batch, device=logits.device), positions[:, 0]]  # (B, V)
        return _finish(rows.log_softmax(-1).gather(1, tokens), multi)


class SequenceLogProbability(TaskTarget):
    """``y = sum_t m_t log p(w_t | image, w_<t)``: the log-probability of a token sequence.

    ``tokens``: (T,) or (B, T) ids. ``shift=True`` (causal decoders fed the same ids, teacher
    forcing): token t is scored by the logits at t-1, for t >= max(start, 1). ``shift=False``
    (encoder-decoders given ``labels``-aligned logits): token t is scored by the logits at t, for
    t >= start. ``start`` skips a prompt (a question: the answer's score given the question is the
    sum over the answer's tokens). ``mask`` (T,) or (B, T) zeroes padding. ``per_token=True`` gives
    one scalar, hence one map, per scored token: (B, n).
    """

    _per_image: ClassVar[dict[str, int]] = {"tokens": 2, "mask": 2}

    def __init__(
        self,
        tokens: torch.Tensor | Sequence[int],
        *,
        start: int = 0,
        mask: torch.Tensor | None = None,
        shift: bool = True,
        per_token: bool = False,
        select: OutputSelector = None,
    ) -> None:
        self.tokens = torch.as_tensor(tokens)
        if self.tokens.dim() not in (1, 2) or self.tokens.is_floating_point():
            raise TargetError(f"tokens must be (T,) or (B, T) integer ids; got shape {tuple(self.tokens.shape)}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise TargetError(f"start must be an integer >= 0; got {start!r}")
        self.start = start
        self.mask = mask
        self.shift = shift
        self.per_token = per_token
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        logits = _sequence_logits(output, self.select)
        batch, length, vocab = logits.shape
        tokens = self.tokens.to(logits.device, torch.long)
        tokens = tokens.expand(batch, -1) if tokens.dim() == 1 else tokens
        if tokens.shape[0] != batch:
            raise TargetError(f"tokens has {tokens.shape[0]} rows for {batch} images")
        _check_range(tokens, vocab, "token", "vocabulary entries")
        offset = 1 if self.shift else 0
        first = max(self.start, offset)
        count = tokens.shape[1]
        if count - first < 1 or count - offset > length:
            raise TargetError(
                f"{count} tokens (start={self.start}, shift={self.shift}) do not fit logits of length {length}"
            )
        chosen = tokens[:, first:]
        log_probs = logits[:, first - offset : count - offset].log_softmax(-1).gather(2, chosen[..., None])[..., 0]
        if self.mask is not None:
            mask = torch.as_tensor(self.mask, device=logits.device).to(log_probs.dtype)
            mask = mask.expand(batch, -1) if mask.dim() == 1 else mask
            if mask.shape != tokens.shape:
                raise TargetError(f"mask must have the shape of tokens {tuple(tokens.shape)}; got {tuple(mask.shape)}")
            log_probs = log_probs * mask[:, first:]
        return log_probs if self.per_token else log_probs.sum(1)


def answer_score(
    answer: PerImage | torch.Tensor,
    *,
    question_length: int | None = None,
    kind: Kind = "logit",
    select: OutputSelector = None,
) -> TaskTarget:
    """An answer's score given a question (VQA), for the two kinds of VQA model.

    Classifier heads over an answer vocabulary (``answer`` = answer index): :class:`ClassScore`
    (ViLT-style heads are multi-label: ``kind="sigmoid"``). Generative models (``answer`` = the
    token ids of question + answer fed as ``input_ids``, ``question_length`` = number of question
    tokens): :class:`SequenceLogProbability` over the answer tokens.
    """
    if question_length is None:
        return ClassScore(answer, kind=kind, select=select)
    return SequenceLogProbability(answer, start=question_length, select=select)


# ----------------------------------------------------------------------------------------------
# CLI entry point

TASKS: dict[str, str] = {
    "class": "a class logit (the paper's y^c)",
    "probability": "a class's softmax probability",
    "log-probability": "a class's log-softmax",
    "sigmoid": "a class's sigmoid probability (multi-label heads)",
    "segmentation": "a class's logits summed over a mask (default: the pixels predicted as that class)",
    "detection": "one detection's score, chosen by index or matched to a box (+ box_weight x IoU)",
    "similarity": "cosine similarity of the image embedding with a reference embedding",
}


def _load_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    path = Path(value)
    if not path.is_file():
        raise TargetError(f"{name} file not found: {path}")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path))
    if path.suffix in (".pt", ".pth"):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, torch.Tensor):
            raise TargetError(f"{name} file {path} holds a {type(loaded).__name__}, not a tensor")
        return loaded
    raise TargetError(f"{name} must be a .npy or .pt file; got {path.name}")


def _parse_box(box: Any) -> Any:
    if isinstance(box, str):
        try:
            values = [float(v) for v in box.replace(" ", ",").split(",") if v]
        except ValueError:
            raise TargetError(f"box must be 'x0,y0,x1,y1'; got {box!r}") from None
        if len(values) != 4:
            raise TargetError(f"box must be 'x0,y0,x1,y1' (4 numbers); got {box!r}")
        return values
    return box


def target_from_options(
    task: str,
    *,
    category: int | None = None,
    box: str | Sequence[float] | torch.Tensor | None = None,
    detection: int | None = None,
    label: int | None = None,
    iou_threshold: float = 0.5,
    box_weight: float = 0.0,
    mask: str | Path | torch.Tensor | None = None,
    embedding: str | Path | torch.Tensor | None = None,
    select: OutputSelector = None,
) -> TaskTarget:
    """A target from command-line-like options (``gradcam explain --task ...``).

    ``task`` is one of :data:`TASKS`. ``category``: the class (top-1 when None for the class tasks;
    required for segmentation). ``box``: 'x0,y0,x1,y1' or 4 numbers in the input's pixels.
    ``mask`` / ``embedding``: a tensor or a .npy / .pt file. Returns the target to pass as
    ``cam(x, target)``.
    """
    if task in ("class", "probability", "log-probability", "sigmoid"):
        kind = {"class": "logit", "log-probability": "log_probability"}.get(task, task)
        return ClassScore(category, kind=kind, select=select)
    if task == "segmentation":
        if category is None:
            raise TargetError("--task segmentation needs a class (--class INDEX)")
        return SegmentationScore(category, None if mask is None else _load_tensor(mask, "mask"), select=select)
    if task == "detection":
        return DetectionScore(
            detection,
            None if box is None else _parse_box(box),
            label=label,
            iou_threshold=iou_threshold,
            box_weight=box_weight,
            select=select,
        )
    if task == "similarity":
        if embedding is None:
            raise TargetError("--task similarity needs a reference embedding (--embedding FILE.npy|.pt)")
        reference = _load_tensor(embedding, "embedding").float()
        return EmbeddingSimilarity(reference.squeeze(0) if reference.dim() == 2 and len(reference) == 1 else reference,
                                   select=select)  # fmt: skip
    raise TargetError(f"unknown task {task!r}; available: {', '.join(TASKS)}")


__all__ = [
    "KINDS",
    "TASKS",
    "ClassScore",
    "Combined",
    "DetectionScore",
    "DetectorAdapter",
    "EmbeddingSimilarity",
    "KeywordImageInput",
    "SegmentationScore",
    "SequenceLogProbability",
    "Stack",
    "TaskTarget",
    "TokenLogProbability",
    "WeightedClasses",
    "answer_score",
    "box_iou_pairs",
    "class_scores",
    "embed",
    "match_detections",
    "pick",
    "require_extra",
    "target_from_options",
    "text_embedding",
]
