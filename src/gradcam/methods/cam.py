"""CAM (Zhou et al., CVPR 2016) and the closed-form maps of every class on GAP + linear heads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..capture import model_guard
from ..errors import MethodError, TargetError
from ..explanation import Explanation
from ..layers import resolve_layer
from ..targets import OutputSelector, select_output
from .base import LayerMethod, MapContext, check_input, no_autocast, normalize, upsample, usable_input


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` registered in ``model`` (the usual classifier)."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise MethodError(f"CAM needs a linear classifier; {type(model).__name__} has no nn.Linear (pass fc=)")
    return found[-1]


class GapLinearHead:
    """A classifier ``y = mean_ij F @ W^T + b`` reading a layer's channels; verified, never assumed."""

    def __init__(self, model: nn.Module, fc: nn.Module | str | None = None) -> None:
        self.name, self.fc = last_linear(model) if fc is None else resolve_layer(model, fc)
        if not isinstance(self.fc, nn.Linear):
            raise MethodError(f"fc must be an nn.Linear; '{self.name}' is {type(self.fc).__name__}")

    @property
    def weight(self) -> torch.Tensor:
        return self.fc.weight.detach().float()

    def features(self, activations: torch.Tensor, logits: torch.Tensor, allow_relu: bool = True) -> torch.Tensor:
        """``A`` (or ``ReLU(A)`` if ``allow_relu``), whichever the head reproduces the model's scores from.

        Raises :class:`MethodError` when neither does: the head is not GAP + linear on this layer.
        """
        weight = self.weight
        if weight.shape[1] != activations.shape[1]:
            raise MethodError(
                f"a GAP + linear head must read the layer's channels: '{self.name}' takes "
                f"{weight.shape[1]} features but the layer has {activations.shape[1]} channels"
            )
        bias = self.fc.bias.detach().float() if self.fc.bias is not None else 0.0
        reduced = logits.dtype in (torch.float16, torch.bfloat16)  # autocast: compare at that precision
        logits = logits.detach().float()
        tolerance = 5e-2 if reduced else 1e-4  # relative L2 error: bf16 rounding vs a different head
        scale = logits.norm() + 1e-12
        worst = None
        candidates = (activations, torch.relu(activations)) if allow_relu else (activations,)
        for features in candidates:
            predicted = features.flatten(2).mean(dim=-1) @ weight.T + bias
            gap = float((predicted - logits).norm() / scale)
            if gap <= tolerance:
                return features
            worst = gap if worst is None else min(worst, gap)
        rectified = " (or of ReLU(A))" if allow_relu else ""
        raise MethodError(
            f"this needs a global-average-pooling + linear head on the layer's output: the mean of A{rectified} "
            f"@ {self.name}.weight^T + bias differs from the model's scores by {worst:.1%} (relative L2); "
            "use GradCAM with class targets for this model (or choose the last conv layer)"
        )


def all_class_maps(
    method: LayerMethod,
    head: GapLinearHead,
    x: torch.Tensor,
    *,
    scale_by_area: bool,
    allow_relu: bool,
    to_input_size: bool,
    forward_kwargs: Mapping[str, Any] | None,
) -> Explanation:
    """Maps of every class from one forward pass and no backward: ``L_c = ReLU(W_c · F / s)``.

    ``s = u*v`` for Grad-CAM (``alpha = W / Z``), 1 for CAM. Heatmaps are normalised at the layer's
    resolution unless ``to_input_size`` (C maps per image at the input size can be large).
    """
    x = check_input(x, method.model)
    with model_guard(method.model, method.eval_mode), torch.inference_mode(False):
        x = usable_input(x)
        name, captured, output = method._forward(x, forward_kwargs, record_graph=False)
        grid = method._as_grid(captured, name, x.shape[0], x, forward_kwargs)
        with no_autocast(x):
            selected = select_output(output, method.output).detach()
            features = head.features(grid.float(), selected, allow_relu=allow_relu)
            logits = selected.float()
            positions = features[0, 0].numel()
            weights = head.weight / (positions if scale_by_area else 1.0)
            b, k, *grid_shape = features.shape
            raw = torch.relu(torch.matmul(weights, features.reshape(b, k, positions))).reshape(b, -1, *grid_shape)
            rank = x.dim() - 2
            heatmap = normalize(upsample(raw, tuple(x.shape[2:])) if to_input_size else raw, rank)
    classes = torch.arange(weights.shape[0], device=x.device).expand(b, -1)
    return Explanation(
        heatmap=heatmap,
        raw=raw,
        scores=logits,
        method=method.name,
        weights=weights.expand(b, -1, -1),
        classes=classes,
        layer=name,
        logits=logits,
    )


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
        **unknown: Any,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape, **unknown)
        self.head = GapLinearHead(model, fc)

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        if context.target.classes is None:
            raise TargetError("CAM explains class indices; a callable target needs a gradient method")
        context.features = self.head.features(context.activations, select_output(context.output, self.output))
        return context.sign * self.head.weight[context.target.classes]

    def all_classes(
        self, x: torch.Tensor, *, to_input_size: bool = False, forward_kwargs: Mapping[str, Any] | None = None
    ) -> Explanation:
        """CAM maps of every class from one forward pass: ``raw`` (B, C, u, v); see :func:`all_class_maps`."""
        return all_class_maps(
            self, self.head, x, scale_by_area=False, allow_relu=True, to_input_size=to_input_size,
            forward_kwargs=forward_kwargs,
        )  # fmt: skip
