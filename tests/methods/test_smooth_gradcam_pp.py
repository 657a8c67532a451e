"""Smooth Grad-CAM++: the paper's averaged derivatives against plain float64 autograd; TorchCAM where it agrees,
and the hand case where it does not (its map uses the last noisy sample's activations)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import gradcam
from tolerances import gamma, sum_atol, unit_roundoff


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
    naive_smooth_plus_plus.parts = {"d1": d1, "d2": d2, "d3": d3, "a": a, "alpha": alpha}
    return weights, torch.relu((weights[:, :, None, None] * a).sum(1))


def closed_form_atols(a, g, samples, eps=0.0, map_a=None):
    """Bounds on two float32 evaluations of Grad-CAM++'s closed form from the same exact gradients g and the same
    activations a (float64, (B, K, u, v)): weights (B, K) and map (B, u, v) over ``map_a`` (default a).

    Each side's D^p is a power of g (<= 2 roundings) averaged over ``samples`` equal values; S = sum a over 16
    cells; the denominator 2 D2 + S D3 (+ ``eps``, TorchCAM's) can cancel, which alpha's error divides by; the
    weights sum 16 cells, the map 6 channels. Both sides' errors count (the factor 2).
    """
    map_a = a if map_a is None else map_a
    d2, d3 = g * g, g * g * g
    total = a.sum((2, 3), keepdim=True)
    r_d = gamma(samples + 3)
    error_total = sum_atol(17, 1.0) * a.abs().sum((2, 3), keepdim=True)  # S d3, or TorchCAM's sum (d3 a)
    denominator = 2 * d2 + total * d3
    size = 2 * d2.abs() + (total * d3).abs()
    error_denominator = size * (r_d + gamma(2)) + d3.abs() * error_total + eps
    nonzero = denominator != 0
    r_alpha = r_d + unit_roundoff() + torch.where(nonzero, error_denominator / denominator.abs().clamp_min(1e-300), 0)
    alpha = torch.where(nonzero, d2 / torch.where(nonzero, denominator, 1), 0)
    terms = (alpha * torch.relu(g)).abs()
    weights = terms.sum((2, 3))
    weights_atol = 2 * (terms * (r_alpha + r_d + unit_roundoff())).sum((2, 3)) + sum_atol(16, 1.0) * weights
    raw_atol = (weights_atol[:, :, None, None] * map_a.abs()).sum(1)
    return weights_atol, raw_atol + sum_atol(6, 1.0) * (weights[:, :, None, None] * map_a.abs()).sum(1)


def layer_activations_and_gradients(net, x, classes, layer):
    """'body' (before the ReLU) or 'act' of GapNet in float64, and the exact gradient of y_c there: W_c / 16, times
    the ReLU's mask on 'body'."""
    net = copy.deepcopy(net).double()
    with torch.no_grad():
        a = net.body(x.double())
    mask = (a > 0).double()
    a = torch.relu(a) if layer == "act" else a
    g = net.fc.weight[classes][:, :, None, None] / 16 * (mask if layer == "body" else torch.ones_like(a))
    return a, g.detach()


def within(actual, expected, atol):
    """|actual - expected| <= atol elementwise (a bound per entry)."""
    excess = (actual.double() - expected).abs() - atol
    assert bool((excess <= 0).all()), f"off by up to {float(excess.max())} beyond the bound"


def float32_bounds(net, x):
    """Bounds on the float32 weights (B, K) and map (B, u, v) against the float64 recipe just run, by first-order
    propagation of the roundings: 'body' is conv (27 terms) -> BN -> ReLU -> conv (72 terms); its gradient
    W_c / 16 (or 0, by the ReLU after it) is exact, so D^p only rounds its powers and the mean of 4; the
    denominator 2 D2 + S D3 (S a sum of 16 cells of A, signs mixed) can cancel, which alpha's error divides by."""
    p = naive_smooth_plus_plus.parts
    d1, d2, d3, a, alpha = p["d1"], p["d2"], p["d3"], p["a"], p["alpha"]
    net = copy.deepcopy(net).double()
    x = x.double()
    with torch.no_grad():  # every term's size: the layers with |W| and |biases| on |x|
        conv1, norm, conv2 = net.body[0], net.body[1], net.body[3]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        h = F.conv2d(x.abs(), conv1.weight.abs(), padding=1) + conv1.bias.abs()[:, None, None]
        h = scale.abs()[:, None, None] * h + shift.abs()[:, None, None]
        size_a = F.conv2d(h, conv2.weight.abs(), stride=2, padding=1) + conv2.bias.abs()[:, None, None]
    error_a = sum_atol(72, 1.0, depth=2) * size_a  # per cell (sum_atol is linear in the magnitude)
    total = a.sum((2, 3), keepdim=True)
    error_total = error_a.sum((2, 3), keepdim=True) + sum_atol(16, 1.0) * size_a.sum((2, 3), keepdim=True)
    denominator = 2 * d2 + total * d3
    error_denominator = 2 * d2.abs() * gamma(7) + (total * d3).abs() * gamma(8) + d3.abs() * error_total
    nonzero = denominator != 0
    relative_alpha = gamma(6) + torch.where(nonzero, error_denominator / denominator.abs().clamp_min(1e-300), 0)
    terms = (alpha * torch.relu(d1)).abs()
    weights_atol = (terms * (relative_alpha + gamma(5))).sum((2, 3)) + sum_atol(16, 1.0) * terms.sum((2, 3))
    weights = (alpha * torch.relu(d1)).sum((2, 3))
    raw_atol = (weights_atol[:, :, None, None] * a.abs() + weights.abs()[:, :, None, None] * error_a).sum(1)
    raw_atol = raw_atol + sum_atol(6, 1.0) * (weights.abs()[:, :, None, None] * a.abs()).sum(1)
    return weights_atol + 4 * unit_roundoff() * weights.abs(), raw_atol + 4 * unit_roundoff() * raw_atol


def test_averaged_derivatives_match_float64_autograd(gap_net):
    # 'body' is before the ReLU: the gradients depend on the noisy input, so the averaging matters
    torch.manual_seed(5)
    x = torch.randn(2, 3, 8, 8)
    e = gradcam.SmoothGradCAMPlusPlus(gap_net, "body", samples=4, noise=0.3, seed=2)(x, [1, 3])
    weights, raw = naive_smooth_plus_plus(gap_net, x, [1, 3], 4, 0.3, 2)
    weights_atol, raw_atol = float32_bounds(gap_net, x)
    within(e.weights, weights, weights_atol)
    within(e.raw, raw, raw_atol)
    plain = gradcam.GradCAMPlusPlus(gap_net, "body")(x, [1, 3])
    # the noise did change the weights: by more than 1e-3 relative, far above the float32 bounds (~1e-5 relative)
    assert not torch.allclose(e.weights, plain.weights, rtol=1e-3, atol=0)


def test_without_noise_it_is_grad_cam_plus_plus(gap_net):
    x = torch.randn(2, 3, 8, 8)
    e = gradcam.SmoothGradCAMPlusPlus(gap_net, "body", samples=3, stdev=0.0)(x, [1, 3])
    plain = gradcam.GradCAMPlusPlus(gap_net, "body")(x, [1, 3])
    # the mean of 3 equal derivatives against the derivatives themselves: Grad-CAM++ up to roundings
    weights_atol, raw_atol = closed_form_atols(*layer_activations_and_gradients(gap_net, x, [1, 3], "body"), 3)
    within(e.weights, plain.weights.double(), weights_atol)
    within(e.raw, plain.raw.double(), raw_atol)


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
    # the same exact g = W_c / 16 on 'act' and clean activations (noise of 1e-12 is below x's ulp), 3 samples each
    a, g = layer_activations_and_gradients(gap_net, x, [1, 3], "act")
    within(ours.raw, theirs.double(), closed_form_atols(a, g, 3, eps=1e-8)[1])
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
    # TorchCAM's weights are Grad-CAM++'s from the clean activations (within the closed form's roundings, both
    # ours and its), summed over its last noisy activations
    noisy_atol = closed_form_atols(a, g, 3, eps=1e-8, map_a=noisy.double())[1]
    within(theirs, torch.relu(torch.einsum("bk,bkuv->buv", weights, noisy)).double(), noisy_atol)
    clean = gradcam.GradCAMPlusPlus(gap_net, "act")(x, [1, 3])
    within(ours.raw, clean.raw.double(), closed_form_atols(a, g, 3)[1])
    assert float((theirs - ours.raw).abs().max()) > 0.1 * float(ours.raw.abs().max())
