"""Signals (B, C, L) and volumes / videos (B, C, T, H, W): hand-worked maps on hand-weighted nets, Captum's
LayerGradCam as an independent implementation, and naive float64 references for the gradient family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from conftest import RANK_SHAPES, gap_net_nd
from tolerances import assert_close


class HandNet1d(nn.Module):
    """x (1, 1, 4) -> conv1d k=2 s=2: A0 = pair means of x, A1 = -A0 -> flatten -> linear(4 -> 2).

    Class 0 reads (A0, A1) with [1, 3 | 0, 2] (alpha = 2, 1); class 1 with [0, 0 | 4, 0] (alpha = 0, 2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv1d(1, 2, kernel_size=2, stride=2, bias=False)
        self.head = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[[0.5, 0.5]], [[-0.5, -0.5]]]))
            self.head.weight.copy_(torch.tensor([[1.0, 3, 0, 2], [0.0, 0, 4, 0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class HandNet3d(nn.Module):
    """x (1, 1, 2, 2, 4) -> conv3d k=(1,2,2) s=(1,2,2): A0 = each frame's 2x2 block means (t=2, u=1, v=2),
    A1 = -A0 -> flatten -> linear(8 -> 2).

    Class 0 reads (A0, A1) with [1, 1, 1, 1 | 0, 0, 0, 2] (alpha = 1, 0.5); class 1 with
    [0, 0, 0, 0 | 4, 0, 0, 0] (alpha = 0, 1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv3d(1, 2, kernel_size=(1, 2, 2), stride=(1, 2, 2), bias=False)
        self.head = nn.Linear(8, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.stack([torch.full((1, 1, 2, 2), 0.25), torch.full((1, 1, 2, 2), -0.25)]))
            self.head.weight.copy_(torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 2], [0.0, 0, 0, 0, 4, 0, 0, 0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_hand_worked_signal() -> None:
    """x = [1, 3, 5, 7]: A0 = [2, 6], A1 = [-2, -6]. Class 0: L = ReLU(2 A0 + A1) = [2, 6]; linear upsampling
    to 4 samples (align_corners=False) reads positions (-0.25, 0.25, 0.75, 1.25) clamped to [0, 1]: [2, 3, 5, 6],
    normalised [0, 1/4, 3/4, 1]. Class 1: ReLU(2 A1) = 0 everywhere; its counterfactual ReLU(-2 A1) = [4, 12]."""
    net = HandNet1d().double().eval()
    x = torch.tensor([[[1.0, 3, 5, 7]]], dtype=torch.float64)
    e = gradcam.GradCAM(net, "features")(x, 0)
    assert_close(e.weights, torch.tensor([[2.0, 1.0]], dtype=torch.float64), terms=4)
    assert_close(e.raw, torch.tensor([[2.0, 6.0]], dtype=torch.float64), terms=4, depth=2)
    assert_close(e.heatmap, torch.tensor([[0.0, 0.25, 0.75, 1.0]], dtype=torch.float64), terms=4, depth=3)
    zero = gradcam.GradCAM(net, "features")(x, 1)
    assert torch.equal(zero.heatmap, torch.zeros(1, 4, dtype=torch.float64))
    against = gradcam.GradCAM(net, "features")(x, 1, counterfactual=True)
    assert_close(against.raw, torch.tensor([[4.0, 12.0]], dtype=torch.float64), terms=4, depth=2)


def test_hand_worked_video() -> None:
    """Frame block means A0 = [[1, 2]], [[3, 4]] (t, u, v). Class 0: L = ReLU(A0 - A0 / 2) = A0 / 2; trilinear
    upsampling to (2, 2, 4) keeps t, repeats u, and spreads v as [a, (3a + b) / 4, (a + 3b) / 4, b];
    normalised by (L - 0.5) / 1.5. Class 1: zero map; its counterfactual ReLU(A0) = A0."""
    net = HandNet3d().double().eval()
    means = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)  # (t, v) block means
    x = means.repeat_interleave(2, dim=1)[:, None, :].expand(2, 2, 4).reshape(1, 1, 2, 2, 4).clone()
    e = gradcam.GradCAM(net, "features")(x, 0)
    assert_close(e.weights, torch.tensor([[1.0, 0.5]], dtype=torch.float64), terms=4)
    assert_close(e.raw, (means / 2).reshape(1, 2, 1, 2), terms=8, depth=2)
    row = torch.stack([means[:, 0], (3 * means[:, 0] + means[:, 1]) / 4, (means[:, 0] + 3 * means[:, 1]) / 4,
                       means[:, 1]], dim=1) / 2  # fmt: skip
    expected = ((row - 0.5) / 1.5)[:, None, :].expand(2, 2, 4)[None]
    assert_close(e.heatmap, expected, terms=8, depth=3)
    assert torch.equal(gradcam.GradCAM(net, "features")(x, 1).heatmap, torch.zeros(1, 2, 2, 4, dtype=torch.float64))
    against = gradcam.GradCAM(net, "features")(x, 1, counterfactual=True)
    assert_close(against.raw, means.reshape(1, 2, 1, 2), terms=8, depth=2)


@pytest.mark.parametrize("rank", [1, 3], ids=["signal", "volume"])
def test_grad_cam_agrees_with_captum(rank: int) -> None:
    from captum.attr import LayerGradCam

    net = gap_net_nd(rank).double()
    x = torch.randn(RANK_SHAPES[rank], generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    target = torch.tensor([1, 3])
    ours = gradcam.GradCAM(net, "body")(x, target)
    theirs = LayerGradCam(net, net.body).attribute(x, target=target, relu_attributions=True)[:, 0].detach()
    assert float(theirs.abs().max()) > 0
    assert_close(ours.raw, theirs, terms=8 * 27 * 6, depth=3)


def reference_gradients(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A = body(x) and dy/dA by plain autograd on a float64 copy (no gradcam code)."""
    a = net.body(x).detach().requires_grad_(True)
    y = net.fc(torch.relu(a).flatten(2).mean(-1)).gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(y, a)
    return a.detach(), g


def naive_map(name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Each method's formula over all position axes of (B, K, *S) activations."""
    axes = tuple(range(2, a.dim()))
    if name == "gradcam":
        weights = g.mean(axes, keepdim=True)
    elif name == "layercam":
        return torch.relu((torch.relu(g) * a).sum(1))
    elif name == "hirescam":
        return torch.relu((g * a).sum(1))
    elif name == "xgradcam":
        weights = (a / a.sum(axes, keepdim=True) * g).sum(axes, keepdim=True)
    else:  # gradcam++: alpha = g^2 / (2 g^2 + sum(A) g^3), w = sum alpha ReLU(g)
        denominator = 2 * g**2 + a.sum(axes, keepdim=True) * g**3
        alpha = torch.where(denominator != 0, g**2 / torch.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * torch.relu(g)).sum(axes, keepdim=True)
    return torch.relu((weights * a).sum(1))


@pytest.mark.parametrize("rank", [1, 3], ids=["signal", "volume"])
@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam"])
def test_gradient_family_matches_naive_float64_formulas(name: str, rank: int) -> None:
    net = gap_net_nd(rank).double()
    x = torch.randn(RANK_SHAPES[rank], generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    target = torch.tensor([2, 0])
    a, g = reference_gradients(net, x, target)
    expected = naive_map(name, a, g)
    got = gradcam.create_explainer(name, net, "body")(x, target)
    assert float(expected.abs().max()) > 0
    assert_close(got.raw, expected, terms=8 * 27 * 6, depth=3)
    assert got.heatmap.shape == x.shape[:1] + x.shape[2:]


def test_guided_grad_cam_on_a_video_is_guided_backprop_times_the_map_on_every_channel() -> None:
    net = gap_net_nd(3).double()
    x = torch.randn(RANK_SHAPES[3], generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    guided = gradcam.GuidedBackprop(net)(x, 1).heatmap  # (B, C, T, H, W)
    cam = gradcam.GradCAM(net, "body")(x, 1).heatmap  # (B, T, H, W)
    combined = gradcam.GuidedGradCAM(net, "body")(x, 1).heatmap
    assert float(cam.std()) > 0
    for c in range(3):
        assert torch.equal(combined[:, c], guided[:, c] * cam)


def test_an_input_of_another_rank_than_the_model_names_the_layout() -> None:
    net = gap_net_nd(1)
    with pytest.raises(gradcam.InputError, match=r"x must be a 3-D tensor \(B, C, L\); got shape \(2, 3, 8, 8\); "
                       r"the model's first convolution 'body\.0' is 1-D"):  # fmt: skip
        gradcam.GradCAM(net)(torch.randn(2, 3, 8, 8))
    with pytest.raises(gradcam.InputError, match=r"got shape \(3, 16\) \(add a batch axis: x\.unsqueeze\(0\)\)"):
        gradcam.GradCAM(net)(torch.randn(3, 16))
    video = gap_net_nd(3)
    with pytest.raises(gradcam.InputError, match=r"x must be a 5-D tensor \(B, C, T, H, W\); got shape \(2, 3, 8, 8\)"):
        gradcam.GradCAM(video)(torch.randn(2, 3, 8, 8))
