"""gradcam: visual explanations for any PyTorch model (Grad-CAM and its family).

Quick start::

    import gradcam
    cam = gradcam.GradCAM(model)            # layer chosen automatically
    e = cam(x)                              # x: (B, C, H, W); explains each image's top-1 class
    e.heatmap                               # (B, H, W) in [0, 1]
"""

from __future__ import annotations

from .errors import GradCAMError, InputError, LayerError, MethodError, TargetError
from .explanation import Explanation
from .targets import TopK
from .methods import (
    CAM,
    METHODS,
    Explainer,
    GradCAM,
    GuidedBackprop,
    GuidedGradCAM,
    available_methods,
    create_explainer,
)

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "METHODS",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMError",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputError",
    "LayerError",
    "MethodError",
    "TargetError",
    "TopK",
    "__version__",
    "available_methods",
    "create_explainer",
]
