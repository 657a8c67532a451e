"""Rank statistics shared by the evaluation and the captioning / VQA claims (one definition each)."""

from __future__ import annotations

import math

import torch

__all__ = ["average_ranks", "spearman"]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing the mean of their ranks (as scipy's rankdata)."""
    ordered, order = torch.sort(values.flatten(), stable=True)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally sized tensors: Pearson's r of their average ranks.
    NaN when either is constant."""
    if a.numel() != b.numel():
        raise ValueError(f"spearman needs tensors of equal size; got {a.numel()} and {b.numel()}")
    ra, rb = average_ranks(a.detach()), average_ranks(b.detach())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = torch.sqrt((ra * ra).sum() * (rb * rb).sum())
    if float(denominator) == 0.0:
        return math.nan
    return float((ra * rb).sum() / denominator)
