"""``torchvision:NAME`` for detection and segmentation models: built as for their pretrained weights
(see :mod:`.tv_build`) or, for a fine-tuned file, for its number of classes; detectors come wrapped in
:class:`gradcam.targets.DetectorAdapter`, so the model takes a (B, 3, H, W) batch in [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..loaded import IMAGENET_PREPROCESS, LoadedModel, LoadRequest, ModelLoadError, WholeImagePreprocess, finish
from ..weights import load_into
from .tv import BUILD_ERRORS, TRANSFORM_ERRORS, build_pretrained, weights_and_state


def dense_models() -> dict[str, str]:
    """torchvision's detection and segmentation model names -> 'detection' | 'segmentation'."""
    import torchvision

    names = {name: "detection" for name in torchvision.models.list_models(module=torchvision.models.detection)}
    names.update(
        (name, "segmentation") for name in torchvision.models.list_models(module=torchvision.models.segmentation)
    )
    return names


def dense_num_classes(task: str, state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes a detection / segmentation weights file was trained for (None: unknown)."""
    keys = (
        ("roi_heads.box_predictor.cls_score.weight",)
        if task == "detection"
        else ("classifier.4.weight", "classifier.low_classifier.weight")
    )
    for key in keys:
        if key in state and state[key].dim() >= 1:
            return int(state[key].shape[0])
    return None


def dense_preprocess(task: str, weights_enum: Any, model: nn.Module) -> WholeImagePreprocess:
    """Detectors: the image as it is, in [0, 1] (the model normalises and resizes inside).
    Segmentation: the weights' transforms (shorter side resized, ImageNet mean/std, no crop)."""
    if task == "detection":
        min_size = getattr(getattr(model, "transform", None), "min_size", (800,))
        return WholeImagePreprocess(
            input_size=int(min_size[0]), resize_size=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
        )
    try:
        t = weights_enum.transforms()
        resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else int(t.resize_size)
        interpolation = str(getattr(t.interpolation, "value", t.interpolation))
        mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    except TRANSFORM_ERRORS:
        resize, interpolation = 520, "bilinear"
        mean, std = IMAGENET_PREPROCESS.mean, IMAGENET_PREPROCESS.std
    return WholeImagePreprocess(
        input_size=int(resize), resize_size=int(resize), mean=mean, std=std, interpolation=interpolation
    )


def _build_finetuned(name: str, task: str, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """The architecture for a fine-tuned file: its number of classes, (segmentation) an auxiliary head
    only when the file has one, and no backbone weights (the builders would otherwise fetch them)."""
    import torchvision

    options: dict[str, Any] = {"weights": None, "weights_backbone": None}
    num_classes = dense_num_classes(task, state)
    if num_classes is not None:
        options["num_classes"] = num_classes
    if task == "segmentation" and any(k.startswith("aux_classifier.") for k in state):
        options["aux_loss"] = True
    try:
        model = torchvision.models.get_model_builder(name)(**options)
    except BUILD_ERRORS as exc:
        raise ModelLoadError(f"cannot build torchvision:{name} for the weights in {source}: {exc}") from exc
    load_into(model, state, source)
    return model


def load_dense(name: str, task: str, request: LoadRequest) -> LoadedModel:
    """torchvision detection or segmentation model ``name`` (``task``), never downloading."""
    from gradcam.targets import DetectorAdapter

    weights_enum, path, state = weights_and_state(name, request.weights)
    categories = list(weights_enum.meta.get("categories") or []) or None
    model = build_pretrained(name, weights_enum, state)
    if model is None:
        model = _build_finetuned(name, task, state, str(path))
        num_classes = dense_num_classes(task, state)
        if num_classes is not None and num_classes != len(categories or []):
            categories = None
    preprocess = dense_preprocess(task, weights_enum, model)
    if task == "detection":
        model = DetectorAdapter(model.eval())
        layer = model.default_layer
        predictor = getattr(getattr(model.detector, "roi_heads", None), "box_predictor", None)
        num_outputs = getattr(getattr(predictor, "cls_score", None), "out_features", None)
    else:
        body = getattr(model, "backbone", None)
        children = [child for child, _ in body.named_children()] if isinstance(body, nn.Module) else []
        layer = f"backbone.{children[-1]}" if children else None
        num_outputs = dense_num_classes(task, model.state_dict())
    return finish(
        model, f"torchvision:{name}", preprocess, request, labels=categories, default_layer=layer,
        num_outputs=num_outputs, task=task,
    )  # fmt: skip
