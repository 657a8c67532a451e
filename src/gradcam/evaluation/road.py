"""ROAD: RemOve And Debias (Rong, Leemann et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022).

Removing pixels by setting them to a constant leaks the removal mask's shape to the model (the class can be
read off the hole). ROAD imputes removed pixels instead with **noisy linear imputation**: each removed
pixel is the weighted mean of its 8 neighbours -- weight 1/6 for the 4 direct neighbours, 1/12 for the 4
diagonal ones (the paper's reference implementation), renormalised over the neighbours inside the image --
solved jointly for all removed pixels of an image (a sparse linear system), then Gaussian noise of standard
deviation ``noise`` is added to the imputed values. Linear images are fixed points away from the border.

The system ``sum_j w_ij (v_i - v_j) = 0`` over removed pixels i (v_j known for kept j) is the grid
Laplacian restricted to the removed pixels: symmetric and positive definite whenever one pixel is kept, so
it is solved here matrix-free by conjugate gradients (a 3 x 3 neighbour sum per step), every
image, channel and removal fraction at once, on the input's device.

Curves: **MoRF** removes the most relevant ``p`` % of the pixels, **LeRF** the least relevant, for each ``p``
in ``percentages``; the model scores the target on each imputed image (:func:`.scoring.target_scores`).
A faithful map gives a low MoRF curve and a high LeRF curve; :class:`ROAD` reports both means and their gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..targets import OutputSelector
from .faithfulness import _check_images, _check_saliency, pixel_ranks
from .scoring import MetricTarget, _check_target, target_scores
from .state import Mergeable

__all__ = ["ORDERS", "PERCENTAGES", "ROAD", "noisy_linear_imputation", "road_curves", "road_masks"]

PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ORDERS = ("morf", "lerf")
#: Neighbour weights of the reference implementation: 1/6 direct, 1/12 diagonal (centre unused).
NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def _neighbour_sum(values: torch.Tensor) -> torch.Tensor:
    """``sum_j w_ij values_j`` over each pixel's neighbours inside the image, (N, 1, H, W): eight shifted
    adds of the zero-padded values (a 3 x 3 convolution, without float64 convolution kernels)."""
    height, width = values.shape[-2:]
    padded = F.pad(values, (1, 1, 1, 1))
    total = torch.zeros_like(values)
    for dy in range(3):
        for dx in range(3):
            if NEIGHBOUR_WEIGHTS[dy][dx]:
                total += NEIGHBOUR_WEIGHTS[dy][dx] * padded[..., dy : dy + height, dx : dx + width]
    return total


def _conjugate_gradients(apply: Any, rhs: torch.Tensor, rtol: float, max_iterations: int) -> torch.Tensor:
    """Solve ``apply(v) = rhs`` for each of the N independent systems in ``rhs`` (N, 1, H, W) by conjugate
    gradients, until every residual is at most ``rtol`` times its right-hand side (2-norms).

    A system stops where it reaches its goal while the others go on: iterating a converged system would drive
    its residual into float underflow, where ``rr / curvature`` is no longer a step but noise (inf, then NaN).
    """
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    rr = residual.square().sum((1, 2, 3), keepdim=True)
    goal = (rtol**2) * rr
    for _ in range(max_iterations):
        active = rr > goal
        if not bool(active.any()):
            break
        applied = apply(direction)
        curvature = (direction * applied).sum((1, 2, 3), keepdim=True)
        moving = active & (curvature > 0)
        step = torch.where(moving, rr / torch.where(moving, curvature, 1), 0)
        solution = solution + step * direction
        residual = residual - step * applied
        new_rr = residual.square().sum((1, 2, 3), keepdim=True)
        beta = torch.where(moving, new_rr / torch.where(moving, rr, 1), 0)
        direction = torch.where(moving, residual + beta * direction, direction)
        rr = new_rr
    return solution


def noisy_linear_imputation(
    x: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    *,
    generator: torch.Generator | None = None,
    rtol: float = 1e-4,
    max_iterations: int | None = None,
) -> torch.Tensor:
    """ROAD's imputation: ``x`` (B, C, H, W) with the pixels where ``removed`` (B, H, W) or (H, W) is True
    replaced by the weighted mean of their neighbours (solved jointly, see the module docstring) plus
    ``noise * N(0, 1)`` per channel. Returns a new tensor of x's dtype; images with every pixel removed
    are refused (the system is then singular).

    ``rtol``: the conjugate-gradient stopping residual, relative to the right-hand side (at most
    ``max_iterations`` steps, default ``8 (H + W)``: the iterations grow with the holes' diameter); the
    solution's relative error is at most ``rtol`` times the system's condition number, far below the noise.
    The solve runs in float64 for float64 images, else in float32. ``generator``: for the noise
    (drawn on the CPU, so that a seed gives the same images on every device).
    """
    x = _check_images(x)
    batch, channels, height, width = x.shape
    if removed.dim() == 2:
        removed = removed.expand(batch, -1, -1)
    if tuple(removed.shape) != (batch, height, width):
        raise ValueError(
            f"removed must be an (H, W) or (B, H, W) mask, {(batch, height, width)}; got {tuple(removed.shape)}"
        )
    if noise < 0:
        raise ValueError(f"noise must be >= 0; got {noise}")
    removed = removed.to(device=x.device, dtype=torch.bool)
    if bool(removed.flatten(1).all(1).any()):
        raise ValueError("removed covers a whole image: at least one pixel must be kept to impute from")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    hole = removed[:, None].expand(-1, channels, -1, -1).reshape(-1, 1, height, width).to(work)
    values = x.detach().to(work).reshape(-1, 1, height, width)
    known = values * (1 - hole)
    degree = _neighbour_sum(torch.ones_like(hole))  # sum of the weights of the neighbours inside the image

    def apply(v: torch.Tensor) -> torch.Tensor:  # (D - W) restricted to the removed pixels
        return hole * (degree * v - _neighbour_sum(v * hole))

    rhs = hole * _neighbour_sum(known)
    iterations = max_iterations if max_iterations is not None else 8 * (height + width)
    imputed = _conjugate_gradients(apply, rhs, rtol, iterations)
    if noise > 0:
        draws = torch.randn(values.shape, generator=generator, dtype=torch.float64).to(x.device, work)
        imputed = imputed + noise * draws
    out = torch.where(hole > 0, imputed, values)
    return out.reshape(batch, channels, height, width).to(x.dtype)


def road_masks(saliency: torch.Tensor, percentages: Sequence[float], order: str, seed: int = 0) -> torch.Tensor:
    """The removed pixels, (B, P, H, W) bool: MoRF the ``floor(p / 100 * H W)`` most salient pixels of each
    (B, H, W) map, LeRF the least salient; ties broken as :func:`.faithfulness.pixel_ranks` does."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    bad = [p for p in percentages if not 0 <= p < 100]
    if bad or not percentages:
        raise ValueError(f"percentages must be a non-empty list of values in [0, 100); got {list(percentages)}")
    size = saliency.shape[-2] * saliency.shape[-1]
    ranks = pixel_ranks(saliency, seed)  # 0 = most salient
    if order == "lerf":
        ranks = size - 1 - ranks
    counts = torch.tensor([int(size * p / 100) for p in percentages], device=saliency.device)
    return ranks[:, None] < counts[None, :, None, None]


def road_curves(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: MetricTarget,
    *,
    order: str = "morf",
    percentages: Sequence[float] = PERCENTAGES,
    noise: float = 0.01,
    score: str = "probability",
    output: OutputSelector = None,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """The target's score on each image after ROAD removal of ``percentages`` of its pixels, (B, P).

    ``order``: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first). The imputation noise
    is drawn from a generator seeded with ``seed``.
    """
    x = _check_images(x)
    saliency = _check_saliency(saliency, x)
    target = _check_target(target, x.shape[0], x.device)
    masks = road_masks(saliency, percentages, order, seed)
    generator = torch.Generator().manual_seed(seed)
    curves = torch.empty(x.shape[0], len(percentages), device=x.device)
    for b in range(x.shape[0]):
        copies = x[b : b + 1].expand(len(percentages), -1, -1, -1)
        images = noisy_linear_imputation(copies, masks[b], noise, generator=generator)
        curves[b] = target_scores(model, images, target, score=score, output=output, batch_size=batch_size, image=b)
    return curves


class ROAD(Mergeable):
    """ROAD MoRF and LeRF curves (Rong et al. 2022), TorchCAM-style ``update`` / ``summary`` / ``reset``.

    ``update`` returns one record per image: its ``morf`` and ``lerf`` curves (scores at ``percentages``)
    and their means ``road_morf`` (lower is more faithful), ``road_lerf`` (higher) and ``road_gap`` =
    ``road_lerf - road_morf`` (higher). ``summary``: the means over images and the mean curves.
    """

    def __init__(
        self,
        percentages: Sequence[float] = PERCENTAGES,
        noise: float = 0.01,
        score: str = "probability",
        output: OutputSelector = None,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        road_masks(torch.zeros(1, 1, 1), percentages, "morf")  # validates the percentages
        self.percentages = tuple(float(p) for p in percentages)
        self.noise = noise
        self.score = score
        self.output = output
        self.batch_size = batch_size
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def update(
        self, model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target: MetricTarget
    ) -> list[dict[str, Any]]:
        options = {"percentages": self.percentages, "noise": self.noise, "score": self.score}
        options.update(output=self.output, batch_size=self.batch_size, seed=self.seed)
        morf = road_curves(model, x, saliency, target, order="morf", **options).double().cpu()
        lerf = road_curves(model, x, saliency, target, order="lerf", **options).double().cpu()
        records = [
            {
                "morf": m.tolist(),
                "lerf": le.tolist(),
                "road_morf": float(m.mean()),
                "road_lerf": float(le.mean()),
                "road_gap": float(le.mean() - m.mean()),
            }
            for m, le in zip(morf, lerf)
        ]
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        count = len(self.records)
        out: dict[str, Any] = {"images": count, "percentages": list(self.percentages)}
        for key in ("road_morf", "road_lerf", "road_gap"):
            out[key] = sum(r[key] for r in self.records) / count if count else math.nan
        for key in ("morf", "lerf"):
            out[f"{key}_curve"] = [sum(col) / count for col in zip(*(r[key] for r in self.records))] if count else []
        return out
