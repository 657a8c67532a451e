"""How alike two saliency maps are: SSIM and Spearman's rank correlation (the measures of the sanity checks).

- **SSIM** (Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from error visibility to structural
  similarity", IEEE TIP 2004): for local means ``mu``, variances ``s^2`` and covariance ``s_ab`` under a window,
  ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))`` with
  ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and ``L`` the data range, averaged over the window positions that lie
  wholly inside the map. The default window is the paper's: a Gaussian of sigma 1.5, truncated at 3.5 sigma
  (11 x 11), population statistics; ``window="uniform"`` with ``sample_covariance=True`` is scikit-image's default
  (7 x 7 box, variances scaled by ``n / (n - 1)``). The result equals ``skimage.metrics.structural_similarity``
  with the same options. Maps are min-max normalised to [0, 1] first (``L = 1``; a flat map becomes zero).
  A flat map against one that is not has no SSIM here (NaN): against a zero map, every window over the other's
  zero background scores 1, so an explanation that vanished would look alike the original. Two flat maps: 1.
- **Spearman**: :func:`gradcam.evaluation.statistics.spearman` of the raw maps, and of their absolute values
  (Adebayo et al. 2018 report both for signed maps; for non-negative maps they agree). NaN for a constant map.
"""

from __future__ import annotations

import math

import torch

from ..methods.base import normalize
from .statistics import spearman

__all__ = ["SIMILARITIES", "map_similarities", "ssim"]

SIMILARITIES = ("ssim", "spearman", "spearman_abs")
TRUNCATE = 3.5  # Gaussian window radius in sigmas (scipy.ndimage / scikit-image)


def _window(window: str, sigma: float, win_size: int | None) -> torch.Tensor:
    """The 1-D window (its outer product is the 2-D one), float64, summing to 1."""
    if window == "gaussian":
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0; got {sigma}")
        radius = int(TRUNCATE * sigma + 0.5)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
        return weights / weights.sum()
    if window == "uniform":
        size = 7 if win_size is None else win_size
        if size < 1 or size % 2 == 0:
            raise ValueError(f"win_size must be an odd number >= 1; got {size}")
        return torch.full((size,), 1.0 / size, dtype=torch.float64)
    raise ValueError(f"window must be 'gaussian' or 'uniform'; got {window!r}")


def _band(w: torch.Tensor, n: int) -> torch.Tensor:
    """(n - s + 1, n) matrix whose row i holds the window ``w`` (length s) at columns i .. i + s - 1."""
    size = w.numel()
    rows = torch.arange(n - size + 1, device=w.device)
    band = torch.zeros(n - size + 1, n, dtype=w.dtype, device=w.device)
    band[rows[:, None], rows[:, None] + torch.arange(size, device=w.device)] = w
    return band


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    window: str = "gaussian",
    sigma: float = 1.5,
    win_size: int | None = None,
    data_range: float = 1.0,
    sample_covariance: bool = False,
) -> torch.Tensor:
    """Mean SSIM of each pair of maps ``a``, ``b`` (..., H, W) as given (not normalised), float64, shape (...).

    Window statistics are taken only where the window fits (a valid correlation), which is the region
    scikit-image averages over; ``H`` and ``W`` must be at least the window size.
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"a and b must be maps of the same shape (..., H, W); got {tuple(a.shape)}, {tuple(b.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0; got {data_range}")
    w = _window(window, sigma, win_size).to(a.device)
    size = w.numel()
    height, width = a.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"maps of {height} x {width} are smaller than the {size} x {size} SSIM window")
    lead = a.shape[:-2]
    x = a.detach().double().reshape(-1, 1, height, width)
    y = b.detach().double().reshape(-1, 1, height, width)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    filtered = _band(w, height) @ stack @ _band(w, width).T  # the separable valid correlation, as two matmuls
    mx, my, mxx, myy, mxy = filtered.unbind(1)
    scale = size * size / (size * size - 1) if sample_covariance else 1.0
    vx, vy, vxy = scale * (mxx - mx * mx), scale * (myy - my * my), scale * (mxy - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.mean(dim=(-2, -1)).reshape(lead)


def map_similarities(original: torch.Tensor, other: torch.Tensor) -> dict[str, list[float]]:
    """Every similarity of each pair of maps (N, H, W): ``ssim`` of the maps min-max normalised to [0, 1] (NaN when
    exactly one of the two is flat),
    ``spearman`` of the raw maps and ``spearman_abs`` of their absolute values; one float per pair."""
    if original.shape != other.shape or original.dim() != 3:
        raise ValueError(f"maps must be (N, H, W) of one shape; got {tuple(original.shape)}, {tuple(other.shape)}")
    a, b = original.detach().double(), other.detach().double()
    unit_a, unit_b = normalize(a.clone()), normalize(b.clone())
    structural = ssim(unit_a, unit_b)
    flat_a, flat_b = unit_a.flatten(1).amax(1) == 0, unit_b.flatten(1).amax(1) == 0
    structural = torch.where(flat_a != flat_b, math.nan, structural).tolist()
    rank = [spearman(p, q) for p, q in zip(a, b)]
    absolute = [spearman(p.abs(), q.abs()) for p, q in zip(a, b)]
    return {"ssim": structural, "spearman": rank, "spearman_abs": absolute}


def nanmean(values: list[float]) -> float:
    """Mean of the values that are not NaN (NaN when none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
