"""LayerCAM (Jiang et al., IEEE TIP 2021)."""

from __future__ import annotations

import torch

from .base import LayerMethod, MapContext


class LayerCAM(LayerMethod):
    """LayerCAM: ``L = ReLU(sum_k ReLU(g_k) ⊙ A_k)``, each position weighted by its own positive gradient.

    Because the weights are element-wise, the map stays sharp on early, high-resolution layers;
    :class:`~gradcam.methods.fusion.MultiLayerCAM` combines the maps of several layers.
    ``weights`` reports the spatial mean of ``ReLU(g)`` for reference; the map does not use it.
    """

    name = "layercam"

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        return torch.relu(context.gradients).mean(dim=context.axes)

    def channel_terms(self, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        return torch.relu(context.gradients) * context.activations.unsqueeze(1)

    def combine(self, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        return torch.relu(self.channel_terms(weights, context).sum(dim=2))
