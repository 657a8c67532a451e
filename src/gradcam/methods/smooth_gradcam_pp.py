"""Smooth Grad-CAM++ (Omeiza, Speakman, Cintas & Weldemariam, 2019)."""

from __future__ import annotations

import torch
from torch import nn

from ..targets import OutputSelector, resolve_target
from ._noise import check_noise, input_noise
from .base import MapContext, layer_gradients
from .gradcam_pp import GradCAMPlusPlus, plus_plus_weights


class SmoothGradCAMPlusPlus(GradCAMPlusPlus):
    """Smooth Grad-CAM++: Grad-CAM++ with SmoothGrad-averaged derivatives.

    For n noisy copies ``x + eps_m``, ``eps_m ~ N(0, sigma^2)``, the derivatives of the layer are
    averaged, ``D^p = 1/n sum_m (dy/dA (x + eps_m))^p`` for p = 1, 2, 3 (Grad-CAM++'s closed form for
    ``exp(y)``), and Grad-CAM++'s weights are formed from the averages with the clean image's
    activations A: ``alpha = D^2 / (2 D^2 + sum_ab A_k^ab D^3)``, ``w_k = sum_ij alpha_k^ij ReLU(D^1)``,
    ``L = ReLU(sum_k w_k A_k)``. (The paper prints ``D^1`` in alpha's numerator; with no noise that
    would not reduce to Grad-CAM++, so ``D^2`` is used, as TorchCAM does.) TorchCAM's
    ``SmoothGradCAMpp`` differs: its ReLU(D^1) and its map's A are those of the LAST noisy sample,
    not the average and the clean image; both agree when ``stdev=0`` (then this is Grad-CAM++).

    ``samples``, ``noise`` (a fraction of each image's value range) / ``stdev`` (absolute) and ``seed``
    are SmoothGrad's (:class:`~gradcam.methods.input_gradients.SmoothGrad`); each noisy pass is a
    forward and one backward to the layer for the whole batch.
    """

    name = "smoothgradcam++"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        samples: int = 8,
        noise: float = 0.15,
        stdev: float | None = None,
        seed: int | None = 0,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape)
        check_noise(samples, noise, stdev)
        self.samples, self.noise, self.stdev, self.seed = samples, float(noise), stdev, seed

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        x = context.inputs
        target = context.request if context.target.classes is None else context.target.classes
        first = second = third = torch.zeros_like(context.gradients)
        for eps in input_noise(x, self.samples, self.noise, self.stdev, self.seed):
            name, captured, output = self._forward(x + eps, context.forward_kwargs, record_graph=True)
            with torch.enable_grad():
                scores = resolve_target(target, output, x.shape[0], self.output).scores
            grads = layer_gradients(context.sign * scores.float(), captured, name)
            if self.reshape is not None:
                grads = torch.stack([self.reshape(g) for g in grads.unbind(1)], dim=1)
            grads = grads.float()
            first, second, third = first + grads, second + grads * grads, third + grads * grads * grads
        n = self.samples
        return plus_plus_weights(first / n, second / n, third / n, context)
