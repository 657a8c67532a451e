"""Max- / Avg-Sensitivity (Yeh et al. 2019): exact zeros and hand values, and agreement with Quantus on the
same noise; Quantus's Sparseness and Complexity against complexity.gini / map_entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradcam.evaluation.complexity import gini, map_entropy
from gradcam.evaluation.robustness import AvgSensitivity, MaxSensitivity, Sensitivity, sensitivities, uniform_noise
from gradcam.methods.guided import InputGradient
from tolerances import assert_close, sum_atol


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).eval()


def test_the_input_gradient_of_a_linear_model_has_sensitivity_exactly_zero():
    model = linear_model()
    x = torch.randn(3, 2, 5, 5)
    explainer = InputGradient(model)
    values = sensitivities(explainer, x, [0, 1, 2], samples=4, radius=0.5)
    assert torch.equal(values, torch.zeros(3, 4, dtype=torch.float64))  # dy/dx = w whatever x is
    metric = MaxSensitivity(samples=3)
    metric.update(explainer, x, [0, 1, 2])
    assert metric.summary() == {"images": 3, "undefined": 0, "max_sensitivity": 0.0}


def test_gradient_times_input_of_a_linear_model_by_hand():
    weights = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64)
    x = torch.tensor([[[[3.0, 1.0], [2.0, 1.0]]]], dtype=torch.float64)

    def explain(inputs: torch.Tensor, target: object) -> torch.Tensor:  # e(x) = w * x
        return weights * inputs[:, 0]

    steps = iter([torch.full_like(x, 0.5), torch.tensor([[[[0.0, 0.0], [0.0, -1.0]]]], dtype=torch.float64)])
    values = sensitivities(explain, x, samples=2, perturb=lambda inputs: inputs + next(steps))[0]
    # ||w * x|| = ||(3, -2, 1, 4)|| = sqrt(30); ||w * u_1|| = 0.5 ||w|| = 0.5 sqrt(21.25); ||w * u_2|| = 4
    expected = torch.tensor([0.5 * math.sqrt(21.25) / math.sqrt(30), 4 / math.sqrt(30)], dtype=torch.float64)
    assert_close(values, expected, terms=4, depth=3)
    metric = AvgSensitivity(samples=2)
    record = metric.update(lambda i, t: weights * i[:, 0], x)[0]
    assert set(record) == {"max_sensitivity", "avg_sensitivity"}  # both kept; the summary gives its own
    assert set(metric.summary()) == {"images", "undefined", "avg_sensitivity"}
    zero = Sensitivity(samples=2).update(lambda i, t: torch.zeros_like(i), x)
    assert math.isnan(zero[0]["max_sensitivity"])


def test_uniform_noise_stays_within_its_radius_and_is_seeded():
    x = torch.zeros(2, 3, 16, 16)
    noisy = uniform_noise(0.2, torch.Generator().manual_seed(5))(x)
    assert float(noisy.abs().max()) <= 0.2 and float(noisy.abs().max()) > 0.19
    assert torch.equal(noisy, uniform_noise(0.2, torch.Generator().manual_seed(5))(x))
    assert abs(float(noisy.double().mean())) < 5 * 0.2 / math.sqrt(3 * noisy.numel())  # std of U(-r, r): r/sqrt 3
    with pytest.raises(ValueError, match="radius"):
        uniform_noise(0.0)
    with pytest.raises(ValueError, match="samples"):
        AvgSensitivity(samples=0)
    with pytest.raises(ValueError, match="one map per image"):
        sensitivities(lambda i, t: torch.zeros(5), torch.zeros(2, 1, 2, 2))


def _gradient_maps(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """|dy/dx| summed over channels, (B, 1, H, W), float64: the explainer both libraries recompute."""
    inputs = inputs.detach().double().requires_grad_(True)
    scores = model(inputs).gather(1, targets.long()[:, None]).sum()
    (grad,) = torch.autograd.grad(scores, inputs)
    return grad.abs().sum(1, keepdim=True)


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity"])
def test_sensitivity_matches_quantus_on_the_same_noise(name: str):
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 36, 2))
    model = model.double().eval()
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 1])

    def explain_numpy(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: object) -> np.ndarray:
        return _gradient_maps(model, torch.from_numpy(inputs), torch.from_numpy(np.asarray(targets))).numpy()

    np.random.seed(7)
    metric = getattr(quantus, name)(nr_samples=5, lower_bound=0.2, disable_warnings=True)
    theirs = np.asarray(
        metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=explain_numpy, device="cpu")
    )
    np.random.seed(7)  # Quantus draws Uniform(-0.2, 0.2) for the whole (B, n) batch once per sample

    def replay(inputs: torch.Tensor) -> torch.Tensor:
        noise = np.random.uniform(low=-0.2, high=0.2, size=(inputs.shape[0], inputs[0].numel()))
        return inputs + torch.from_numpy(noise).view_as(inputs)

    mine = sensitivities(lambda i, t: _gradient_maps(model, i, t), x, y, samples=5, perturb=replay)
    mine = mine.amax(1) if name == "MaxSensitivity" else mine.mean(1)
    # the same float64 maps; norms of 36-term sums and one quotient: within float64 rounding
    torch.testing.assert_close(mine, torch.from_numpy(theirs), rtol=4 * sum_atol(36, 1.0, torch.float64), atol=0)


def test_sparseness_and_entropy_match_quantus():
    quantus = pytest.importorskip("quantus")
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(4, 1, 6, 7, generator=generator, dtype=torch.float64) ** 3
    x = torch.zeros(4, 1, 6, 7, dtype=torch.float64).numpy()
    y = np.zeros(4, dtype=int)
    options = {"normalise": False, "abs": True, "disable_warnings": True}
    sparseness = np.asarray(quantus.Sparseness(**options)(model=None, x_batch=x, y_batch=y, a_batch=maps.numpy()))
    entropy = np.asarray(quantus.Complexity(**options)(model=None, x_batch=x, y_batch=y, a_batch=maps.numpy()))
    rows = maps.flatten(1)
    n, total = rows.shape[1], rows.sum(1)
    # Quantus adds 1e-7 to every value: sum_i (2i - n - 1) = 0, so its index is G * S / (S + n 1e-7) exactly
    expected = gini(rows) * total / (total + n * 1e-7)
    assert_close(torch.from_numpy(sparseness), expected, terms=n, depth=3)
    # Quantus takes log(p + 1e-12): sum_i p_i log(1 + 1e-12 / p_i) <= n 1e-12 below the exact entropy
    difference = map_entropy(rows) - torch.from_numpy(entropy)
    assert bool((difference.abs() <= n * 1e-12 + sum_atol(n, math.log(n), torch.float64, depth=2)).all())
