"""Element-wise Grad-CAM (pytorch-grad-cam's GradCAMElementWise)."""

from __future__ import annotations

import torch

from .base import MapContext
from .hirescam import HiResCAM


class GradCAMElementWise(HiResCAM):
    """Element-wise Grad-CAM: ``L = ReLU(sum_k ReLU(g_k ⊙ A_k))``, ``g = dy/dA``.

    HiResCAM's terms ``g_k A_k`` with each position's negative evidence dropped before the channel
    sum (so the outer ReLU never acts). pytorch-grad-cam's ``GradCAMElementWise``. ``weights`` reports
    the spatial mean of g for reference; the map does not use it.
    """

    name = "gradcam-elementwise"

    def channel_terms(self, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        return torch.relu(super().channel_terms(weights, context))
