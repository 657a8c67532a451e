"""Faithfulness metrics: does the model's score follow the map when the image is changed?

- Deletion and insertion curves and their AUC (RISE, Petsiuk et al., BMVC 2018).
- Average Drop and Increase in Confidence (Grad-CAM++, Chattopadhyay et al., WACV 2018, §5.1).
- Rank correlation with occlusion-sensitivity maps (Selvaraju et al. 2017, §5.3; occlusion as in
  Zeiler & Fergus, ECCV 2014).

All of it runs in torch on the input's device, with batched forward passes under ``no_grad`` in eval
mode (the model's flags are restored afterwards). Every metric takes the explainers' targets
(:func:`target_scores`): class indices, scored as softmax probabilities by default (``score="logit"``
reads the raw class score), or a callable ``output -> (B,)`` such as a segmentation region, a detection or
an image-text similarity from :mod:`gradcam.targets`, whose value is the score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..targets import OutputSelector
from .scoring import MetricTarget, _check_target, target_scores
from .state import Mergeable
from .statistics import spearman

BASELINES = ("zero", "mean", "blur")


# ------------------------------------------------------------------------------------------ helpers


def _check_images(x: torch.Tensor, what: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a floating (B, C, H, W) image batch; got {shape}")
    return x


def _check_saliency(saliency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    expected = (x.shape[0], *x.shape[-2:])
    if tuple(saliency.shape) != expected:
        raise ValueError(
            f"saliency must be one (H, W) map per image, {expected}; got {tuple(saliency.shape)} "
            "(reduce input-space maps with regions.saliency_2d)"
        )
    return saliency.detach().float().to(x.device)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, reflect padding (RISE's insertion start: 11, σ = 5)."""
    _check_images(x)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number; got {kernel_size}")
    half = kernel_size // 2
    taps = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - half
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > half else "replicate"
    out = F.pad(x, (half, half, 0, 0), mode=mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, half, half), mode=mode)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def baseline_images(x: torch.Tensor, baseline: str | float | torch.Tensor) -> torch.Tensor:
    """What removed pixels become: ``"zero"`` (0 in the model's input space: the dataset mean colour for
    normalised inputs), ``"mean"`` (each image's per-channel mean), ``"blur"`` (:func:`gaussian_blur`),
    a number, or a tensor broadcastable to x."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    if baseline == "blur":
        return gaussian_blur(x)
    raise ValueError(f"baseline must be one of {BASELINES}, a number or a tensor; got {baseline!r}")


def pixel_ranks(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rank of every pixel of each (B, H, W) map, 0 = most salient. Ties are broken at random (seeded,
    the same permutation for every map), so flat regions are removed in no particular spatial order."""
    batch, height, width = saliency.shape
    size = height * width
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(size, generator=generator).to(saliency.device)
    shuffled = saliency.reshape(batch, size)[:, permutation]
    order = permutation[torch.argsort(shuffled, dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(size, device=saliency.device).expand(batch, -1))
    return ranks.view(batch, height, width)


def auc(curves: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Area under (B, n) curves sampled at ``fractions`` of the pixels (0 .. 1): the trapezoid rule."""
    return torch.trapezoid(curves, fractions.to(curves), dim=-1)


# ------------------------------------------------------------------------------ deletion / insertion


def perturbation_curves(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: MetricTarget,
    *,
    mode: str = "deletion",
    step: int | None = None,
    baseline: str | float | torch.Tensor | None = None,
    score: str = "probability",
    output: OutputSelector = None,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE's deletion or insertion curves (Petsiuk et al. 2018, §4.1).

    Pixels are taken in decreasing saliency order, ``step`` at a time (default: one image row, RISE's
    224 pixels at 224 x 224). *Deletion* starts from the image and replaces taken pixels with the
    ``baseline`` (default ``"zero"``); *insertion* starts from the baseline (default ``"blur"``) and
    puts the image's pixels back. At each of the ``n + 1`` points (``n = ceil(H W / step)``) the
    model scores the explained class. Returns ``(curves (B, n + 1), fractions (n + 1,))`` where
    ``fractions`` is the share of pixels changed; :func:`auc` integrates a curve.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    x = _check_images(x)
    saliency = _check_saliency(saliency, x)
    batch, _, height, width = x.shape
    target = _check_target(target, batch, x.device)
    size = height * width
    step = width if step is None else int(step)
    if step < 1:
        raise ValueError(f"step must be a positive number of pixels; got {step}")
    steps = math.ceil(size / step)
    counts = (torch.arange(steps + 1, device=x.device) * step).clamp(max=size)
    if baseline is None:
        baseline = "zero" if mode == "deletion" else "blur"
    base = baseline_images(x, baseline)
    start, finish = (x, base) if mode == "deletion" else (base, x)
    ranks = pixel_ranks(saliency, seed)
    curves = torch.empty(batch, steps + 1, device=x.device)
    for b in range(batch):
        for first in range(0, steps + 1, batch_size):
            chunk = counts[first : first + batch_size]
            changed = (ranks[b][None] < chunk[:, None, None]).unsqueeze(1)  # (T, 1, H, W)
            images = torch.where(changed, finish[b : b + 1], start[b : b + 1])
            curves[b, first : first + chunk.numel()] = target_scores(
                model, images, target, score=score, output=output, batch_size=batch_size, image=b
            )
    return curves, counts.float() / size


class DeletionInsertion(Mergeable):
    """Deletion and insertion AUC (RISE, Petsiuk et al. 2018): lower deletion AUC and higher insertion
    AUC mean a more faithful map. ``update`` returns one record per image; ``summary`` the mean AUCs and
    the mean curves (``curves``), for plots."""

    def __init__(
        self,
        step: int | None = None,
        deletion_baseline: str | float = "zero",
        insertion_baseline: str | float = "blur",
        score: str = "probability",
        output: OutputSelector = None,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.step = step
        self.deletion_baseline = deletion_baseline
        self.insertion_baseline = insertion_baseline
        self.score = score
        self.output = output
        self.batch_size = batch_size
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []
        # per mode: the sum of the curves (float64) of the `curve_count` images sampled at `fractions`
        self.curve_sums: dict[str, torch.Tensor] = {}
        self.curve_count = 0
        self.fractions: torch.Tensor | None = None

    def _add_curves(self, sums: dict[str, torch.Tensor], count: int, fractions: torch.Tensor | None) -> None:
        """Add ``count`` curves summed to ``sums``, sampled at ``fractions``; the first size seen is kept
        (curves of images of another size are left out of the mean)."""
        if fractions is None or count == 0:
            return
        if self.fractions is None:
            self.fractions = fractions
        if self.fractions.numel() != fractions.numel():
            return
        for mode, total in sums.items():
            self.curve_sums[mode] = self.curve_sums.get(mode, 0.0) + total
        self.curve_count += count

    def merge_extra(self, other: DeletionInsertion) -> None:
        self._add_curves(other.curve_sums, other.curve_count, other.fractions)

    def update(
        self, model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target: MetricTarget
    ) -> list[dict[str, Any]]:
        areas, sums = {}, {}
        for mode, baseline in (("deletion", self.deletion_baseline), ("insertion", self.insertion_baseline)):
            curves, fractions = perturbation_curves(
                model,
                x,
                saliency,
                target,
                mode=mode,
                step=self.step,
                baseline=baseline,
                score=self.score,
                output=self.output,
                batch_size=self.batch_size,
                seed=self.seed,
            )
            areas[mode] = auc(curves, fractions).tolist()
            sums[mode] = curves.double().sum(dim=0).cpu()
        self._add_curves(sums, x.shape[0], fractions.cpu())
        records = [{"deletion_auc": d, "insertion_auc": i} for d, i in zip(areas["deletion"], areas["insertion"])]
        self.records.extend(records)
        return records

    def mean_curve(self, mode: str) -> torch.Tensor | None:
        """The mean ``mode`` curve over every image seen (images of another size are left out)."""
        if mode not in self.curve_sums:
            return None
        return (self.curve_sums[mode] / self.curve_count).float()

    def summary(self) -> dict[str, Any]:
        def mean(key: str) -> float:
            values = [r[key] for r in self.records]
            return sum(values) / len(values) if values else math.nan

        return {
            "images": len(self.records),
            "deletion_auc": mean("deletion_auc"),
            "insertion_auc": mean("insertion_auc"),
        }


# ------------------------------------------------------------------------------ confidence change


class ConfidenceChange(Mergeable):
    """Average Drop % and Increase in Confidence % (Chattopadhyay et al., Grad-CAM++, WACV 2018, §5.1).

    The explanation image keeps the image where the map is high: ``E = L ∘ I`` with the map ``L`` in
    [0, 1]. With ``Y`` the class's probability on the image and ``O`` on ``E`` over N images:

        ``Average Drop = 100/N * sum max(0, Y - O) / Y``,   ``Increase = 100/N * sum [Y < O]``.

    ``E`` is formed on pixels in [0, 1] when ``mean``/``std`` (the model's normalisation) are given,
    as the paper multiplies the image itself; otherwise on the model's input tensor.
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        score: str = "probability",
        output: OutputSelector = None,
        batch_size: int = 64,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the model's normalisation) or neither")
        self.mean = mean
        self.std = std
        self.score = score
        self.output = output
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def explanation_images(self, x: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        """``E = L ∘ I`` for each image (in pixel space when the normalisation is known)."""
        weights = saliency.clamp(0, 1).unsqueeze(1)
        if self.mean is None:
            return x * weights
        mean = torch.as_tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return ((x * std + mean) * weights - mean) / std

    def update(
        self, model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target: MetricTarget
    ) -> list[dict[str, Any]]:
        x = _check_images(x)
        saliency = _check_saliency(saliency, x)
        target = _check_target(target, x.shape[0], x.device)
        options = {"score": self.score, "output": self.output, "batch_size": self.batch_size}
        full = target_scores(model, x, target, **options)
        kept = target_scores(model, self.explanation_images(x, saliency), target, **options)
        drop = (full - kept).clamp(min=0) / full.clamp(min=1e-12)
        records = [
            {"score": float(y), "explanation_score": float(o), "drop": float(d), "increase": bool(o > y)}
            for y, o, d in zip(full.tolist(), kept.tolist(), drop.tolist())
        ]
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        count = len(self.records)
        if not count:
            return {"images": 0, "average_drop": math.nan, "increase_in_confidence": math.nan}
        return {
            "images": count,
            "average_drop": 100.0 * sum(r["drop"] for r in self.records) / count,
            "increase_in_confidence": 100.0 * sum(r["increase"] for r in self.records) / count,
        }


# ------------------------------------------------------------------------- occlusion correlation


def window_starts(extent: int, patch: int, stride: int) -> list[int]:
    """Top/left offsets of occlusion windows along one axis: ``0, s, 2s, ...`` up to the first window that
    reaches the far edge (``ceil((extent - patch) / stride) + 1`` windows; the last may be cut off)."""
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be positive; got patch={patch}, stride={stride}")
    count = max(0, math.ceil((extent - patch) / stride)) + 1
    return [i * stride for i in range(count)]


def occlusion_map(
    model: nn.Module,
    x: torch.Tensor,
    target: MetricTarget,
    *,
    patch: int = 32,
    stride: int = 16,
    fill: str | float | torch.Tensor = 0.0,
    score: str = "probability",
    output: OutputSelector = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014): slide a ``patch`` x ``patch`` window filled with
    ``fill`` (a number, ``"zero"``, ``"mean"``, ``"blur"`` or a tensor) over each image with ``stride``;
    each pixel gets the mean score drop ``s(x) - s(x with the window occluded)`` over the windows that
    cover it (the same averaging as Captum's ``Occlusion``). Returns (B, H, W)."""
    x = _check_images(x)
    batch, _, height, width = x.shape
    target = _check_target(target, batch, x.device)
    filled = baseline_images(x, fill)
    windows = [
        (top, left) for top in window_starts(height, patch, stride) for left in window_starts(width, patch, stride)
    ]
    masks = torch.zeros(len(windows), height, width, dtype=torch.bool, device=x.device)
    for i, (top, left) in enumerate(windows):
        masks[i, top : top + patch, left : left + patch] = True
    coverage = masks.sum(dim=0).clamp(min=1).float()
    full = target_scores(model, x, target, score=score, output=output, batch_size=batch_size)
    out = torch.empty(batch, height, width, device=x.device)
    for b in range(batch):
        drops = torch.empty(len(windows), device=x.device)
        for first in range(0, len(windows), batch_size):
            chunk = masks[first : first + batch_size].unsqueeze(1)
            images = torch.where(chunk, filled[b : b + 1], x[b : b + 1])
            drops[first : first + chunk.shape[0]] = full[b] - target_scores(
                model, images, target, score=score, output=output, batch_size=batch_size, image=b
            )
        out[b] = torch.einsum("w,whv->hv", drops, masks.float()) / coverage
    return out


class OcclusionCorrelation(Mergeable):
    """Rank correlation between maps and occlusion maps (Selvaraju et al. 2017, §5.3 "Faithfulness vs.
    Interpretability"): Spearman's rho over the pixels of each image, averaged over images (images where
    either map is constant are skipped and counted in ``undefined``)."""

    def __init__(
        self,
        patch: int = 32,
        stride: int = 16,
        fill: str | float = 0.0,
        score: str = "probability",
        output: OutputSelector = None,
        batch_size: int = 64,
    ) -> None:
        self.patch = patch
        self.stride = stride
        self.fill = fill
        self.score = score
        self.output = output
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def occlusion(self, model: nn.Module, x: torch.Tensor, target: MetricTarget) -> torch.Tensor:
        """The occlusion maps for a batch (compute once and pass to :meth:`update` for several methods)."""
        return occlusion_map(
            model,
            x,
            target,
            patch=self.patch,
            stride=self.stride,
            fill=self.fill,
            score=self.score,
            output=self.output,
            batch_size=self.batch_size,
        )

    def update(
        self,
        model: nn.Module,
        x: torch.Tensor,
        saliency: torch.Tensor,
        target: MetricTarget,
        occlusion: torch.Tensor | None = None,
    ) -> list[dict[str, Any]]:
        x = _check_images(x)
        saliency = _check_saliency(saliency, x)
        if occlusion is None:
            occlusion = self.occlusion(model, x, target)
        records = [{"rank_correlation": spearman(saliency[b], occlusion[b])} for b in range(x.shape[0])]
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        values = [r["rank_correlation"] for r in self.records if not math.isnan(r["rank_correlation"])]
        return {
            "images": len(self.records),
            "undefined": len(self.records) - len(values),
            "rank_correlation": sum(values) / len(values) if values else math.nan,
        }
