"""Reproducible Gaussian input noise shared by the noise-smoothed methods (as :class:`SmoothGrad` draws it)."""

from __future__ import annotations

import math
from typing import Any

import torch


def check_samples(samples: Any) -> None:
    """A ValueError unless ``samples`` (how many noisy or scaled copies a method averages) is a positive int."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer; got {samples!r}")


def check_noise(samples: Any, noise: Any, stdev: Any) -> None:
    """ValueErrors naming ``samples`` (a positive int), ``noise`` (a fraction >= 0) or ``stdev`` (None or >= 0)."""
    check_samples(samples)
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0 (a fraction of the input range); got {noise!r}")
    if stdev is not None and not (isinstance(stdev, (int, float)) and math.isfinite(stdev) and stdev >= 0):
        raise ValueError(f"stdev must be None or a finite number >= 0; got {stdev!r}")


def input_noise(x: torch.Tensor, samples: int, noise: float, stdev: float | None, seed: int | None) -> torch.Tensor:
    """``samples`` noise tensors for the batch ``x``: (samples, *x.shape), N(0, sigma_b^2) for image b.

    ``sigma_b = noise * (max(x_b) - min(x_b))`` (SmoothGrad's noise level) or the absolute ``stdev``.
    Drawn on a CPU generator seeded with ``seed`` (image after image, ``samples`` draws each, then moved
    to x's device): the same noise on every device and for every call, the global RNG untouched;
    ``seed=None`` draws fresh noise.
    """
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    draws = []
    for b in range(x.shape[0]):
        image = x[b]
        sigma = float(stdev) if stdev is not None else noise * (image.amax() - image.amin())
        draw = torch.randn((samples, *image.shape), generator=generator, dtype=torch.float32)
        draws.append(draw.to(device=x.device, dtype=x.dtype) * sigma)
    return torch.stack(draws, dim=1)
