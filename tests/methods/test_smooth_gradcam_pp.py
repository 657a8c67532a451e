"""Smooth Grad-CAM++: the paper's averaged derivatives against plain float64 autograd; TorchCAM where it agrees,
and the hand case where it does not (its map uses the last noisy sample's activations)."""

from __future__ import annotations

import copy

import pytest
import torch

import gradcam


def naive_smooth_plus_plus(net, x, classes, samples, fraction, seed):
    """The paper's recipe in float64 with plain autograd: D^p averaged over the documented noise draws."""
    net = copy.deepcopy(net).double()
    x = x.double()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.stack(
        [torch.randn((samples, *x.shape[1:]), generator=generator) * fraction * float(x[b].max() - x[b].min())
         for b in range(x.shape[0])], dim=1,
    ).double()  # fmt: skip
    d1 = d2 = d3 = 0
    for m in range(samples):
        a = net.body(x + noise[m]).detach().requires_grad_(True)
        y = net.fc(net.pool(torch.relu(a)).flatten(1)).gather(1, torch.tensor(classes)[:, None]).sum()
        (g,) = torch.autograd.grad(y, a)
        d1, d2, d3 = d1 + g / samples, d2 + g**2 / samples, d3 + g**3 / samples
    a = net.body(x).detach()
    denominator = 2 * d2 + a.sum((2, 3), keepdim=True) * d3
    alpha = torch.where(denominator != 0, d2 / torch.where(denominator != 0, denominator, 1), 0)
    weights = (alpha * torch.relu(d1)).sum((2, 3))
    return weights, torch.relu((weights[:, :, None, None] * a).sum(1))


def test_averaged_derivatives_match_float64_autograd(gap_net):
    # 'body' is before the ReLU: the gradients depend on the noisy input, so the averaging matters
    torch.manual_seed(5)
    x = torch.randn(2, 3, 8, 8)
    e = gradcam.SmoothGradCAMPlusPlus(gap_net, "body", samples=4, noise=0.3, seed=2)(x, [1, 3])
    weights, raw = naive_smooth_plus_plus(gap_net, x, [1, 3], 4, 0.3, 2)
    torch.testing.assert_close(e.weights, weights.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.raw, raw.float(), rtol=1e-5, atol=1e-6 * float(raw.abs().max()))
    plain = gradcam.GradCAMPlusPlus(gap_net, "body")(x, [1, 3])
    assert not torch.allclose(e.weights, plain.weights, rtol=1e-3)  # the noise did change the weights


def test_without_noise_it_is_grad_cam_plus_plus(gap_net):
    x = torch.randn(2, 3, 8, 8)
    e = gradcam.SmoothGradCAMPlusPlus(gap_net, "body", samples=3, stdev=0.0)(x, [1, 3])
    plain = gradcam.GradCAMPlusPlus(gap_net, "body")(x, [1, 3])
    torch.testing.assert_close(e.weights, plain.weights, rtol=1e-6, atol=0)
    torch.testing.assert_close(e.raw, plain.raw, rtol=1e-6, atol=1e-7)


def torchcam_map(net, x, classes, samples, std, seed):
    from torchcam.methods import SmoothGradCAMpp

    torch.manual_seed(seed)
    with SmoothGradCAMpp(net, "act", num_samples=samples, std=std, input_shape=tuple(x.shape[1:])) as extractor:
        net(x)
        return extractor(class_idx=classes, normalized=False)[0]


def test_torchcam_agrees_without_noise_and_uses_the_last_noisy_activations_with_it(gap_net):
    pytest.importorskip("torchcam")
    with torch.no_grad():
        gap_net.fc.weight.mul_(1e3)  # TorchCAM adds 1e-8 to the denominator: negligible for g ~ 1e3 / 16
    torch.manual_seed(6)
    x = torch.randn(2, 3, 8, 8)
    ours = gradcam.SmoothGradCAMPlusPlus(gap_net, "act", samples=3, stdev=0.0)(x, [1, 3])
    theirs = torchcam_map(gap_net, x, [1, 3], 3, 1e-12, seed=0)  # its Normal needs std > 0: below float32's ulp
    torch.testing.assert_close(ours.raw, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
    # With noise, on 'act' (after the ReLU, before GAP + linear) the derivatives are W_c / Z whatever the
    # input, so both weights are Grad-CAM++'s; the paper's map then sums the CLEAN activations, TorchCAM's
    # the activations of its last noisy sample (its forward hook keeps the last one).
    ours = gradcam.SmoothGradCAMPlusPlus(gap_net, "act", samples=3, stdev=0.5)(x, [1, 3])
    theirs = torchcam_map(gap_net, x, [1, 3], 3, 0.5, seed=7)
    torch.manual_seed(7)
    normal = torch.distributions.Normal(0, 0.5)
    last = [normal.sample(x.shape) for _ in range(3)][-1]  # TorchCAM's draws, reproduced
    with torch.no_grad():
        noisy = torch.relu(gap_net.body(x + last))
    weights = ours.weights
    torch.testing.assert_close(theirs, torch.relu(torch.einsum("bk,bkuv->buv", weights, noisy)), rtol=1e-5, atol=1e-4)
    clean = gradcam.GradCAMPlusPlus(gap_net, "act")(x, [1, 3])
    torch.testing.assert_close(ours.raw, clean.raw, rtol=1e-5, atol=1e-5 * float(clean.raw.abs().max()))
    assert float((theirs - ours.raw).abs().max()) > 0.1 * float(ours.raw.abs().max())
