"""``torchvision:NAME``: torchvision classifiers (and, through :mod:`.tv_dense`, detectors and
segmenters) with weights from a file or torch's local hub cache; nothing is downloaded."""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..loaded import IMAGENET_PREPROCESS, LoadedModel, LoadRequest, ModelLoadError, finish
from ..weights import copy_state, load_into, load_state_dict_file
from . import tv_build

# What a torchvision builder raises for options that do not suit the architecture.
BUILD_ERRORS = (RuntimeError, ValueError, TypeError, KeyError, NotImplementedError)
# What reading a weights enum's transforms raises when they are not an image-classification preset.
TRANSFORM_ERRORS = (AttributeError, TypeError, ValueError, IndexError)

_TV_LAYERS: tuple[tuple[str, str], ...] = (
    ("resnet", "layer4"),
    ("resnext", "layer4"),
    ("wide_resnet", "layer4"),
    ("vgg", "features"),
    ("alexnet", "features"),
    ("squeezenet", "features"),
    ("densenet", "features"),
    ("mobilenet", "features"),
    ("efficientnet", "features"),
    ("convnext", "features"),
    ("regnet", "trunk_output"),
    ("mnasnet", "layers"),
    ("shufflenet", "conv5"),
    ("googlenet", "inception5b"),
    ("inception", "Mixed_7c"),
)


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def torchvision_weights_cache_path(name: str) -> Path:
    """Where torch's hub cache keeps torchvision model ``name``'s default weights (may not exist)."""
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    filename = Path(urlparse(weights_enum.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def weights_and_state(name: str, weights: str | Path | None) -> tuple[Any, Path, OrderedDict[str, torch.Tensor]]:
    """``name``'s default weights enum, the weights file (``weights`` or the hub cache) and its state."""
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    if weights is None:
        cached = torchvision_weights_cache_path(name)
        if not cached.is_file():
            raise ModelLoadError(
                f"no weights for torchvision:{name} on this machine, and gradcam never downloads. Put the "
                f"file {cached.name} (from {weights_enum.url}) at {cached}, or pass --weights FILE."
            )
        weights = cached
    return weights_enum, Path(weights), load_state_dict_file(weights)


def build_pretrained(name: str, weights_enum: Any, state: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """Model ``name`` shaped as torchvision shapes it for ``weights_enum``, holding ``state``; None when
    ``state`` does not fit that shape (a fine-tuned model: the caller builds for the file instead)."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    try:
        model = builder(**tv_build.pretrained_kwargs(builder, weights_enum, name))
    except BUILD_ERRORS as exc:
        raise ModelLoadError(f"cannot build torchvision:{name} for its {weights_enum} weights: {exc}") from exc
    model = tv_build.before_load(model, name)
    try:  # strict, as torchvision loads its own files (FrozenBatchNorm2d drops num_batches_tracked itself)
        model.load_state_dict(copy_state(state), strict=True)  # a copy: FrozenBatchNorm2d deletes keys
    except (RuntimeError, ValueError, KeyError):
        return None
    return tv_build.after_load(model, name, weights_enum)


def classification_preprocess(weights_enum: Any) -> Any:
    """Resize/crop/mean/std/interpolation of a weights enum's transforms() (ImageNet's when unreadable)."""
    from gradcam.imaging.geometry import PreprocessConfig

    try:
        t = weights_enum.transforms()
        crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else int(t.crop_size)
        resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else int(t.resize_size)
        interpolation = getattr(t.interpolation, "value", str(t.interpolation))
        return PreprocessConfig(
            input_size=int(crop),
            resize_size=int(resize),
            mean=tuple(float(v) for v in t.mean),
            std=tuple(float(v) for v in t.std),
            interpolation=str(interpolation),
        )
    except TRANSFORM_ERRORS:
        return IMAGENET_PREPROCESS


def default_layer(name: str, model: nn.Module) -> str | None:
    """A good Grad-CAM layer for a torchvision classifier (the last spatial feature map), or None."""
    for prefix, layer in _TV_LAYERS:
        if name.startswith(prefix):
            if layer == "features" and name.startswith(("vgg", "alexnet")):
                # the last ReLU before the final max-pool keeps the finest spatial resolution
                features = model.get_submodule("features")
                relus = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)]
                return f"features.{relus[-1]}" if relus else layer
            return layer
    return None  # transformers (vit, swin, maxvit): let the engine decide


def densenet_rename(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Old torchvision DenseNet files name layers 'norm.1'; current modules say 'norm1'."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        match = pattern.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return copy_state(out, getattr(state, "_metadata", None))


def _head_key(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """The weight key of the model's last Linear layer (its classifier), if the file has it too."""
    last: str | None = None
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = f"{mod_name}.weight"
    if last is not None and last in state and state[last].ndim == 2:
        return last
    return None


def _linear_outputs(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _build_finetuned(name: str, state: Mapping[str, torch.Tensor], source: str) -> tuple[nn.Module, int | None]:
    """The plain architecture with as many classes as the file's head has; returns it and that count
    (None when the head matches the default)."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    model = builder(weights=None)
    head = _head_key(model, state)
    num_classes = None
    if head is not None and state[head].shape[0] != model.get_parameter(head).shape[0]:
        num_classes = int(state[head].shape[0])
        model = builder(weights=None, num_classes=num_classes)
    load_into(model, state, source)
    return model, num_classes


def _load_classifier(name: str, request: LoadRequest) -> LoadedModel:
    weights_enum, path, state = weights_and_state(name, request.weights)
    state = densenet_rename(state)
    categories = list(weights_enum.meta.get("categories") or []) or None
    model = build_pretrained(name, weights_enum, state)
    if model is None:  # a fine-tuned model: same architecture, maybe a different number of classes
        model, num_classes = _build_finetuned(name, state, str(path))
        if num_classes is not None and num_classes != len(categories or []):
            categories = None
    return finish(
        model, f"torchvision:{name}", classification_preprocess(weights_enum), request, labels=categories,
        default_layer=default_layer(name, model),  # transformers: None, the explainers' automatic choice
        num_outputs=_linear_outputs(model),
    )  # fmt: skip


def load(target: str, request: LoadRequest) -> LoadedModel:
    """``torchvision:NAME``: a classifier, or a detection / segmentation model (:mod:`.tv_dense`)."""
    import torchvision

    from . import tv_dense

    dense = tv_dense.dense_models()
    if target in dense:
        return tv_dense.load_dense(target, dense[target], request)
    available = torchvision.models.list_models(module=torchvision.models)
    if target not in available:
        raise ModelLoadError(
            f"unknown torchvision classification model {target!r}.{did_you_mean(target, available + list(dense))} "
            "Run `gradcam models --all` for the list (detection and segmentation models too)."
        )
    return _load_classifier(target, request)
