"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, "Full-Gradient Representation for Neural Network Visualization")."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..capture import forward_hook, model_guard
from ..errors import LayerError
from ..explanation import Explanation
from ..targets import OutputSelector, Target, resolve_target
from .base import (
    Explainer,
    check_input,
    finish,
    no_autocast,
    normalize,
    require_finite,
    run_model,
    upsample,
    usable_input,
)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def effective_bias(module: nn.Module) -> torch.Tensor:
    """The constant a layer adds per channel: a convolution's bias, or an eval-mode batch norm's
    ``beta - mu gamma / sqrt(var + eps)`` (the official implementation's ``tensor_extractor``)."""
    if isinstance(module, _NORMS):
        weight = module.weight if module.weight is not None else torch.ones_like(module.running_var)
        return (module.bias - module.running_mean * weight / torch.sqrt(module.running_var + module.eps)).detach()
    return module.bias.detach()


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every 1-, 2- or 3-D convolution with a bias and every batch norm with running statistics and a bias."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if (isinstance(m, _CONVS) and m.bias is not None)
        or (isinstance(m, _NORMS) and m.bias is not None and m.running_mean is not None)
    ]


def channel_maps(values: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``sum_c normalize(Up(|values_c|))``: (B, k, C, *S) -> (B, k, *size), each channel min-max normalised."""
    rank = len(size)
    flat = values.abs().flatten(0, 1)  # (B k, C, *S)
    maps = normalize(upsample(flat, size), rank)
    # a constant channel is flat (0): bilinear weights w, 1 - w reproduce a constant only up to a rounding, which
    # the normalisation would stretch to [0, 1] (seen with ATEN_CPU_CAPABILITY=default)
    low, high = torch.aminmax(flat.flatten(-rank), dim=-1)
    maps = maps.masked_fill((high == low)[(..., *[None] * rank)], 0)
    return maps.sum(dim=1).view(*values.shape[:2], *size)


class FullGrad(Explainer):
    """FullGrad: ``S = psi(dy/dx ⊙ x) + sum_l sum_c psi(dy/dz_l ⊙ b_l)_c``.

    ``z_l`` is the output of every layer with a bias (convolutions with a bias, batch norms, whose
    eval-mode bias is ``beta - mu gamma / sqrt(var + eps)``), ``b_l`` that bias per channel; ``psi`` is
    the paper's post-processing: absolute value, min-max normalisation of each channel's map, bilinear
    upsampling to the input. The input term is summed over the input's channels and the bias terms
    over every channel of every layer (pytorch-grad-cam's ``FullGrad``, which also takes Conv2d and
    BatchNorm2d layers). ``raw`` is S, ``heatmap`` its min-max normalisation; ``weights`` is None and
    ``layer`` lists the bias layers joined by ``+``.

    It needs the gradient at EVERY bias layer and at the input, so it does not fit the one-layer
    engine (:class:`LayerMethod`): one forward pass records the whole graph (from x, with hooks handing
    a clone of each bias layer's output downstream so in-place ops cannot touch it) and one backward
    per target column gives all the gradients; parameters get none. Computed in float32 (autocast off).
    """

    name = "fullgrad"

    def __init__(self, model: nn.Module, *, output: OutputSelector = None, eval_mode: bool = True) -> None:
        super().__init__(model, output=output, eval_mode=eval_mode)

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        x = check_input(x, self.model)
        size = tuple(x.shape[2:])
        sign = -1.0 if counterfactual else 1.0
        layers = bias_layers(self.model)
        outputs: dict[str, torch.Tensor] = {}

        def keeper(name: str):
            def hook(module: nn.Module, inputs: tuple, output: object) -> object:
                if isinstance(output, torch.Tensor) and output.dim() == x.dim() and output.requires_grad:
                    outputs[name] = output
                    return output.clone()
                return None

            return hook

        with model_guard(self.model, self.eval_mode), torch.inference_mode(False), no_autocast(x):
            x = usable_input(x).detach().float().requires_grad_(True)
            with contextlib.ExitStack() as stack, torch.enable_grad():
                for name, module in layers:
                    stack.enter_context(forward_hook(module, keeper(name)))
                output = run_model(self.model, x, forward_kwargs)
                resolved = resolve_target(target, output, x.shape[0], self.output)
            names = [name for name, _ in layers if name in outputs]
            if not names:
                raise LayerError("FullGrad needs convolutions or batch norms with a bias; the model has none in use")
            scores = sign * resolved.scores.float()
            inputs = [x, *(outputs[name] for name in names)]
            columns = [
                torch.autograd.grad(scores[:, j].sum(), inputs, retain_graph=j < scores.shape[1] - 1, allow_unused=True)
                for j in range(scores.shape[1])
            ]
            if any(column[0] is None for column in columns):
                raise LayerError("the target does not depend on the input: no gradient reaches it")
            modules = dict(layers)
            with torch.no_grad():
                grads = [
                    torch.stack([torch.zeros_like(t) if c[i] is None else c[i] for c in columns], dim=1)
                    for i, t in enumerate(inputs)
                ]  # a bias layer the target does not depend on contributes nothing
                raw = channel_maps(grads[0] * x.detach().unsqueeze(1), size)
                for name, grad in zip(names, grads[1:]):
                    bias = effective_bias(modules[name]).float()[(..., *[None] * len(size))]
                    raw = raw + channel_maps(grad * bias, size)
                heatmap = normalize(raw, len(size))
        if x.device.type != "cpu":
            require_finite(x)
        multi = resolved.multi
        return Explanation(
            heatmap=finish(heatmap, multi),
            raw=finish(raw, multi),
            scores=finish(resolved.scores.detach(), multi),
            method=self.name,
            classes=None if resolved.classes is None else finish(resolved.classes, multi),
            layer="+".join(names),
            counterfactual=counterfactual,
            logits=resolved.logits,
        )
