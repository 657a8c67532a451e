"""gradcam: visual explanations for any PyTorch model (Grad-CAM and its family).

Quick start::

    import gradcam
    cam = gradcam.GradCAM(model)            # layer chosen automatically
    e = cam(x)                              # x: (B, C, H, W); explains each image's top-1 class
    e.heatmap                               # (B, H, W) in [0, 1]
"""

from __future__ import annotations

from . import smoothing
from .errors import GradCAMError, InputError, LayerError, MethodError, TargetError
from .explanation import Explanation
from .methods import (
    CAM,
    FEM,
    ISCAM,
    KPCACAM,
    METHODS,
    SSCAM,
    AblationCAM,
    Concepts,
    DeepFeatureFactorization,
    EigenCAM,
    EigenGradCAM,
    Explainer,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    InputGradient,
    IntegratedGradients,
    LayerCAM,
    MultiLayerCAM,
    RefineCAM,
    ScoreCAM,
    ShapleyCAM,
    SmoothGrad,
    SmoothGradCAMPlusPlus,
    XGradCAM,
    available_methods,
    create_explainer,
    deep_feature_factorization,
)
from .targets import (
    ClassScore,
    DetectionScore,
    DetectorAdapter,
    EmbeddingSimilarity,
    KeywordImageInput,
    TopK,
    embed,
    text_embedding,
)

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "SSCAM",
    "AblationCAM",
    "ClassScore",
    "Concepts",
    "DeepFeatureFactorization",
    "DetectionScore",
    "DetectorAdapter",
    "EigenCAM",
    "EigenGradCAM",
    "EmbeddingSimilarity",
    "Explainer",
    "Explanation",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMError",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputError",
    "InputGradient",
    "IntegratedGradients",
    "KeywordImageInput",
    "LayerCAM",
    "LayerError",
    "MethodError",
    "MultiLayerCAM",
    "RefineCAM",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGrad",
    "SmoothGradCAMPlusPlus",
    "TargetError",
    "TopK",
    "XGradCAM",
    "__version__",
    "available_methods",
    "create_explainer",
    "deep_feature_factorization",
    "embed",
    "smoothing",
    "text_embedding",
]
