"""The method objects of one job, and one same-size group of images explained by them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..explanation import Explanation
from ..imaging.geometry import (
    Geometry,
)
from ..methods import METHODS, create_explainer
from ..methods.base import Explainer
from ..targets import DetectorAdapter, TopK
from .settings import ExplainSettings
from .targets import ItemTargets, TaskRunner, class_name


def as_detector(model: nn.Module) -> nn.Module:
    """A torchvision detection model wrapped in :class:`DetectorAdapter` (other models unchanged)."""
    if isinstance(model, DetectorAdapter):
        return model
    transform = getattr(model, "transform", None)
    if type(transform).__name__ == "GeneralizedRCNNTransform" and isinstance(transform, nn.Module):
        return DetectorAdapter(model)
    return model


def _layer_name(model: nn.Module, requested: str | None) -> str | None:
    """The layer to explain: the request (detector layers may omit the adapter's ``detector.``
    prefix), or None: the explainers' automatic choice, :func:`gradcam.layers.auto_layer` (the same
    function as the API's and ``gradcam layers``': token blocks re-indexed to their grid, a detector's
    backbone cut to the image, a dense model's backbone)."""
    if requested is not None and isinstance(model, DetectorAdapter) and not requested.startswith("detector."):
        names = {name for name, _ in model.detector.named_modules()}
        if requested in names:
            return f"detector.{requested}"
    return requested


class _Explainers:
    """The method objects for one job, created on the first batch (the token reshape is read from it)."""

    def __init__(self, model: nn.Module, layer: str | None, methods: Sequence[str]) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
        self.model = model
        self.requested = _layer_name(model, layer)
        self.methods = tuple(methods)
        self.by_name: dict[str, Explainer] = {}

    def _create(self) -> None:
        """Build every method: detector backbones get ``crop_padding`` (the padded border is cut off),
        other layers ``reshape="auto"``: token layers (ViT, Swin, CLIP) get the grid read from the first
        call's activations (no extra forward pass: one batch-1 forward of Lite0 is ~24 ms per job)."""
        reshape: Any = None
        if isinstance(self.model, DetectorAdapter):
            if self.requested is not None and self.requested.startswith("detector.backbone"):
                reshape = self.model.crop_padding
        elif self.requested is not None:
            reshape = "auto"
        for name in self.methods:
            options = {"reshape": reshape} if reshape is not None and METHODS[name].uses_layer else {}
            self.by_name[name] = create_explainer(name, self.model, self.requested, **options)

    @property
    def layer(self) -> str | None:
        for explainer in self.by_name.values():
            name = getattr(explainer, "layer_name", None)
            if name is not None:
                return name
        return None

    def run(
        self, x: torch.Tensor, settings: ExplainSettings
    ) -> tuple[dict[str, Explanation], torch.Tensor, torch.Tensor]:
        """All methods on one batch; the first call chooses the classes, the others reuse them."""
        if not self.by_name:
            self._create()
        first_target: Any = (
            torch.tensor(settings.targets, device=x.device).expand(x.shape[0], -1)
            if settings.targets
            else TopK(settings.top_k)
        )
        results: dict[str, Explanation] = {}
        classes = logits = None
        for name, explainer in self.by_name.items():
            target = first_target if classes is None else classes
            results[name] = explainer(x, target, **METHODS[name].call_options)
            if classes is None:
                classes, logits = results[name].classes, results[name].logits
        return results, classes, logits

    def run_target(self, x: torch.Tensor, target: Any) -> dict[str, Explanation]:
        """All methods on one batch for the same task target."""
        if not self.by_name:
            self._create()
        return {name: e(x, target, **METHODS[name].call_options) for name, e in self.by_name.items()}


def _per_map(tensor: torch.Tensor, multi: bool) -> torch.Tensor:
    """Give single-target results the k axis (dim 1) of multi-target ones."""
    return tensor if multi else tensor.unsqueeze(1)


def _explain_group(
    x: torch.Tensor,
    geometries: Sequence[Geometry],
    explainers: _Explainers,
    runner: TaskRunner | None,
    settings: ExplainSettings,
    labels: Sequence[str] | None,
) -> tuple[dict[str, Explanation], list[int], list[tuple[int, str]], list[ItemTargets]]:
    """Explain one same-size group: ``(results, kept positions, failures, per kept image its targets)``."""
    if runner is None:  # the paper's class logit: the classes come free with the first explanation
        results, classes, logits = explainers.run(x, settings)
        probabilities = logits.float().softmax(dim=1)
        top = probabilities.topk(min(settings.show_top, probabilities.shape[1]), dim=1)
        items = []
        for b, ids in enumerate(classes.tolist()):
            predictions = [
                {"index": i, "label": class_name(i, labels), "probability": p}
                for p, i in zip(top.values[b].tolist(), top.indices[b].tolist())
            ]
            items.append(ItemTargets(ids, [class_name(i, labels) for i in ids], ids, predictions))
        return results, list(range(len(x))), [], items
    target, keep, failures, items = runner.prepare(x, geometries, settings)
    if not keep:
        return {}, [], failures, []
    if len(keep) < len(x):
        x = x[torch.tensor(keep, device=x.device)]
    return explainers.run_target(x, target), keep, failures, items
