"""The methods, one small class each, and the registry the CLI and the contract tests list from.

Deep Feature Factorization (:class:`DeepFeatureFactorization`) is not in the registry: it returns concepts
(:class:`Concepts`), not an :class:`~gradcam.Explanation` of targets; ``gradcam explain --method dff`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .ablationcam import AblationCAM
from .base import Explainer, LayerMethod, MapContext
from .cam import CAM
from .dff import Concepts, DeepFeatureFactorization, deep_feature_factorization
from .eigencam import EigenCAM
from .eigengradcam import EigenGradCAM
from .elementwise import GradCAMElementWise
from .fem import FEM
from .finercam import FinerCAM
from .fullgrad import FullGrad
from .fusion import MultiLayerCAM, RefineCAM
from .gradcam import GradCAM
from .gradcam_pp import GradCAMPlusPlus
from .guided import GuidedBackprop, GuidedGradCAM
from .hirescam import HiResCAM
from .input_gradients import InputGradient, IntegratedGradients, SmoothGrad
from .iscam import ISCAM
from .kpcacam import KPCACAM
from .layercam import LayerCAM
from .nmf import Factorization, nmf
from .scorecam import ScoreCAM
from .shapleycam import ShapleyCAM
from .smooth_gradcam_pp import SmoothGradCAMPlusPlus
from .sscam import SSCAM
from .xgradcam import XGradCAM


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class, the call options that make it this method, its display title (figures,
    panels, tables) and a one-line summary with its formula."""

    cls: type[Explainer]
    title: str
    call_options: dict[str, Any] = field(default_factory=dict)
    uses_layer: bool = True
    summary: str = ""


METHODS = MappingProxyType(
    {
        "gradcam": MethodSpec(GradCAM, "Grad-CAM", summary="Grad-CAM: alpha = spatial mean of dy/dA"),
        "counterfactual": MethodSpec(
            GradCAM,
            "Counterfactual",
            {"counterfactual": True},
            summary="Grad-CAM of -y: regions arguing against the class",
        ),
        "cam": MethodSpec(CAM, "CAM", summary="CAM: alpha = classifier weights (GAP + linear heads)"),
        "guided-backprop": MethodSpec(
            GuidedBackprop, "Guided Backprop", uses_layer=False, summary="Guided Backpropagation"
        ),
        "guided-gradcam": MethodSpec(GuidedGradCAM, "Guided Grad-CAM", summary="Guided Backprop x upsampled Grad-CAM"),
        "gradcam++": MethodSpec(
            GradCAMPlusPlus, "Grad-CAM++", summary="Grad-CAM++: alpha = sum_ij g^2/(2g^2 + sum A g^3) ReLU(g)"
        ),
        "smoothgradcam++": MethodSpec(
            SmoothGradCAMPlusPlus,
            "Smooth Grad-CAM++",
            summary="Smooth Grad-CAM++: Grad-CAM++ of the derivatives averaged over noisy copies of x",
        ),
        "hirescam": MethodSpec(HiResCAM, "HiResCAM", summary="HiResCAM: ReLU(sum_k g_k * A_k), element-wise"),
        "xgradcam": MethodSpec(XGradCAM, "XGrad-CAM", summary="XGrad-CAM: alpha = sum_ij (A/sum A) g"),
        "layercam": MethodSpec(
            LayerCAM, "LayerCAM", summary="LayerCAM: ReLU(sum_k ReLU(g_k) * A_k), sharp on early layers"
        ),
        "eigencam": MethodSpec(
            EigenCAM, "Eigen-CAM", summary="Eigen-CAM: first principal component of A (class-agnostic)"
        ),
        "eigengradcam": MethodSpec(
            EigenGradCAM, "Eigen-Grad-CAM", summary="Eigen-Grad-CAM: first principal component of g * A"
        ),
        "gradcam-elementwise": MethodSpec(
            GradCAMElementWise,
            "Element-wise Grad-CAM",
            summary="Element-wise Grad-CAM: ReLU(sum_k ReLU(g_k * A_k))",
        ),
        "kpcacam": MethodSpec(
            KPCACAM, "KPCA-CAM", summary="KPCA-CAM: first kernel principal component of A (class-agnostic)"
        ),
        "fem": MethodSpec(
            FEM, "FEM", summary="FEM: alpha = share of positions where A_k > mean_k + 2 std_k (class-agnostic)"
        ),
        "shapleycam": MethodSpec(
            ShapleyCAM, "ShapleyCAM", summary="ShapleyCAM: alpha = spatial mean of g - H A / 2 (g = dy/dA, H = d2y/dA2)"
        ),
        "scorecam": MethodSpec(
            ScoreCAM, "Score-CAM", summary="Score-CAM: alpha = softmax_k of the score of x masked by A_k"
        ),
        "sscam": MethodSpec(
            SSCAM, "SS-CAM", summary="SS-CAM: Score-CAM with scores averaged over masks + N(0, std^2) noise"
        ),
        "iscam": MethodSpec(
            ISCAM, "IS-CAM", summary="IS-CAM: Score-CAM with scores averaged over scaled masks c_i x * M_k"
        ),
        "ablationcam": MethodSpec(
            AblationCAM, "Ablation-CAM", summary="Ablation-CAM: alpha = (y - y with channel k zeroed) / y"
        ),
        "finercam": MethodSpec(
            FinerCAM,
            "Finer-CAM",
            summary="Finer-CAM: Grad-CAM of y_c - alpha sum_j w_j y_j over the most similar classes j",
        ),
        "multilayer": MethodSpec(
            MultiLayerCAM,
            "Multi-layer CAM",
            summary="LayerCAM (or another method) on several layers, normalised maps averaged",
        ),
        "refinecam": MethodSpec(
            RefineCAM,
            "RefineCAM",
            summary="RefineCAM: Grad-CAM++ on every stage, product of the normalised maps",
        ),
        "fullgrad": MethodSpec(
            FullGrad,
            "FullGrad",
            uses_layer=False,
            summary="FullGrad: |dy/dx x| + sum over every bias layer of |dy/dz b|, channel maps normalised",
        ),
        "gradient": MethodSpec(InputGradient, "Input gradient", uses_layer=False, summary="Input gradient dy/dx"),
        "smoothgrad": MethodSpec(
            SmoothGrad, "SmoothGrad", uses_layer=False, summary="SmoothGrad: dy/dx averaged over noisy x"
        ),
        "integrated-gradients": MethodSpec(
            IntegratedGradients,
            "Integrated Gradients",
            uses_layer=False,
            summary="Integrated Gradients from a zero baseline",
        ),
    }
)


def available_methods() -> list[str]:
    """The registered method names."""
    return list(METHODS)


def create_explainer(name: str, model: Any, layer: Any = None, **options: Any) -> Explainer:
    """Build the registered method ``name`` for ``model`` (``layer`` ignored by input-space methods)."""
    try:
        spec = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None
    if spec.uses_layer:
        return spec.cls(model, layer, **options)
    return spec.cls(model, **options)


__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "SSCAM",
    "AblationCAM",
    "Concepts",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "Explainer",
    "Factorization",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputGradient",
    "IntegratedGradients",
    "LayerCAM",
    "LayerMethod",
    "MapContext",
    "MethodSpec",
    "MultiLayerCAM",
    "RefineCAM",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGrad",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "available_methods",
    "create_explainer",
    "deep_feature_factorization",
    "nmf",
]
