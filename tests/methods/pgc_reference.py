"""Running pytorch-grad-cam (the `grad-cam` package) as an independent reference: raw maps and weights."""

from __future__ import annotations

import torch
from torch import nn


def pgc_raw_and_weights(
    cls: type, model: nn.Module, layer: str, x: torch.Tensor, classes: list[int], weights: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """pytorch-grad-cam's map before its ReLU / resize / normalisation (B, u, v), and its channel weights.

    Its own hooks and backward pass produce the activations and gradients; ``get_cam_image`` and
    ``get_cam_weights`` are the method-specific parts.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = model.get_submodule(layer)
    targets = [ClassifierOutputTarget(c) for c in classes]
    with cls(model=model, target_layers=[module]) as cam:
        cam(input_tensor=x, targets=targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = torch.from_numpy(cam.get_cam_image(x, module, targets, activations, grads, eigen_smooth=False))
        found = torch.from_numpy(cam.get_cam_weights(x, module, targets, activations, grads)) if weights else None
    return raw.float(), None if found is None else found.float()


def layer_terms(model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's activations A and gradients dy_c/dA (B, K, u, v) by plain autograd, one class per image:
    the terms whose sums the methods form, for bounds (``tests/tolerances.py``) on how their orders differ."""
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            (grad,) = torch.autograd.grad(logits[torch.arange(len(classes)), classes].sum(), store[0])
    finally:
        handle.remove()
    return store[0].detach(), grad.detach()
