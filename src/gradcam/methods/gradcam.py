"""Grad-CAM (Selvaraju et al., ICCV 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..explanation import Explanation
from .base import LayerMethod, MapContext
from .cam import GapLinearHead, all_class_maps


class GradCAM(LayerMethod):
    """Grad-CAM: ``alpha_k = 1/Z sum_ij dy/dA_k[i,j]``, ``L = ReLU(sum_k alpha_k A_k)``.

    With ``counterfactual=True`` the call explains ``-y`` (the paper's eq. 7): ``alpha -> -alpha``,
    regions whose presence lowers the score. Also on 1-D and 3-D inputs: (B, C, L) signals with
    (B, K, l) activations and (B, C, T, H, W) clips with (B, K, t, u, v) activations; alpha is then
    the mean over every activation axis and the map is upsampled linearly / trilinearly.
    """

    name = "gradcam"

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        return context.gradients.mean(dim=context.axes)

    def all_classes(
        self,
        x: torch.Tensor,
        *,
        fc: nn.Module | str | None = None,
        to_input_size: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        """Grad-CAM maps of every class at once, in closed form: no backward pass at all.

        On a global-average-pooling + linear head ``y_c = 1/Z sum_ij W_c · A[:, i, j] + b_c``, so
        ``dy_c/dA_k[i,j] = W_ck / Z`` and ``alpha = W / Z`` for every class. The head is verified
        numerically (a :class:`~gradcam.MethodError` otherwise). ``raw`` is (B, C, u, v); heatmaps are
        normalised at the layer's resolution unless ``to_input_size``.
        """
        return all_class_maps(
            self, GapLinearHead(self.model, fc), x, scale_by_area=True, allow_relu=False,
            to_input_size=to_input_size, forward_kwargs=forward_kwargs,
        )  # fmt: skip
