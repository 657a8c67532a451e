"""Robustness of explanations to small input changes: Max- and Avg-Sensitivity (Yeh et al., "On the
(In)fidelity and Sensitivity of Explanations", NeurIPS 2019; Quantus ``MaxSensitivity`` / ``AvgSensitivity``).

For N perturbed inputs ``x + u_n`` with ``u_n ~ Uniform(-r, r)`` elementwise (Quantus's default perturbation,
``r = 0.2``) and the explanation ``e`` recomputed for each by the explainer under test,

    ``s_n = ||e(x + u_n) - e(x)||_F / ||e(x)||_F``,   MaxSensitivity = ``max_n s_n``,   AvgSensitivity = ``mean_n s_n``

per image (Quantus's normalisation: the Frobenius norm of the difference over that of the unperturbed
explanation). Lower is more robust. A map that ignores the input (a constant) scores 0, so robustness is
read together with faithfulness, never alone. An image whose explanation is all zero has no sensitivity
(NaN, counted in ``undefined``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .state import Mergeable

__all__ = ["AvgSensitivity", "MaxSensitivity", "Sensitivity", "sensitivities", "uniform_noise"]

Explain = Callable[[torch.Tensor, Any], Any]
Perturb = Callable[[torch.Tensor], torch.Tensor]


def uniform_noise(radius: float, generator: torch.Generator | None = None) -> Perturb:
    """``x -> x + u``, ``u ~ Uniform(-radius, radius)`` elementwise (drawn on the CPU from ``generator``)."""
    if not radius > 0:
        raise ValueError(f"radius must be > 0; got {radius}")

    def perturb(x: torch.Tensor) -> torch.Tensor:
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64) * (2 * radius) - radius
        return x + u.to(device=x.device, dtype=x.dtype)

    return perturb


def _maps(explain: Explain, x: torch.Tensor, target: Any) -> torch.Tensor:
    """The explainer's maps for ``x`` as (B, n) float64 rows (an :class:`~gradcam.Explanation` gives its heatmap)."""
    maps = explain(x, target)
    maps = getattr(maps, "heatmap", maps)
    if not isinstance(maps, torch.Tensor) or maps.shape[:1] != x.shape[:1]:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"explain must return one map per image, ({x.shape[0]}, ...); got {shape}")
    return maps.detach().double().reshape(x.shape[0], -1)


def sensitivities(
    explain: Explain,
    x: torch.Tensor,
    target: Any = None,
    *,
    samples: int = 10,
    radius: float = 0.2,
    perturb: Perturb | None = None,
    seed: int = 0,
    maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """``s_n`` of the module docstring for every image and sample, (B, samples), float64.

    ``explain(inputs, target)`` returns the maps (B, ...) or an :class:`~gradcam.Explanation` (its
    ``heatmap``): any explainer of this library works as is. ``perturb`` replaces the default
    :func:`uniform_noise` (``radius``, drawn from a generator seeded with ``seed``); it is called once per
    sample with the whole batch. ``maps``: the explanation of ``x`` when already computed.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    perturb = perturb or uniform_noise(radius, torch.Generator().manual_seed(seed))
    reference = _maps(explain, x, target) if maps is None else maps.detach().double().reshape(x.shape[0], -1)
    norms = reference.norm(dim=1)
    out = torch.empty(x.shape[0], samples, dtype=torch.float64, device=reference.device)
    for n in range(samples):
        out[:, n] = (_maps(explain, perturb(x), target) - reference).norm(dim=1)
    return torch.where(norms[:, None] > 0, out / torch.where(norms > 0, norms, 1)[:, None], math.nan)


class Sensitivity(Mergeable):
    """Max- and Avg-Sensitivity of an explainer (Yeh et al. 2019), TorchCAM-style ``update`` / ``summary``.

    ``update(explain, x, target, maps=None)``: one record per image with ``max_sensitivity`` and
    ``avg_sensitivity`` over ``samples`` perturbations of radius ``radius`` (seeded by ``seed`` on each
    call). ``summary``: their means over the images whose explanation is not all zero.
    """

    KEYS: tuple[str, ...] = ("max_sensitivity", "avg_sensitivity")

    def __init__(self, samples: int = 10, radius: float = 0.2, seed: int = 0) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1; got {samples}")
        uniform_noise(radius)  # validates the radius
        self.samples = samples
        self.radius = radius
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def update(
        self, explain: Explain, x: torch.Tensor, target: Any = None, maps: torch.Tensor | None = None
    ) -> list[dict[str, Any]]:
        values = sensitivities(
            explain, x, target, samples=self.samples, radius=self.radius, seed=self.seed, maps=maps
        ).cpu()
        records = [{"max_sensitivity": float(row.max()), "avg_sensitivity": float(row.mean())} for row in values]
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        defined = [r for r in self.records if not math.isnan(r["max_sensitivity"])]
        out: dict[str, Any] = {"images": len(self.records), "undefined": len(self.records) - len(defined)}
        for key in self.KEYS:
            out[key] = sum(r[key] for r in defined) / len(defined) if defined else math.nan
        return out


class MaxSensitivity(Sensitivity):
    """``max_n s_n`` per image, averaged over images (Yeh et al. 2019; Quantus ``MaxSensitivity``)."""

    KEYS = ("max_sensitivity",)


class AvgSensitivity(Sensitivity):
    """``mean_n s_n`` per image, averaged over images (Yeh et al. 2019; Quantus ``AvgSensitivity``)."""

    KEYS = ("avg_sensitivity",)
