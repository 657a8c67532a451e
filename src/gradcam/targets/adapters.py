"""Adapters for models that do not take a plain ``(B, C, H, W)`` batch as their first argument.

:class:`DetectorAdapter`: torchvision detection models (which take a list of 3-D images);
:class:`KeywordImageInput`: models that take the image as a keyword (``CLIPModel(pixel_values=...)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..capture import forward_hook


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
