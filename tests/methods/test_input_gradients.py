"""Input gradient, SmoothGrad and Integrated Gradients: hand-worked linear cases, completeness, captum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from conftest import block_image
from gradcam.methods.input_gradients import quadrature
from methods.cam_nets import scaled_resnet18
from tolerances import assert_close, sum_atol, unit_roundoff

# HandNet: y0 = sum over 2x2 blocks of [[1, -2], [-2, 1]] * (block mean), so dy0/dx is that / 4 per pixel.
HAND_GRAD_0 = torch.kron(torch.tensor([[1.0, -2.0], [-2.0, 1.0]]), torch.ones(2, 2)).reshape(1, 1, 4, 4) / 4
X = block_image([[1.0, 2.0], [3.0, 4.0]])  # y0 = 1 - 4 - 6 + 4 = -5


class Quadratic(nn.Module):
    """y = 0.5 * ||x||^2 (one class): dy/dx = x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x**2).flatten(1).sum(1, keepdim=True)


def test_input_gradient_by_hand(hand_net):
    e = gradcam.InputGradient(hand_net)(X, 0)
    torch.testing.assert_close(e.heatmap, HAND_GRAD_0)
    assert e.scores.item() == -5.0
    torch.testing.assert_close(gradcam.InputGradient(hand_net)(X, 0, counterfactual=True).heatmap, -HAND_GRAD_0)


@pytest.mark.parametrize("method", ["trapezoid", "left", "right", "middle", "gausslegendre"])
def test_integrated_gradients_is_exact_on_a_linear_model(hand_net, method):
    # f linear and f(0) = 0: IG = x * grad for any rule whose weights sum to 1; sum IG = f(x).
    e = gradcam.IntegratedGradients(hand_net, steps=7, method=method)(X, 0)
    torch.testing.assert_close(e.heatmap, X * HAND_GRAD_0)
    torch.testing.assert_close(e.heatmap.sum(), torch.tensor(-5.0))


def test_quadrature_rules():
    for method in ("trapezoid", "left", "right", "middle", "gausslegendre"):
        alphas, weights = quadrature(method, 6)
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    for method in ("trapezoid", "middle", "gausslegendre"):  # exact for a line
        alphas, weights = quadrature(method, 6)
        torch.testing.assert_close((weights * alphas).sum(), torch.tensor(0.5, dtype=torch.float64))
    alphas, weights = quadrature("left", 4)  # int_0^1 a da by the left sum: (0 + 1 + 2 + 3) / 16
    torch.testing.assert_close((weights * alphas).sum(), torch.tensor(6 / 16, dtype=torch.float64))
    # Gauss-Legendre with 6 nodes is exact up to degree 11.
    alphas, weights = quadrature("gausslegendre", 6)
    torch.testing.assert_close((weights * alphas**11).sum(), torch.tensor(1 / 12, dtype=torch.float64))
    alphas, weights = quadrature("trapezoid", 5)
    torch.testing.assert_close(alphas, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([0.125, 0.25, 0.25, 0.25, 0.125], dtype=torch.float64))


def test_captum_trapezoid_weights_sum_to_one_minus_one_over_m(hand_net):
    captum = pytest.importorskip("captum.attr")
    steps = 7
    theirs = captum.IntegratedGradients(hand_net).attribute(X, target=0, n_steps=steps, method="riemann_trapezoid")
    # Captum's trapezoid steps are 1/m (halved at the ends) on m points 1/(m-1) apart: the weights sum
    # to 1 - 1/m, so completeness fails by exactly that factor on this linear model.
    torch.testing.assert_close(theirs.sum(), torch.tensor(-5.0 * (1 - 1 / steps)))
    ours = gradcam.IntegratedGradients(hand_net, steps=steps)(X, 0).heatmap
    torch.testing.assert_close(ours * (1 - 1 / steps), theirs)


def test_integrated_gradients_completeness_on_a_relu_net(gap_net):
    # sum IG = f(x) - f(x') up to the quadrature error, which shrinks with the steps (the ReLUs' kinks
    # make the integrand piecewise smooth). Measured, relative to sum |IG|: ~4e-3 at 16 steps, <1e-4 at 1024.
    torch.manual_seed(7)
    x = torch.randn(2, 3, 8, 8)
    baseline = 0.3 * torch.randn(3, 8, 8)
    with torch.no_grad():
        gap = gap_net(x)[:, [1, 4]].diagonal() - gap_net(baseline.expand_as(x))[:, [1, 4]].diagonal()
    errors = []
    for steps in (16, 1024):
        e = gradcam.IntegratedGradients(gap_net, steps=steps, baseline=baseline, batch_size=256)(x, [1, 4])
        mass = e.heatmap.abs().sum(dim=(1, 2, 3))
        errors.append(float(((e.heatmap.sum(dim=(1, 2, 3)) - gap).abs() / mass).max()))
    assert errors[1] < 2e-4
    assert errors[1] < errors[0] / 10


def ig_terms(model: nn.Module, x: torch.Tensor, classes: list[int], method: str, steps: int) -> torch.Tensor:
    """``sum_i |w_i| |x| |dy/dx(a_i x)|`` by plain autograd: the summed size of Integrated Gradients' terms."""
    alphas, weights = quadrature(method, steps)
    total = torch.zeros_like(x)
    for a, w in zip(alphas.tolist(), weights.tolist()):
        point = (a * x).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point)[torch.arange(len(classes)), classes].sum(), point)
        total += abs(w) * (x * grad).abs()
    return total


