"""Input-space gradient baselines: the plain gradient, SmoothGrad and Integrated Gradients.

Like Guided Backprop these explain in input space: ``heatmap`` and ``raw`` are (B, C, H, W)
attributions (signed, not normalised), ``(B, k, C, H, W)`` for k targets per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..capture import model_guard
from ..errors import InputError
from ..explanation import Explanation
from ..targets import OutputSelector, ResolvedTarget, Target, resolve_target
from ._noise import check_noise
from ._rescoring import kwargs_for_image
from .base import Explainer, check_input, finish, require_finite, run_model, usable_input
from .guided import InputGradient, input_gradients
from .scorecam import check_batch_size

__all__ = ["RULES", "InputGradient", "IntegratedGradients", "SmoothGrad", "gauss_legendre", "quadrature"]

RULES = ("trapezoid", "left", "right", "middle", "gausslegendre")


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1] (Golub-Welsch, float64): ``sum w f(a) ~ int_0^1 f``."""
    if n == 1:
        return torch.tensor([0.5], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return (nodes + 1) / 2, vectors[0] ** 2  # weights on [-1, 1] are 2 v0^2; halved on [0, 1]


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``a_i`` in [0, 1] and weights ``w_i`` (summing to 1) of an ``steps``-point rule.

    left / right / middle Riemann sums: ``a_i = i/m``, ``(i+1)/m``, ``(i+1/2)/m`` with ``w_i = 1/m``;
    trapezoid: ``a_i = i/(m-1)``, ``w_i = 1/(m-1)`` halved at both ends; gausslegendre: Gauss nodes.
    (Captum's ``riemann_trapezoid`` uses ``1/m`` steps, so its weights sum to ``1 - 1/m``.)
    """
    if rule not in RULES:
        raise ValueError(f"method must be one of {RULES}; got {rule!r}")
    least = 2 if rule == "trapezoid" else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < least:
        raise ValueError(f"steps must be an integer >= {least} for method={rule!r}; got {steps!r}")
    i = torch.arange(steps, dtype=torch.float64)
    if rule == "gausslegendre":
        return gauss_legendre(steps)
    if rule == "trapezoid":
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
        return i / (steps - 1), weights
    offset = {"left": 0.0, "right": 1.0, "middle": 0.5}[rule]
    return (i + offset) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


class _InputSpaceMethod(Explainer):
    """Shared call: resolve the targets on x, then average input gradients at points near x."""

    def __init__(
        self, model: nn.Module, *, batch_size: int = 32, output: OutputSelector = None, eval_mode: bool = True
    ) -> None:
        super().__init__(model, output=output, eval_mode=eval_mode)
        self.batch_size = check_batch_size(batch_size)

    def attribute(self, x: torch.Tensor, grads_at) -> torch.Tensor:
        """The attributions (B, k, C, H, W) given ``grads_at(points (n, C, H, W), b) -> (n, k, C, H, W)``."""
        raise NotImplementedError

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        x = check_input(x, self.model)
        sign = -1.0 if counterfactual else 1.0
        with model_guard(self.model, self.eval_mode), torch.inference_mode(False):
            x = usable_input(x).detach()
            with torch.no_grad():
                resolved = resolve_target(target, run_model(self.model, x, forward_kwargs), x.shape[0], self.output)

            def grads_at(points: torch.Tensor, b: int) -> torch.Tensor:
                return self._gradients(points, b, x.shape[0], target, resolved, sign, forward_kwargs)

            attributions = self.attribute(x, grads_at)
        if x.device.type != "cpu":  # checked after the work is queued: no mid-call sync
            require_finite(x)
        multi = resolved.multi
        attributions = finish(attributions, multi)
        return Explanation(
            heatmap=attributions,
            raw=attributions,
            scores=finish(resolved.scores.detach(), multi),
            method=self.name,
            classes=None if resolved.classes is None else finish(resolved.classes, multi),
            counterfactual=counterfactual,
            logits=resolved.logits,
        )

    def _gradients(
        self,
        points: torch.Tensor,
        b: int,
        batch: int,
        target: Target,
        resolved: ResolvedTarget,
        sign: float,
        forward_kwargs: Mapping[str, Any] | None,
    ) -> torch.Tensor:
        """``d(sign * y_b)/dx`` at ``points`` (n variants of image b), (n, k, C, H, W)."""
        n = points.shape[0]
        with torch.enable_grad():
            points = points.detach().requires_grad_(True)
            output = run_model(self.model, points, kwargs_for_image(forward_kwargs, b, batch, n))
            rows = target if resolved.classes is None else resolved.classes[b : b + 1].expand(n, -1)
            scores = resolve_target(rows, output, n, self.output).scores
            return input_gradients(sign * scores, points).detach()

    def _chunks(self, total: int):
        return [(s, min(s + self.batch_size, total)) for s in range(0, total, self.batch_size)]


class SmoothGrad(_InputSpaceMethod):
    """SmoothGrad (Smilkov et al., 2017): ``(1/n) sum_i dy/dx (x + eps_i)``, ``eps_i ~ N(0, sigma^2)``.

    ``sigma = noise * (max(x_b) - min(x_b))`` per image (the paper's noise level, 10-20 %), or the
    absolute ``stdev`` when given. The noise is reproducible: each call draws it from a CPU
    generator seeded with ``seed`` (image after image, ``samples`` draws each, then moved to x's
    device), so CPU and GPU see the same noise and the global RNG is untouched; ``seed=None``
    draws fresh noise. ``batch_size`` noisy copies go through the model per pass.
    """

    name = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        *,
        samples: int = 50,
        noise: float = 0.15,
        stdev: float | None = None,
        seed: int | None = 0,
        batch_size: int = 32,
        output: OutputSelector = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, batch_size=batch_size, output=output, eval_mode=eval_mode)
        check_noise(samples, noise, stdev)
        self.samples, self.noise, self.stdev, self.seed = samples, float(noise), stdev, seed

    def sigma(self, image: torch.Tensor) -> torch.Tensor | float:
        """The noise standard deviation for one image (a 0-d tensor on its device: no sync)."""
        if self.stdev is not None:
            return float(self.stdev)
        return self.noise * (image.amax() - image.amin())

    def attribute(self, x: torch.Tensor, grads_at) -> torch.Tensor:
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(self.seed))
        result = []
        for b in range(x.shape[0]):
            image = x[b : b + 1]
            noise = torch.randn((self.samples, *image.shape[1:]), generator=generator, dtype=torch.float32)
            noise = noise.to(device=x.device, dtype=x.dtype) * self.sigma(image)
            total = sum(grads_at(image + noise[s:e], b).sum(dim=0) for s, e in self._chunks(self.samples))
            result.append(total / self.samples)
        return torch.stack(result)


class IntegratedGradients(_InputSpaceMethod):
    """Integrated Gradients (Sundararajan et al., ICML 2017):
    ``IG(x) = (x - x') ⊙ int_0^1 dy/dx (x' + a (x - x')) da ~ (x - x') ⊙ sum_i w_i dy/dx (x' + a_i (x - x'))``.

    ``baseline`` x' is 0 by default, or a number, or a tensor broadcastable to x ((C, H, W),
    (1, C, H, W) or (B, C, H, W)). ``method`` picks the quadrature (see :func:`quadrature`; the
    default trapezoid rule's weights sum to exactly 1). Completeness: ``sum IG = y(x) - y(x')`` up to
    the quadrature error, exactly for a model linear in x. ``batch_size`` path points per pass.
    """

    name = "integrated-gradients"

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int = 50,
        method: str = "trapezoid",
        baseline: float | torch.Tensor | None = None,
        batch_size: int = 32,
        output: OutputSelector = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, batch_size=batch_size, output=output, eval_mode=eval_mode)
        self.alphas, self.weights = quadrature(method, steps)
        self.steps, self.method = steps, method
        if baseline is not None and not isinstance(baseline, (int, float, torch.Tensor)):
            raise ValueError(f"baseline must be None, a number or a tensor; got {type(baseline).__name__}")
        self.baseline = baseline

    def baseline_for(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline as a (B, C, H, W) tensor like x."""
        if self.baseline is None:
            return torch.zeros_like(x)
        if not isinstance(self.baseline, torch.Tensor):
            return torch.full_like(x, float(self.baseline))
        try:
            return torch.broadcast_to(self.baseline.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError:
            raise InputError(
                f"baseline of shape {tuple(self.baseline.shape)} does not broadcast to x's shape {tuple(x.shape)}; "
                "give (C, H, W), (1, C, H, W) or (B, C, H, W)"
            ) from None

    def attribute(self, x: torch.Tensor, grads_at) -> torch.Tensor:
        baseline = self.baseline_for(x)
        ones = [1] * (x.dim() - 1)  # alphas broadcast over one image's (C, *X); weights also over the k axis
        alphas = self.alphas.to(device=x.device, dtype=x.dtype).view(-1, *ones)
        weights = self.weights.to(device=x.device, dtype=x.dtype).view(-1, 1, *ones)
        result = []
        for b in range(x.shape[0]):
            start, delta = baseline[b : b + 1], x[b : b + 1] - baseline[b : b + 1]
            total = sum(
                (weights[s:e] * grads_at(start + alphas[s:e] * delta, b)).sum(dim=0)
                for s, e in self._chunks(self.steps)
            )
            result.append(total * delta)
        return torch.stack(result)
