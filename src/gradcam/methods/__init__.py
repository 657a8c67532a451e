"""The methods, one small class each, and the registry the CLI and the contract tests list from."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .base import Explainer, LayerMethod, MapContext
from .cam import CAM
from .gradcam import GradCAM
from .guided import GuidedBackprop, GuidedGradCAM


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class, and the call options that make it this method."""

    cls: type[Explainer]
    call_options: dict[str, Any] = field(default_factory=dict)
    uses_layer: bool = True
    summary: str = ""


METHODS = MappingProxyType(
    {
        "gradcam": MethodSpec(GradCAM, summary="Grad-CAM: alpha = spatial mean of dy/dA"),
        "counterfactual": MethodSpec(
            GradCAM, {"counterfactual": True}, summary="Grad-CAM of -y: regions arguing against the class"
        ),
        "cam": MethodSpec(CAM, summary="CAM: alpha = classifier weights (GAP + linear heads)"),
        "guided-backprop": MethodSpec(GuidedBackprop, uses_layer=False, summary="Guided Backpropagation"),
        "guided-gradcam": MethodSpec(GuidedGradCAM, summary="Guided Backprop x upsampled Grad-CAM"),
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
    "METHODS",
    "Explainer",
    "GradCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "LayerMethod",
    "MapContext",
    "MethodSpec",
    "available_methods",
    "create_explainer",
]
