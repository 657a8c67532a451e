"""HiResCAM (Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations")."""

from __future__ import annotations

import torch

from .base import LayerMethod, MapContext


class HiResCAM(LayerMethod):
    """HiResCAM: ``L = ReLU(sum_k g_k ⊙ A_k)``, the gradient kept position by position.

    Grad-CAM averages ``g_k = dy/dA_k`` over positions first; HiResCAM multiplies element-wise,
    so ``sum_ij L`` (before the ReLU) is the first-order contribution ``sum g ⊙ A`` of the layer to
    y. On a global-average-pooling + linear head g_k is constant over positions and HiResCAM
    equals Grad-CAM; on other heads (flatten + linear) they differ. ``weights`` reports the spatial
    mean of g (Grad-CAM's alpha) for reference; the map does not use it.
    """

    name = "hirescam"

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        return context.gradients.mean(dim=context.axes)

    def channel_terms(self, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        return context.gradients * context.activations.unsqueeze(1)

    def combine(self, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        return torch.relu(self.channel_terms(weights, context).sum(dim=2))
