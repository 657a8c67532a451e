"""Maps to regions and points: saliency reduction, connected components, boxes, IoU, peaks.

Coordinates follow :mod:`gradcam.imaging.geometry`: continuous pixel coordinates, pixel ``i`` covers
``[i, i + 1)``, so a box ``(x0, y0, x1, y1)`` has ``x1``/``y1`` exclusive and area ``(x1 - x0) * (y1 - y0)``.
Everything here is torch on the maps' device and batched over any leading dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision

Box = tuple[float, float, float, float]


def saliency_2d(maps: torch.Tensor, channels: bool = False) -> torch.Tensor:
    """One non-negative (..., H, W) float map per explanation.

    Class-activation maps ``(..., H, W)`` (``channels=False``) are returned as float. Input-space maps
    (Guided Backprop, Guided Grad-CAM, input gradients: ``(..., C, H, W)`` with ``channels=True``)
    become ``max_c |g_c|`` (Simonyan et al. 2014, §3.1) divided by their maximum, so they lie in [0, 1].
    """
    maps = maps.detach().float()
    if channels:
        maps = maps.abs().amax(dim=-3)
        peak = maps.amax(dim=(-2, -1), keepdim=True)
        maps = torch.where(peak > 0, maps / torch.where(peak > 0, peak, 1), torch.zeros_like(maps))
    return maps


def _run_max(labels: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Give every pixel of each horizontal run of foreground pixels the run's maximum label."""
    before = F.pad(foreground[..., :-1], (1, 0), value=False)
    starts = foreground & ~before
    runs = torch.cumsum(starts.reshape(-1), 0).view(foreground.shape) - 1
    spare = runs.numel()  # background pixels point at a spare slot
    runs = torch.where(foreground, runs, spare)
    best = torch.full((spare + 1,), -1, dtype=labels.dtype, device=labels.device)
    best = best.scatter_reduce(0, runs.reshape(-1), labels.reshape(-1), "amax")
    return torch.where(foreground, best[runs], -1)


def _diagonal_max(labels: torch.Tensor) -> torch.Tensor:
    """Max over each pixel and its 4 diagonal neighbours of a (N, H, W) integer tensor (outside = -1)."""
    height, width = labels.shape[-2:]
    padded = F.pad(labels, (1, 1, 1, 1), value=-1)
    out = labels
    for dy, dx in ((0, 0), (0, 2), (2, 0), (2, 2)):
        out = torch.maximum(out, padded[:, dy : dy + height, dx : dx + width])
    return out


