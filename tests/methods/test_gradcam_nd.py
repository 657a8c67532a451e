"""Grad-CAM on 1-D signals (B, C, L) and 3-D clips (B, C, T, H, W): alpha is the mean of dy/dA over every
activation axis, maps are upsampled linearly / trilinearly. Hand-worked maps and float64 autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from tolerances import assert_close


class Signal(nn.Module):
    """x (B,1,4) -> conv k=2 s=2: A0 = pair means, A1 = -A0 -> flatten [A0_0, A0_1, A1_0, A1_1] -> linear(4 -> 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv1d(1, 2, 2, stride=2, bias=False)
        self.head = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[[0.5, 0.5]], [[-0.5, -0.5]]]))
            self.head.weight.copy_(torch.tensor([[1.0, 3, 2, 0], [0.0, 0, 1, 1]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_1d_map_by_hand():
    # x = [1, 3, 2, 6]: A0 = [2, 4], A1 = [-2, -4]. Class 0: dy/dA0 = [1, 3] (alpha 2), dy/dA1 = [2, 0] (alpha 1):
    # L = 2 A0 + A1 = [2, 4]. Linear upsampling to 4 samples (source positions -0.25 -> 0, 0.25, 0.75, 1.25 -> 1):
    # [2, 2.5, 3.5, 4], normalised [0, 0.25, 0.75, 1].
    e = gradcam.GradCAM(Signal(), "features")(torch.tensor([[[1.0, 3, 2, 6]]]), 0)
    torch.testing.assert_close(e.weights, torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(e.raw, torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(e.heatmap, torch.tensor([[0.0, 0.25, 0.75, 1.0]]))
    # Class 1 reads A1 only (alpha = [0, 1]): L = ReLU(A1) = 0, an all-zero map stays zero.
    e = gradcam.GradCAM(Signal(), "features")(torch.tensor([[[1.0, 3, 2, 6]]]), 1)
    torch.testing.assert_close(e.weights, torch.tensor([[0.0, 1.0]]))
    assert bool((e.raw == 0).all()) and bool((e.heatmap == 0).all())


class Clip(nn.Module):
    """x (B,1,4,4,4) -> conv 2x2x2 s=2: A0 = block means, A1 = -A0 -> flatten (16) -> linear(16 -> 1).

    Class 0 reads every cell of A0 with weight 1 (alpha_0 = 1) and the first cell of A1 with 2 (alpha_1 = 2/8).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv3d(1, 2, 2, stride=2, bias=False)
        self.head = nn.Linear(16, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.stack([torch.full((1, 2, 2, 2), 1 / 8), torch.full((1, 2, 2, 2), -1 / 8)]))
            self.head.weight.copy_(torch.cat([torch.ones(8), torch.tensor([2.0]), torch.zeros(7)])[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_3d_map_by_hand():
    # Block means v(t, i, j) = 4t + 2i + j + 1 (1..8). L = A0 + A1 / 4 = 0.75 v. v is linear in (t, i, j), so the
    # trilinear upsampling samples it at s in {0, 0.25, 0.75, 1} per axis (clamped half-pixel positions), and the
    # normalised heatmap is (4 s_t + 2 s_i + s_j) / 7.
    values = torch.arange(1.0, 9.0).reshape(2, 2, 2)
    x = torch.kron(values, torch.ones(2, 2, 2)).reshape(1, 1, 4, 4, 4)
    e = gradcam.GradCAM(Clip(), "features")(x, 0)
    torch.testing.assert_close(e.weights, torch.tensor([[1.0, 0.25]]))
    torch.testing.assert_close(e.raw, 0.75 * values[None])
    s = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = (4 * s[:, None, None] + 2 * s[None, :, None] + s[None, None, :]) / 7
    assert e.heatmap.shape == (1, 4, 4, 4)
    torch.testing.assert_close(e.heatmap, expected[None])


def tiny(dims: int) -> nn.Module:
    conv, pool = {1: (nn.Conv1d, nn.AdaptiveAvgPool1d), 3: (nn.Conv3d, nn.AdaptiveAvgPool3d)}[dims]
    torch.manual_seed(dims)
    return nn.Sequential(conv(3, 6, 3, padding=1), nn.ReLU(), conv(6, 5, 3, stride=2, padding=1), nn.ReLU(),
                         pool(1), nn.Flatten(), nn.Linear(5, 4)).eval()  # fmt: skip


@pytest.mark.parametrize(("dims", "shape"), [(1, (2, 3, 12)), (3, (2, 3, 4, 6, 6))])
def test_automatic_layer_and_float64_autograd(dims, shape):
    model = tiny(dims).double()
    x = torch.randn(*shape, dtype=torch.float64)
    e = gradcam.GradCAM(model)(x, [1, 3])
    assert e.layer == "3"  # the last ReLU before the pooling
    seen = []
    handle = model[3].register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out[[0, 1], [1, 3]].sum(), seen[0])
    alpha = grad.flatten(2).mean(-1)
    terms = alpha.reshape(*alpha.shape, *[1] * dims) * seen[0].detach()
    # the model runs in float64 in both; the weights and the weighted sum are float32 (one rounding per factor)
    assert_close(e.weights.double(), alpha, terms=int(grad[0, 0].numel()) + 1, magnitude=float(grad.abs().max()),
                 dtype=torch.float32)  # fmt: skip
    assert_close(e.raw.double(), torch.relu(terms.sum(1)), terms=5 + 2, magnitude=float(terms.abs().sum(1).max()),
                 dtype=torch.float32)  # fmt: skip
    assert e.heatmap.shape == (2, *shape[2:])


def test_other_methods_keep_2d_inputs_and_say_which_supports_more():
    with pytest.raises(gradcam.InputError, match=r"4-D tensor \(B, C, H, W\).*supported by GradCAM"):
        gradcam.LayerCAM(tiny(3))(torch.randn(1, 3, 4, 6, 6))
    with pytest.raises(gradcam.InputError, match=r"x has 2 channels but the model's first convolution '0' expects 3; "
                                                 r"x must be \(B, 3, L\)"):  # fmt: skip
        gradcam.GradCAM(tiny(1))(torch.randn(1, 2, 8))


def test_a_3d_tensor_for_an_image_model_is_still_a_missing_batch_axis(gap_net):
    with pytest.raises(gradcam.InputError, match=r"got shape \(3, 8, 8\) \(add a batch axis: x.unsqueeze\(0\)\)$"):
        gradcam.GradCAM(gap_net)(torch.randn(3, 8, 8))
    with pytest.raises(gradcam.InputError, match=r"got shape \(1, 3, 2, 8, 8\); the model's first convolution is 2-D"):
        gradcam.GradCAM(gap_net)(torch.randn(1, 3, 2, 8, 8))
