"""Grad-CAM (Selvaraju et al., ICCV 2017)."""

from __future__ import annotations

import torch

from .base import LayerMethod, MapContext


class GradCAM(LayerMethod):
    """Grad-CAM: ``alpha_k = 1/Z sum_ij dy/dA_k[i,j]``, ``L = ReLU(sum_k alpha_k A_k)``.

    With ``counterfactual=True`` the call explains ``-y`` (the paper's eq. 7): ``alpha -> -alpha``,
    regions whose presence lowers the score.
    """

    name = "gradcam"

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        return context.gradients.mean(dim=(-2, -1))
