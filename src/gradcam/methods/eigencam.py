"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..errors import MethodError
from ..targets import OutputSelector
from .base import LayerMethod, MapContext


def principal_projection(activations: torch.Tensor, center: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's first principal axis ``v1`` (B, K) and the features projected on it (B, K, *S).

    Per image the activations are a (positions) x (K channels) matrix M, mean-centred over
    positions when ``center``; ``v1`` is the first right singular vector of M (``torch.linalg.svd``,
    float64) and ``M v1`` is the projection. The sign of an SVD is arbitrary: ``v1`` is flipped so
    that the projection correlates positively with the mean activation over channels.
    """
    matrix = activations.double().flatten(2).transpose(1, 2)  # (B, uv, K)
    if center:
        matrix = matrix - matrix.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    axis = vh[:, 0, :]  # (B, K)
    projection = (matrix @ axis.unsqueeze(-1)).squeeze(-1)  # (B, uv)
    mean_map = activations.double().mean(dim=1).flatten(1)
    agreement = ((projection - projection.mean(1, keepdim=True)) * (mean_map - mean_map.mean(1, keepdim=True))).sum(1)
    axis = torch.where(agreement.unsqueeze(1) < 0, -axis, axis)
    features = matrix.transpose(1, 2).reshape(activations.shape)
    return axis.to(activations.dtype), features.to(activations.dtype)


def first_component(terms: torch.Tensor) -> torch.Tensor:
    """The summands (B, k, K, *S) of a map, replaced by those of their first principal component.

    For each map the K terms are a (positions x K) matrix T; the result is ``v1_k (T_k - mean T_k)``
    with ``v1`` T's first principal axis (:func:`principal_projection`: centred over positions, SVD in
    float64, sign chosen so the projection correlates positively with the sum of the terms, i.e. with
    the map before the projection). Its sum over K is the projection ``(T - mean T) v1``.
    """
    axis, centred = principal_projection(terms.flatten(0, 1))
    shape = (*axis.shape, *[1] * (terms.dim() - 3))
    return (axis.view(shape) * centred).view(terms.shape)


@functools.cache
def eigen_smoothed(cls: type[LayerMethod]) -> type[LayerMethod]:
    """``cls`` with its map's channel terms projected on their first principal component.

    pytorch-grad-cam's ``eigen_smooth=True``: ``L = ReLU((T - mean T) v1)`` instead of ``ReLU(sum_k T_k)``,
    where T are the method's :meth:`~LayerMethod.channel_terms` (``alpha_k A_k``, or ``g_k A_k`` for
    element-wise methods). The weights reported are the method's own. One class per method (cached).
    """

    def channel_terms(self: LayerMethod, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        return first_component(super(smoothed, self).channel_terms(weights, context))

    def combine(self: LayerMethod, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        return torch.relu(self.channel_terms(weights, context).sum(dim=2))

    doc = f"{cls.__name__} with eigen smoothing: the first principal component of its channel terms."
    namespace = {
        "channel_terms": channel_terms,
        "combine": combine,
        "name": f"{cls.name}+eigen-smooth",
        "__doc__": doc,
        "__module__": cls.__module__,
    }
    smoothed = type(f"EigenSmooth{cls.__name__}", (cls,), namespace)
    return smoothed


class EigenCAM(LayerMethod):
    """Eigen-CAM: ``L = ReLU(M v1)``, the activations projected on their first principal component.

    M is the layer output of one image as (positions x channels); by default it is mean-centred over
    positions first (pytorch-grad-cam's convention: PCA proper; the paper takes the SVD of the
    uncentred activations, ``center=False``). The SVD sign is fixed so the map correlates positively
    with the channel-mean activation map. No gradients are used and the map is CLASS-AGNOSTIC:
    every target of an image gets the same map (``weights`` = ``v1``), and counterfactual maps are
    refused.
    """

    name = "eigencam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        center: bool = True,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
        **unknown: Any,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape, **unknown)
        self.center = bool(center)

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        if context.sign < 0:
            raise MethodError(
                "Eigen-CAM is class-agnostic: it has no counterfactual map (use a gradient method such as gradcam)"
            )
        axis, context.features = principal_projection(context.activations, self.center)
        k = context.target.scores.shape[1]
        return axis.unsqueeze(1).expand(-1, k, -1)
