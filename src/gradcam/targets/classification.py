"""Classification targets: one class's score, or a weighted set of classes.

``ClassScore(c, kind)``: ``y = s_c``; ``WeightedClasses(w, kind)``: ``y = sum_c w_c s_c``, where s is the
logits (the Grad-CAM paper's pre-softmax ``y^c``), their softmax, log-softmax or sigmoid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from ..errors import TargetError
from .composition import PerImage, TaskTarget, check_range, finish, per_image
from .resolution import OutputSelector, select_output

Kind = Literal["logit", "probability", "log_probability", "sigmoid"]
KINDS: tuple[str, ...] = ("logit", "probability", "log_probability", "sigmoid")


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
        logits = select_output(output, self.select)
        if logits.dim() != 2:
            raise TargetError(f"ClassScore needs (B, num_classes) logits; got shape {tuple(logits.shape)}")
        if self.classes is None:
            indices, multi = logits.detach().argmax(1, keepdim=True), False
        else:
            indices, multi = per_image(self.classes, logits.shape[0], logits.device, "classes")
        check_range(indices, logits.shape[1], "class", "classes")
        return finish(class_scores(logits, self.kind).gather(1, indices), multi)

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
        logits = select_output(output, self.select)
        if logits.dim() != 2:
            raise TargetError(f"WeightedClasses needs (B, num_classes) logits; got shape {tuple(logits.shape)}")
        batch, num = logits.shape
        if isinstance(self.weights, Mapping):
            keys = torch.tensor(list(self.weights), dtype=torch.long)
            check_range(keys, num, "class", "classes")
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
