"""What every model source returns: :class:`LoadedModel`, its preprocessing presets, and the final checks.

:func:`finish` is the one exit of every loader: it applies a labels file (checking its length against
the model's outputs), keeps the default layer only when the module has it, moves the model to the
device and puts it in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradcam.errors import GradCAMError
from gradcam.imaging.geometry import Geometry, PreprocessConfig

from .labels import read_labels_file

#: What a loaded model's output is: class scores, detections, per-pixel class scores or an embedding.
MODEL_TASKS = ("classification", "detection", "segmentation", "embedding")

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

# What moving a module to a device raises: a bad device string (RuntimeError), an unavailable backend
# (torch built without CUDA asserts), a module that cannot move (TypeError, ValueError).
_DEVICE_ERRORS = (RuntimeError, AssertionError, TypeError, ValueError)
# What a forward pass of an unknown model on a blank image commonly raises when the input does not suit it.
_PROBE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, AttributeError, KeyError, NotImplementedError)


class ModelLoadError(GradCAMError):
    """A model or its weights could not be loaded; the message says what to do.

    ``argument`` names the argument at fault when it is not the model spec: ``"weights"`` for a weights
    file that cannot be read or does not fit (the command line shows it as ``--weights``).
    """

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


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


@dataclass(frozen=True)
class LoadRequest:
    """What the caller of ``load_model`` asked for besides the source: the spec as written, a weights
    file, the device and a labels file (one label per line)."""

    spec: str
    weights: str | Path | None = None
    device: str | torch.device = "cpu"
    labels: str | Path | None = None


def _file_labels(
    model: nn.Module, preprocess: PreprocessConfig, labels_file: str | Path, num_outputs: int | None
) -> list[str]:
    """The labels in ``labels_file``, checked against the model's number of outputs."""
    try:
        labels = read_labels_file(labels_file)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read labels file {labels_file}: {exc}") from exc
    if num_outputs is None:
        num_outputs = probe_num_outputs(model, preprocess)
    if num_outputs is not None and num_outputs != len(labels):
        raise ModelLoadError(
            f"labels file {labels_file} has {len(labels)} labels but the model has {num_outputs} outputs"
        )
    return labels


def finish(
    model: nn.Module,
    name: str,
    preprocess: PreprocessConfig,
    request: LoadRequest,
    *,
    labels: list[str] | None = None,
    default_layer: str | None = None,
    num_outputs: int | None = None,
    task: str = "classification",
    text_encoder: Callable[[Sequence[str]], torch.Tensor] | None = None,
) -> LoadedModel:
    """Apply ``request.labels`` (or drop ``labels`` whose count is not the number of outputs), check
    the default layer and the task, move the model to ``request.device`` and put it in eval mode."""
    if request.labels is not None:
        labels = _file_labels(model, preprocess, request.labels, num_outputs)
    elif labels is not None and num_outputs is not None and num_outputs != len(labels):
        labels = None
    if default_layer is not None and default_layer not in {n for n, _ in model.named_modules()}:
        default_layer = None
    try:
        model = model.to(request.device)
    except _DEVICE_ERRORS as exc:
        raise ModelLoadError(f"cannot move the model to device {request.device!r}: {exc}") from exc
    with contextlib.suppress(NotImplementedError):  # torch.export modules keep the mode they were exported in
        model.eval()
    if task not in MODEL_TASKS:
        raise ModelLoadError(f"task must be one of {', '.join(MODEL_TASKS)}; got {task!r}")
    return LoadedModel(
        model=model, name=name, preprocess=preprocess, labels=labels, default_layer=default_layer, task=task,
        text_encoder=text_encoder,
    )  # fmt: skip


def probe_num_outputs(model: nn.Module, preprocess: PreprocessConfig) -> int | None:
    """Number of classes found by one forward pass on a blank image; None when that does not work
    (the model does not take such an input, or its output is not (1, classes))."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, 3, preprocess.input_size, preprocess.input_size, device=device)
    was_training = getattr(model, "training", False)
    with contextlib.suppress(NotImplementedError):
        model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except _PROBE_ERRORS:  # the count stays unknown and the labels file is taken as it is
        return None
    finally:
        if was_training:
            model.train()
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, torch.Tensor) and out.ndim == 2:
        return int(out.shape[1])
    return None
