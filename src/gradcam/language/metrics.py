"""Small localisation metrics for the measured claims (kept local: tensors in, numbers out).

- pointing: the map's maximum falls inside the object's box, grown by ``tolerance`` pixels (the
  pointing game of Zhang et al. 2016 uses 15 px at 224 px, about 4 px at 64 px);
- inside/outside ratio: mean map value inside the box / mean outside (the Grad-CAM paper's captioning
  measure, 3.27 on COCO; a uniform map gives exactly 1);
- occlusion map and Spearman rank correlation (the paper's VQA faithfulness measure, 0.60).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Box = Sequence[float]


def box_mask(
    box: Box, size: tuple[int, int], tolerance: float = 0.0, device: torch.device | None = None
) -> torch.Tensor:
    """(H, W) boolean mask of the pixels whose centres lie in ``box`` (x0, y0, x1, y1) grown by ``tolerance``."""
    height, width = size
    x0, y0, x1, y1 = (float(v) for v in box)
    ys = torch.arange(height, dtype=torch.float32, device=device) + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=device) + 0.5
    inside_y = (ys >= y0 - tolerance) & (ys <= y1 + tolerance)
    inside_x = (xs >= x0 - tolerance) & (xs <= x1 + tolerance)
    return inside_y[:, None] & inside_x[None, :]


def pointing_hit(heatmap: torch.Tensor, box: Box, tolerance: float = 0.0) -> bool | None:
    """Whether the (H, W) map's maximum lies in the box (grown by ``tolerance``); None for a flat map.

    Ties: a hit when any maximal pixel is inside (a strict argmax would depend on scan order).
    """
    if heatmap.dim() != 2:
        raise ValueError(f"heatmap must be (H, W); got shape {tuple(heatmap.shape)}")
    top = heatmap.max()
    if bool(top <= heatmap.min()):
        return None
    mask = box_mask(box, tuple(heatmap.shape), tolerance, heatmap.device)
    return bool(((heatmap == top) & mask).any())


def uniform_pointing(box: Box, size: tuple[int, int], tolerance: float = 0.0) -> float:
    """Chance that a uniformly random pixel hits the grown box: the pointing accuracy of a flat map."""
    return float(box_mask(box, size, tolerance).float().mean())


def inside_outside(heatmap: torch.Tensor, box: Box) -> tuple[float, float]:
    """(mean of the map inside the box, mean outside), box not grown."""
    mask = box_mask(box, tuple(heatmap.shape), 0.0, heatmap.device)
    return float(heatmap[mask].mean()), float(heatmap[~mask].mean())


def centre_map(size: tuple[int, int], sigma: float | None = None) -> torch.Tensor:
    """A Gaussian bump at the image centre (the centre-bias baseline), peak 1, sigma = size / 4."""
    height, width = size
    sigma = sigma or min(height, width) / 4
    ys = torch.arange(height, dtype=torch.float32) + 0.5 - height / 2
    xs = torch.arange(width, dtype=torch.float32) + 0.5 - width / 2
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma * sigma))


def occlusion_drops(
    score: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch: int,
    stride: int,
    fill: torch.Tensor | float,
    batch: int = 64,
) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014): ``drop[i, j] = s(x) - s(x with patch (i, j) filled)``.

    ``score`` maps (N, C, H, W) images to (N,) scores without gradients; ``image`` is (C, H, W); the
    result is the (rows, cols) grid of drops for patches of ``patch`` px every ``stride`` px.
    """
    height, width = image.shape[-2:]
    tops = list(range(0, height - patch + 1, stride))
    lefts = list(range(0, width - patch + 1, stride))
    fill_value = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
    with torch.no_grad():
        base = score(image[None])[0]
        drops = []
        positions = [(t, left) for t in tops for left in lefts]
        for start in range(0, len(positions), batch):
            chunk = positions[start : start + batch]
            occluded = image[None].repeat(len(chunk), 1, 1, 1)
            for n, (t, left) in enumerate(chunk):
                occluded[n, :, t : t + patch, left : left + patch] = fill_value
            drops.append(base - score(occluded))
    return torch.cat(drops).reshape(len(tops), len(lefts))


def window_means(heatmap: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Mean of an (H, W) map over every occlusion window: the map on the occlusion grid."""
    return F.avg_pool2d(heatmap[None, None].float(), patch, stride)[0, 0]
