"""Grad-CAM++ (Chattopadhay et al., WACV 2018)."""

from __future__ import annotations

import torch

from .base import LayerMethod, MapContext


class GradCAMPlusPlus(LayerMethod):
    """Grad-CAM++: ``w_k = sum_ij alpha_k^ij ReLU(g_k^ij)``, ``L = ReLU(sum_k w_k A_k)``.

    With ``g = dS/dA`` the gradient of the class score S, the paper explains ``Y = exp(S)``; for a
    network that is piecewise linear after the layer its higher derivatives are ``exp(S) g^2`` and
    ``exp(S) g^3`` (eqs. 17-19), so the closed form

        alpha_k^ij = g_k^ij^2 / (2 g_k^ij^2 + sum_ab A_k^ab g_k^ij^3)   (0 where the denominator is 0)

    needs first-order gradients only. The weights of Y are ``exp(S) * w_k``: a positive factor per
    map that the min-max normalisation cancels, so it is left out (as in pytorch-grad-cam).
    The denominator IS applied (TorchCAM <= 0.5 divides a copy, so its alpha is just ``g^2``).
    ``counterfactual=True`` explains ``-S`` (g -> -g in every formula).
    """

    name = "gradcam++"

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        grads = context.gradients  # (B, k, K, *S)
        return plus_plus_weights(grads, grads * grads, grads * grads * grads, context)


def plus_plus_weights(
    first: torch.Tensor, second: torch.Tensor, third: torch.Tensor, context: MapContext
) -> torch.Tensor:
    """``w_k = sum_ij alpha_k^ij ReLU(D1)``, ``alpha = D2 / (2 D2 + sum_ab A_k^ab D3)`` (0 where the
    denominator is 0), from the first, second and third derivatives D1, D2, D3 (B, k, K, *S)."""
    total = context.activations.sum(dim=context.axes, keepdim=True).unsqueeze(1)  # (B, 1, K, 1, ...)
    denominator = 2 * second + total * third
    nonzero = denominator != 0
    alpha = torch.where(nonzero, second / torch.where(nonzero, denominator, 1), 0)
    return (alpha * torch.relu(first)).sum(dim=context.axes)
