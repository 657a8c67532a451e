"""An independent float64 Grad-CAM at a named layer, for checking the automatic choice's maps.

``reference_raw`` runs a float64 copy of the model with a plain forward hook that keeps the layer's
output in the graph, differentiates the target with ``torch.autograd.grad``, lays tokens on their
grid with the plain indexing of ``tokens[:, P + i*w + j] -> grid[:, :, i, j]`` (or a permute for
channels-last grids), then ``alpha = mean_uv(dy/dA)`` and ``ReLU(sum_k alpha_k A_k)``. It shares no
code with the engine (no capture, no reshape module, no target resolution).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tolerances import assert_close


def to_grid(tensor: torch.Tensor, layout: str | None, grid: tuple[int, int] | None, prefix: int | None) -> torch.Tensor:
    """(B, N, C) tokens / (B, h, w, C) channels-last / (B, K, u, v) maps -> (B, K, u, v), written out by hand."""
    if layout is None:
        return tensor
    if layout == "channels_last":
        return tensor.permute(0, 3, 1, 2)
    rows, cols = grid
    out = tensor.new_zeros(tensor.shape[0], tensor.shape[2], rows, cols)
    for i in range(rows):
        for j in range(cols):
            out[:, :, i, j] = tensor[:, prefix + i * cols + j, :]
    return out


def reference_raw(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    target: Callable[[Any], torch.Tensor],
    layout: str | None = None,
    grid: tuple[int, int] | None = None,
    prefix: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raw (B, u, v), magnitude (B, u, v) = sum_k |alpha_k A_k|)`` at ``layer`` in float64."""
    twin = copy.deepcopy(model).double().eval()
    seen: list[torch.Tensor] = []
    handle = twin.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        output = twin(x.double())
    finally:
        handle.remove()
    activations = seen[-1]
    scores = target(output)
    (grad,) = torch.autograd.grad(scores.sum(), activations)
    a = to_grid(activations.detach(), layout, grid, prefix)
    g = to_grid(grad, layout, grid, prefix)
    alpha = g.mean(dim=(-2, -1))
    terms = alpha[:, :, None, None] * a
    return torch.relu(terms.sum(1)), terms.abs().sum(1)


def assert_raw_matches(actual: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, channels: int) -> None:
    """Our raw map (float64 model, float32 weighted sum) against the float64 reference: the only rounding
    is the float32 sum of K products (plus one rounding of each factor), Higham's bound on sum |alpha_k A_k|."""
    assert_close(actual.double(), expected, terms=channels + 2, magnitude=float(magnitude.max()), dtype=torch.float32)
