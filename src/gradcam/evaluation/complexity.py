"""Complexity of explanations: how concentrated a map is (Quantus' complexity family).

- **sparseness**: the Gini index of the map's absolute values (Chalasani et al., 2020; Quantus ``Sparseness``),
  ``G = sum_i (2 i - n - 1) x_(i) / (n sum_i x_i)`` over the n values sorted ascending (i = 1 .. n): 0 for a
  uniform map, ``(n - 1) / n`` for a map with one non-zero value. Higher is sparser.
- **entropy**: the Shannon entropy, in nats, of ``p = |x| / sum |x|`` (Bhatt et al., 2020; Quantus
  ``Complexity``): ``log n`` for a uniform map, 0 for one non-zero value. Lower is simpler.

Both read every position of a map (any rank: images, signals, videos) and are computed in float64. Quantus adds
``1e-7`` to every value before the Gini index; here the index is exact, so an all-but-one-zero map scores
``(n - 1) / n`` exactly. Maps that are zero everywhere have neither (counted in ``empty``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .state import Mergeable

__all__ = ["Complexity", "gini", "map_entropy"]


def gini(values: torch.Tensor) -> torch.Tensor:
    """Gini index of each row's absolute values, (N, n) -> (N,), float64; NaN for an all-zero row."""
    x = values.detach().abs().double().sort(dim=-1).values
    n = x.shape[-1]
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=x.device) - n - 1
    total = x.sum(-1)
    return torch.where(total > 0, (x * weights).sum(-1) / (n * torch.where(total > 0, total, 1)), math.nan)


def map_entropy(values: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's ``|x| / sum |x|``, (N, n) -> (N,), float64; NaN for an all-zero row
    (``0 log 0 = 0``)."""
    x = values.detach().abs().double()
    total = x.sum(-1, keepdim=True)
    p = x / torch.where(total > 0, total, 1)
    terms = torch.where(p > 0, -p * torch.log(torch.where(p > 0, p, 1)), 0)
    return torch.where(total[..., 0] > 0, terms.sum(-1), math.nan)


class Complexity(Mergeable):
    """Sparseness (Gini) and entropy of every map, TorchCAM-style ``update`` / ``summary`` / ``reset``.

    ``update(maps, positions)``: maps ``(B, *S)`` or ``(B, k, *S)`` whose last ``positions`` axes are the map
    (default 2: images; 1 for signals, 3 for videos); one record per map.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.empty = 0

    def merge_extra(self, other: Complexity) -> None:
        self.empty += other.empty

    def update(self, maps: torch.Tensor, positions: int = 2) -> list[dict[str, Any]]:
        if not isinstance(maps, torch.Tensor) or maps.dim() < positions + 1:
            shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ValueError(f"maps must be (B, *S) or (B, k, *S) with {positions} position axes; got {shape}")
        rows = maps.reshape(-1, math.prod(maps.shape[-positions:]))
        sparseness, entropy = gini(rows).tolist(), map_entropy(rows).tolist()
        records = []
        for index, (g, h) in enumerate(zip(sparseness, entropy)):
            if math.isnan(g):
                self.empty += 1
                continue
            records.append({"map": len(self.records) + len(records), "index": index, "sparseness": g, "entropy": h})
        self.records.extend(records)
        return records

    def summary(self) -> dict[str, Any]:
        """Means over the maps that are not all zero, with their count and the count of empty ones."""
        n = len(self.records)
        mean = (lambda key: sum(r[key] for r in self.records) / n) if n else (lambda key: math.nan)
        return {"sparseness": mean("sparseness"), "entropy": mean("entropy"), "maps": n, "empty": self.empty}
