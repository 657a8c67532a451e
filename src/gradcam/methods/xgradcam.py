"""XGrad-CAM (Fu et al., BMVC 2020, "Axiom-based Grad-CAM")."""

from __future__ import annotations

import torch

from .base import LayerMethod, MapContext


class XGradCAM(LayerMethod):
    """XGrad-CAM: ``w_k = sum_ij (A_k^ij / sum_ab A_k^ab) g_k^ij``, ``L = ReLU(sum_k w_k A_k)``.

    The gradient is averaged with the channel's own activations as weights (the paper's solution
    of its sensitivity and conservation axioms). A channel whose activations sum to 0 gets w = 0.
    """

    name = "xgradcam"

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        activations = context.activations
        total = activations.sum(dim=context.axes, keepdim=True)
        nonzero = total != 0
        share = torch.where(nonzero, activations / torch.where(nonzero, total, 1), 0)  # (B, K, u, v)
        return (share.unsqueeze(1) * context.gradients).sum(dim=context.axes)
