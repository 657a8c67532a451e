"""FullGrad: input and bias-gradient terms against plain float64 autograd and pytorch-grad-cam."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import gradcam
from methods.cam_nets import scaled_resnet18


def minmax(m: torch.Tensor) -> torch.Tensor:
    low, high = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    return torch.where(high > low, (m - low) / torch.where(high > low, high - low, 1), 0)


def test_matches_the_definition_with_float64_autograd(gap_net):
    # GapNet: conv (bias) -> BN -> ReLU -> conv (bias) -> ReLU -> GAP -> linear: three bias layers
    net = copy.deepcopy(gap_net).double()
    torch.manual_seed(4)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    conv1, norm, conv2 = net.body[0], net.body[1], net.body[3]
    z1 = conv1(x)
    z2 = norm(z1)
    z3 = conv2(torch.relu(z2))
    y = net.fc(torch.relu(z3).mean((2, 3))).gather(1, torch.tensor([[1], [3]])).sum()
    gx, g1, g2, g3 = torch.autograd.grad(y, [x, z1, z2, z3])
    bn_bias = norm.bias - norm.running_mean * norm.weight / torch.sqrt(norm.running_var + norm.eps)
    terms = [(gx * x).abs()] + [
        (g * b[None, :, None, None]).abs() for g, b in ((g1, conv1.bias), (g2, bn_bias), (g3, conv2.bias))
    ]
    expected = sum(minmax(F.interpolate(t, size=(8, 8), mode="bilinear")).sum(1) for t in terms).detach()
    e = gradcam.FullGrad(gap_net)(x.detach().float(), [1, 3])
    assert e.layer == "body.0+body.1+body.3"
    # float32 against float64: every normalised channel map is within ~1e-7, their sum of 20 within 1e-6
    torch.testing.assert_close(e.raw, expected.float(), rtol=1e-5, atol=1e-5)
    assert e.heatmap.amax() == 1 and e.weights is None


def test_agrees_with_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # pytorch-grad-cam normalises each channel by (span + 1e-7): a classifier scaled by 1e4 makes every span >> 1e-7
    model = scaled_resnet18(1e4)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    ours = gradcam.FullGrad(model)(x, [3, 7])
    with pgc.FullGrad(model, []) as cam:
        theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(3), ClassifierOutputTarget(7)]))
    torch.testing.assert_close(ours.heatmap, theirs, rtol=0, atol=1e-5)
