"""FEM, the Feature Explanation Method (Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari, IPTA 2020,
"Features understanding in 3D CNNs for actions recognition in video")."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import MethodError
from ..targets import OutputSelector
from .base import LayerMethod, MapContext


def k_sigma_weights(activations: torch.Tensor, sigmas: float) -> torch.Tensor:
    """FEM's channel weights (B, K): the fraction of positions where ``A_k > mean_k + sigmas * std_k``.

    ``mean_k`` and ``std_k`` (the population standard deviation, divisor ``|S|``) are taken over the
    positions of each image's channel k, in float64, so a constant channel has ``std = 0`` exactly and
    weight 0 (no position lies strictly above its own mean).
    """
    axes = tuple(range(2, activations.dim()))
    values = activations.double()
    mean = values.mean(dim=axes, keepdim=True)
    std = (values - mean).square().mean(dim=axes, keepdim=True).sqrt()
    above = values > mean + sigmas * std
    return above.double().mean(dim=axes).to(activations.dtype)


class FEM(LayerMethod):
    """FEM: ``alpha_k = 1/|S| #{s : A_k(s) > mu_k + n sigma_k}``, ``L = ReLU(sum_k alpha_k A_k)``.

    ``mu_k`` and ``sigma_k`` are the mean and (population) standard deviation of channel k over the
    positions S; a channel is weighted by how much of it is an outlier high response under the
    k-sigma rule with ``n = sigmas`` (2 by default, as in the paper and in pytorch-grad-cam's ``FEM(k=2)``).
    No gradients are used and the map is CLASS-AGNOSTIC: every target of an image gets the same map,
    and counterfactual maps are refused. Over |S| positions no value can exceed ``mu + sqrt(|S| - 1) sigma``,
    so with ``sigmas = 2`` a layer needs at least 5 positions (a 2x2 map is all zero: choose an earlier layer).
    One forward pass, no backward pass.
    """

    name = "fem"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        sigmas: float = 2.0,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
        **unknown: Any,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape, **unknown)
        if isinstance(sigmas, bool) or not isinstance(sigmas, (int, float)) or not math.isfinite(sigmas):
            raise MethodError(f"sigmas must be a finite number of standard deviations; got {sigmas!r}")
        self.sigmas = float(sigmas)

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        if context.sign < 0:
            raise MethodError(
                "FEM is class-agnostic: it has no counterfactual map (use a gradient method such as gradcam)"
            )
        weights = k_sigma_weights(context.activations, self.sigmas)
        k = context.target.scores.shape[1]
        return weights.unsqueeze(1).expand(-1, k, -1)
