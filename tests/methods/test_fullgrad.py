"""FullGrad: input and bias-gradient terms against plain float64 autograd and pytorch-grad-cam."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import gradcam
from methods.cam_nets import scaled_resnet18
from tolerances import normalized_atol, sum_atol, unit_roundoff


def minmax(m: torch.Tensor) -> torch.Tensor:
    # a constant map upsampled bilinearly is constant only up to a rounding (w c + (1 - w) c): such a map is flat
    # (0), not its rounding noise stretched to [0, 1] (FullGrad guards against the same in channel_maps)
    low, high = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    varies = high - low > 8 * unit_roundoff(m.dtype) * high.abs()
    return torch.where(varies, (m - low) / torch.where(varies, high - low, 1), 0)


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
    # float32 against float64. The gradients' float32 errors, from the magnitudes of the terms they sum (the
    # backward with |W| and the same ReLU masks): dy/dz3 = W_fc / 16 is exact; dy/dz2 sums 6 * 9 terms, dy/dz1
    # scales it, dy/dx sums 8 * 9 more (depth 2). A channel's constant factor (its bias, the float32 BN bias)
    # cancels in the normalisation; |g b| adds a rounding, the bilinear resize a convex combination. Each
    # normalised map is then within normalized_atol of its span; the raw map sums 25 maps in [0, 1]. (The input
    # maps dominate the bound: dy/dx cancels to spans ~1e-3 of its terms' size; measured errors are ~1e-6.)
    with torch.no_grad():
        mask2 = (z2 > 0).double()
        m2 = mask2 * F.conv_transpose2d(
            (z3 > 0).double() * net.fc.weight[[1, 3]].abs()[:, :, None, None] / 16,
            conv2.weight.abs(), stride=2, padding=1, output_padding=1,
        )  # fmt: skip
        m1 = m2 * (norm.weight / torch.sqrt(norm.running_var + norm.eps)).abs()[None, :, None, None]
        mx = F.conv_transpose2d(m1, conv1.weight.abs(), padding=1)
    # per cell: sum_atol is linear in the magnitude
    errors = [(sum_atol(72, 1.0, depth=2) * mx, gx), (sum_atol(54, 1.0) * m1, g1), (sum_atol(54, 1.0) * m2, g2)]
    errors.append((torch.zeros_like(g3), g3))
    biases = [bias.detach() for bias in (conv1.bias, bn_bias, conv2.bias)]
    atol = 0.0
    for b in range(2):
        factors = [x[b].detach(), *(bias[:, None, None] for bias in biases)]
        bounds = [(error[b] * f.abs(), value[b] * f) for (error, value), f in zip(errors, factors)]
        total = 0.0
        for error, value in bounds:
            for c in range(value.shape[0]):
                span = float(value[c].abs().amax() - value[c].abs().amin())
                if span > 0:
                    raw_err = float(error[c].max()) + 4 * unit_roundoff() * float(value[c].abs().max())
                    total += normalized_atol(raw_err, span) + sum_atol(4, 1.0)  # + the resize's roundings
        atol = max(atol, total + sum_atol(25, float(expected[b].max())))
    torch.testing.assert_close(e.raw, expected.float(), rtol=0, atol=atol)
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
        terms = [(torch.as_tensor(b)[None, :, None, None] * g).abs() for b, g in
                 zip(cam.bias_data, cam.activations_and_grads.gradients)]  # fmt: skip
    x.requires_grad_(True)
    (gx,) = torch.autograd.grad(model(x)[[0, 1], [3, 7]].sum(), x)
    terms.append((gx * x).abs().detach())
    # The same gradients (the same autograd kernels); each channel map |b g| is min-max normalised (a subtraction
    # and a quotient), resized (a convex combination of 4 values), all in [0, 1]: within sum_atol(4, 1, depth=2),
    # plus pytorch-grad-cam's 1e-7 added to the span (relative 1e-7 / span). The raw map sums all channel maps
    # (non-negative: their sum is the raw map), then the heatmap is its min-max normalisation. (Per image.)
    spans = torch.cat([t.amax((2, 3)) - t.amin((2, 3)) for t in terms], dim=1)  # (B, all channels)
    channels = int((spans > 0).sum(1).max())  # a flat channel map is 0 on both sides, exactly
    per_map = sum_atol(4, 1.0, depth=2) + 1e-7 / float(spans[spans > 0].min())
    raw_atol = channels * per_map + sum_atol(channels, float(ours.raw.max()))
    span = float((ours.raw.amax((1, 2)) - ours.raw.amin((1, 2))).min())
    atol = normalized_atol(raw_atol, span) + 4 * unit_roundoff()
    torch.testing.assert_close(ours.heatmap, theirs, rtol=0, atol=atol)
