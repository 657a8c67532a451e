"""CAM (Zhou et al., CVPR 2016), for networks with a global-average-pooling + linear head."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MethodError, TargetError
from ..layers import resolve_layer
from ..targets import OutputSelector, select_output
from .base import LayerMethod, MapContext


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` registered in ``model`` (the usual classifier)."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise MethodError(f"CAM needs a linear classifier; {type(model).__name__} has no nn.Linear (pass fc=)")
    return found[-1]


class CAM(LayerMethod):
    """CAM: ``M_c = sum_k w_k^c F_k`` with ``w^c`` the classifier's row for class c (no gradients).

    ``F`` is the layer's output ``A``, or ``ReLU(A)`` when the head rectifies before pooling
    (DenseNet). The head is checked numerically on every call: ``mean_ij F @ W^T + b`` must
    reproduce the model's scores, otherwise a :class:`MethodError` says the head is not GAP + linear.
    Like every map here the result is rectified, so Grad-CAM equals CAM / Z exactly on such heads.
    """

    name = "cam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        fc: nn.Module | str | None = None,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape)
        self.fc_name, self.fc = last_linear(model) if fc is None else resolve_layer(model, fc)
        if not isinstance(self.fc, nn.Linear):
            raise MethodError(f"fc must be an nn.Linear; '{self.fc_name}' is {type(self.fc).__name__}")

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        if context.target.classes is None:
            raise TargetError("CAM explains class indices; a callable target needs a gradient method")
        activations = context.activations
        weight = self.fc.weight.detach().float()
        if weight.shape[1] != activations.shape[1]:
            raise MethodError(
                f"CAM needs the classifier to read the layer's channels: '{self.fc_name}' takes "
                f"{weight.shape[1]} features but the layer has {activations.shape[1]} channels"
            )
        context.features = self._head_features(activations, select_output(context.output, self.output))
        return context.sign * weight[context.target.classes]

    def _head_features(self, activations: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """A or ReLU(A), whichever the GAP + linear head reproduces the model's scores from."""
        bias = self.fc.bias.detach().float() if self.fc.bias is not None else 0.0
        weight = self.fc.weight.detach().float()
        logits = logits.detach().float()
        tolerance = 1e-3 * (1.0 + logits.abs().max())
        worst = None
        for features in (activations, torch.relu(activations)):
            predicted = features.mean(dim=(-2, -1)) @ weight.T + bias
            gap = (predicted - logits).abs().max()
            if gap <= tolerance:
                return features
            worst = gap if worst is None else min(worst, gap)
        raise MethodError(
            f"CAM needs a global-average-pooling + linear head on the layer's output: "
            f"mean(A) @ {self.fc_name}.weight^T + bias differs from the model's scores by up to "
            f"{float(worst):.3g}; use GradCAM for this model (or choose the last conv layer)"
        )