@pytest.mark.parametrize("method", ["left", "right", "middle", "gausslegendre"])
def test_integrated_gradients_agrees_with_captum(method):
    captum = pytest.importorskip("captum.attr")
    model = scaled_resnet18().double()  # float64: kernels' rounding (~1e-16) drops out of the comparison
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    ours = gradcam.IntegratedGradients(model, steps=5, method=method, batch_size=3)(x, [3, 7]).heatmap
    theirs = captum.IntegratedGradients(model).attribute(
        x, target=[3, 7], n_steps=5, method=f"riemann_{method}" if method != "gausslegendre" else method
    )
    assert theirs.abs().max() > 0
    # Captum rounds its step sizes and points to float32: each of the 5 terms w_i x dy/dx(a_i x) moves by
    # u32 relative (the gradient of this ReLU net is constant near each point); resnet18's float64 backward
    # (3x3 convs over 512 channels, ~40 steps forward and back) adds its own bound
    magnitude = float(ig_terms(model, x, [3, 7], method, 5).max())
    atol = 4 * unit_roundoff(torch.float32) * magnitude + sum_atol(512 * 9, magnitude, torch.float64, depth=40)
    torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=atol)


def test_smoothgrad_of_a_linear_model_is_its_gradient(hand_net):
    e = gradcam.SmoothGrad(hand_net, samples=5, noise=0.5)(X, 0)
    torch.testing.assert_close(e.heatmap, HAND_GRAD_0)


def test_smoothgrad_noise_level_and_seed():
    # dy/dx = x + eps for y = |x|^2 / 2: SmoothGrad - x is the mean of the drawn noise, which we redraw.
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 5) * 4 - 1
    e = gradcam.SmoothGrad(Quadratic(), samples=6, noise=0.2, seed=11, batch_size=4)(x, 0)
    generator = torch.Generator().manual_seed(11)
    for b in range(2):
        sigma = 0.2 * float(x[b].max() - x[b].min())
        noise = torch.randn((6, 3, 5, 5), generator=generator) * sigma
        torch.testing.assert_close(e.heatmap[b], x[b] + noise.mean(0))
    again = gradcam.SmoothGrad(Quadratic(), samples=6, noise=0.2, seed=11)(x, 0)
    torch.testing.assert_close(again.heatmap, e.heatmap)
    other = gradcam.SmoothGrad(Quadratic(), samples=6, noise=0.2, seed=12)(x, 0)
    assert not torch.allclose(other.heatmap, e.heatmap)
    plain = gradcam.SmoothGrad(Quadratic(), samples=3, noise=0.0)(x, 0)
    torch.testing.assert_close(plain.heatmap, x)


def test_smoothgrad_agrees_with_captum_noise_tunnel():
    captum = pytest.importorskip("captum.attr")
    model = scaled_resnet18().double()  # float64: kernels' rounding (~1e-16) drops out of the comparison
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)  # 3*8*8 values per draw: both RNG streams line up
    ours = gradcam.SmoothGrad(model, samples=4, stdev=0.3, seed=5, batch_size=3)(x, [3, 7]).heatmap
    torch.manual_seed(5)
    tunnel = captum.NoiseTunnel(captum.Saliency(model))
    theirs = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.3, target=[3, 7], abs=False)
    assert theirs.abs().max() > 0
    # the same 4 noisy copies, their gradients batched differently: resnet18's float64 bound (3x3 convs over
    # 512 channels, ~40 steps) on gradients no larger than the model's input gradients scale (x 100 margin
    # for the noisy copies' gradient sizes, still ~1e-9 relative)
    assert_close(ours, theirs, terms=512 * 9, magnitude=100 * float(theirs.abs().max()), depth=40)


def test_multi_target_and_batching(gap_net):
    torch.manual_seed(8)
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([[0, 2], [4, 1]])
    for cls, options in ((gradcam.IntegratedGradients, {"steps": 6}), (gradcam.SmoothGrad, {"samples": 5})):
        both = cls(gap_net, batch_size=2, **options)(x, target)
        assert both.heatmap.shape == (2, 2, 3, 8, 8)
        for j in range(2):
            single = cls(gap_net, batch_size=64, **options)(x, target[:, j])
            # batches of 2 against 64 points: gap_net's 72-term sums, 4 steps forward and 4 back, averaged over
            # the 5-6 points (their summed size taken as 6 times the largest average)
            atol = sum_atol(72, 6 * float(single.heatmap.abs().max()), depth=8)
            torch.testing.assert_close(both.heatmap[:, j], single.heatmap, rtol=0, atol=atol)


def test_bad_options_name_the_argument(gap_net):
    with pytest.raises(ValueError, match="steps must be an integer >= 2 for method='trapezoid'; got 1"):
        gradcam.IntegratedGradients(gap_net, steps=1)
    with pytest.raises(ValueError, match="method must be one of"):
        gradcam.IntegratedGradients(gap_net, method="simpson")
    with pytest.raises(gradcam.InputError, match=r"baseline of shape \(2, 8, 8\) does not broadcast"):
        gradcam.IntegratedGradients(gap_net, baseline=torch.zeros(2, 8, 8))(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        gradcam.SmoothGrad(gap_net, samples=0)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        gradcam.SmoothGrad(gap_net, noise=-0.1)