def connected_components(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Label the connected components of boolean (..., H, W) masks.

    Returns a long tensor of the same shape: -1 on background, and on each component the largest
    raster index ``y * W + x`` of its pixels (so labels are unique within a map). ``connectivity`` is 8
    (pixels touching by an edge or a corner belong together, as with OpenCV's contours in the CAM
    authors' code) or 4 (edges only).

    Algorithm (torch, batched, on the mask's device): every foreground pixel starts with its own index;
    each round gives every horizontal run, then every vertical run, the maximum label it holds (then,
    for 8-connectivity, the maximum over diagonal neighbours), and finally jumps ``label <- label[label]``.
    Labels only grow and never leave their component, so the fixed point is each component's largest
    index; blobs converge in a handful of rounds.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8; got {connectivity!r}")
    if mask.dim() < 2:
        raise ValueError(f"mask must have shape (..., H, W); got {tuple(mask.shape)}")
    mask = mask.bool()
    leading, (height, width) = mask.shape[:-2], mask.shape[-2:]
    rows = mask.reshape(-1, height, width)
    count = rows.shape[0]
    if count == 0 or height * width == 0:
        return torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    index = torch.arange(height * width, device=mask.device).view(1, height, width).expand(count, -1, -1)
    labels = torch.where(rows, index, -1)
    active = torch.arange(count, device=mask.device)  # maps still changing; converged ones drop out
    while active.numel():
        foreground, current = rows[active], labels[active]
        updated = _run_max(current, foreground)
        columns = foreground.transpose(-1, -2).contiguous()
        updated = _run_max(updated.transpose(-1, -2).contiguous(), columns).transpose(-1, -2).contiguous()
        if connectivity == 8:
            updated = torch.where(foreground, _diagonal_max(updated), -1)
        line = updated.reshape(active.numel(), -1)
        updated = torch.where(foreground, torch.gather(line, 1, line.clamp(min=0)).view_as(updated), -1)
        changed = (updated != current).flatten(1).any(dim=1)
        labels[active] = updated
        active = active[changed]
    return labels.reshape(*leading, height, width)


def largest_component(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """The largest connected component of each (..., H, W) mask, as a boolean mask.

    Ties between equally large components go to the one whose last pixel (raster order) comes first.
    An empty mask stays empty.
    """
    labels = connected_components(mask, connectivity)
    leading, (height, width) = labels.shape[:-2], labels.shape[-2:]
    flat = labels.reshape(-1, height * width)
    count = flat.shape[0]
    size = height * width
    offsets = torch.arange(count, device=flat.device).unsqueeze(1) * size
    valid = flat >= 0
    sizes = torch.bincount((flat + offsets)[valid], minlength=count * size).view(count, size)
    best = sizes.argmax(dim=1, keepdim=True)
    keep = (flat == best) & valid
    return keep.view(*leading, height, width)


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """Tight box ``(x0, y0, x1, y1)`` of each (..., H, W) mask, continuous coords (x1/y1 exclusive).

    An empty mask gives NaN coordinates.
    """
    height, width = mask.shape[-2:]
    rows, cols = mask.any(dim=-1), mask.any(dim=-2)
    y0 = rows.float().argmax(dim=-1)
    y1 = height - rows.flip(-1).float().argmax(dim=-1)
    x0 = cols.float().argmax(dim=-1)
    x1 = width - cols.flip(-1).float().argmax(dim=-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).float()
    empty = ~rows.any(dim=-1)
    return torch.where(empty.unsqueeze(-1), torch.full_like(boxes, float("nan")), boxes)


def threshold_mask(maps: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """``map >= threshold * max(map)`` for each (..., H, W) map (an all-zero map is all foreground)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a fraction of the map's maximum in [0, 1]; got {threshold}")
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps >= threshold * peak


def map_to_box(maps: torch.Tensor, threshold: float = 0.15, connectivity: int = 8) -> torch.Tensor:
    """The Grad-CAM / CAM localization box of each (..., H, W) map (Selvaraju et al. 2017, §4.1).

    Keep pixels at or above ``threshold`` (default 15 %) of the map's maximum, take the single largest
    connected segment, and return its tight box in the map's pixel frame, (..., 4).
    """
    return mask_to_box(largest_component(threshold_mask(maps, threshold), connectivity))


def map_to_boxes(maps: torch.Tensor, thresholds: Sequence[float], connectivity: int = 8) -> torch.Tensor:
    """:func:`map_to_box` at several thresholds, (T, ..., 4) (one pass per threshold: the number of
    propagation rounds is each threshold's own, which is faster than one stacked pass)."""
    return torch.stack([map_to_box(maps, t, connectivity) for t in thresholds])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union of (N, 4) and (M, 4) ``(x0, y0, x1, y1)`` boxes -> (N, M), by
    ``torchvision.ops.box_iou``; 0 where the union is empty.

    ``IoU = |a ∩ b| / |a ∪ b|`` with continuous areas (the ILSVRC devkit's ``+1`` on inclusive pixel
    indices is the same thing once boxes are converted to continuous coordinates, see :mod:`.datasets`).
    NaN boxes (no region found) have IoU 0 with everything.
    """
    return torch.nan_to_num(torchvision.ops.box_iou(a.float(), b.float()), nan=0.0)


def peak_point(maps: torch.Tensor) -> torch.Tensor:
    """The point a map points at: the centre of its maximum pixel, (..., 2) as (x, y) continuous coords.

    Pointing game (Zhang et al. 2016): the location of the map's maximum. When several pixels share the
    maximum (a flat map, a plateau) the point is the mean of their centres, so a constant map points at
    the image centre instead of at the top-left pixel.
    """
    height, width = maps.shape[-2:]
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    at_max = (maps == peak).float()
    ys = torch.arange(height, device=maps.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=maps.device, dtype=torch.float32) + 0.5
    total = at_max.sum(dim=(-2, -1))
    x = (at_max * xs).sum(dim=(-2, -1)) / total
    y = (at_max * ys[:, None]).sum(dim=(-2, -1)) / total
    return torch.stack([x, y], dim=-1)


def point_box_distance(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from (N, 2) points to (M, 4) boxes -> (N, M); 0 inside or on a box."""
    dx = torch.maximum(boxes[None, :, 0] - points[:, None, 0], points[:, None, 0] - boxes[None, :, 2]).clamp(min=0)
    dy = torch.maximum(boxes[None, :, 1] - points[:, None, 1], points[:, None, 1] - boxes[None, :, 3]).clamp(min=0)
    return torch.sqrt(dx * dx + dy * dy)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W) boolean masks of the pixels whose centres lie inside (N, 4) boxes."""
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])
    inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]
