"""``timm:NAME``: a timm architecture with weights from a file (timm is an optional extra)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from gradcam.imaging.geometry import PreprocessConfig

from ..labels import imagenet_labels
from ..loaded import IMAGENET_PREPROCESS, LoadedModel, LoadRequest, ModelLoadError, finish
from ..weights import load_into, load_state_dict_file
from .tv import did_you_mean


def timm_preprocess(cfg: Mapping[str, Any]) -> PreprocessConfig:
    """PreprocessConfig from a timm ``pretrained_cfg`` (input_size, crop_pct, interpolation, mean, std)."""
    try:
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        return PreprocessConfig(
            input_size=size,
            resize_size=math.floor(size / crop_pct),
            mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_PREPROCESS.mean)),
            std=tuple(float(v) for v in cfg.get("std", IMAGENET_PREPROCESS.std)),
            interpolation=str(cfg.get("interpolation") or "bicubic"),
        )
    except (TypeError, ValueError):
        return IMAGENET_PREPROCESS


def timm_layer(model: nn.Module) -> str | None:
    """The last spatial feature layer of a timm CNN (``bn2`` for EfficientNets); None for transformers."""
    if hasattr(model, "patch_embed"):
        return None
    names = {n for n, _ in model.named_modules()}
    if {"conv_head", "bn2"} <= names:
        return "bn2"
    info = getattr(model, "feature_info", None)
    try:
        return str(info[-1]["module"]) if info else None
    except (TypeError, KeyError, IndexError):
        return None


def load(target: str, request: LoadRequest) -> LoadedModel:
    """timm model ``target`` holding ``request.weights`` (its head resized to the file's classes)."""
    try:
        import timm
    except ImportError as exc:
        raise ModelLoadError(f'timm:{target} needs timm, an optional extra: pip install "gradcam[timm]"') from exc
    if not timm.is_model(target):
        raise ModelLoadError(f"unknown timm model {target!r}.{did_you_mean(target, timm.list_models())}")
    if request.weights is None:
        raise ModelLoadError(
            f"timm:{target} needs --weights FILE (a state dict, or a checkpoint with 'state_dict' or 'model'); "
            "gradcam never downloads weights"
        )
    state = load_state_dict_file(request.weights)
    model = timm.create_model(target, pretrained=False)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    classifier = cfg.get("classifier")
    if isinstance(classifier, str) and f"{classifier}.weight" in state:
        n = int(state[f"{classifier}.weight"].shape[0])
        if n != model.num_classes:
            model = timm.create_model(target, pretrained=False, num_classes=n)
    load_into(model, state, str(request.weights))
    num_classes = int(getattr(model, "num_classes", 0)) or None
    labels = imagenet_labels() if num_classes == 1000 else None
    return finish(
        model, f"timm:{target}", timm_preprocess(cfg), request, labels=labels, default_layer=timm_layer(model),
        num_outputs=num_classes,
    )  # fmt: skip
