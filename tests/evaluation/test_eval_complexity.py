"""Complexity metrics (Gini sparseness, entropy): hand-worked values, limits, any rank, merging shards."""

from __future__ import annotations

import math

import pytest
import torch

from gradcam.evaluation.complexity import Complexity, gini, map_entropy
from tolerances import sum_atol


def test_hand_worked_map() -> None:
    """x = [0, 0, 1, 3]: sorted weights 2i - n - 1 = (-3, -1, 1, 3): G = (1 + 9) / (4 * 4) = 0.625;
    p = (0, 0, 1/4, 3/4): H = -(1/4 log 1/4 + 3/4 log 3/4) = 0.5623351446..."""
    row = torch.tensor([[3.0, 0.0, 0.0, 1.0]])
    assert float(gini(row)[0]) == 0.625  # exact: small integers in float64
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(map_entropy(row)[0]) == pytest.approx(expected, rel=0, abs=sum_atol(4, 2.0, torch.float64))


@pytest.mark.parametrize("n", [1, 4, 49, 224 * 224])
def test_limits_uniform_and_one_pixel(n: int) -> None:
    uniform, single = torch.full((1, n), 0.7), torch.zeros(1, n)
    single[0, n // 2] = 2.0
    assert float(gini(uniform)[0]) == pytest.approx(0.0, abs=sum_atol(n, 2.0 * n, torch.float64))
    assert float(gini(single)[0]) == pytest.approx((n - 1) / n, rel=0, abs=sum_atol(n, 2.0, torch.float64))
    assert float(map_entropy(uniform)[0]) == pytest.approx(
        math.log(n), rel=0, abs=sum_atol(n, math.log(n) + 1, torch.float64)
    )
    assert float(map_entropy(single)[0]) == 0.0


def test_signs_are_ignored_and_scale_does_not_matter() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 50, dtype=torch.float64)
    for f in (gini, map_entropy):
        torch.testing.assert_close(f(x), f(x.abs()), rtol=0, atol=0)
        torch.testing.assert_close(f(5 * x), f(x), rtol=0, atol=sum_atol(50, 50.0, torch.float64, depth=2))


def test_metric_records_every_map_of_any_rank_and_merges_shards() -> None:
    torch.manual_seed(1)
    videos = torch.rand(4, 2, 3, 5, 5)  # (B, k, t, u, v)
    videos[1, 0] = 0  # an empty map
    whole = Complexity()
    records = whole.update(videos, positions=3)
    assert len(records) == 7 and whole.empty == 1
    flat = videos.reshape(8, -1)
    expected = gini(flat)
    assert [r["index"] for r in records] == [0, 1, 3, 4, 5, 6, 7]
    assert [r["sparseness"] for r in records] == [float(expected[i]) for i in (0, 1, 3, 4, 5, 6, 7)]
    first, second = Complexity(), Complexity()
    first.update(videos[:2], positions=3)
    second.update(videos[2:], positions=3)
    merged = first.merge(second).summary()
    summary = whole.summary()
    assert merged["maps"] == summary["maps"] == 7 and merged["empty"] == summary["empty"] == 1
    assert merged["sparseness"] == summary["sparseness"]  # the same records in the same order: the same sums
    with pytest.raises(
        ValueError, match=r"maps must be \(B, \*S\) or \(B, k, \*S\) with 3 position axes; got \(4, 5\)"
    ):
        Complexity().update(torch.rand(4, 5), positions=3)


def test_agrees_with_scipy_entropy() -> None:
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(2)
    x = torch.rand(5, 64, dtype=torch.float64)
    theirs = torch.tensor([stats.entropy(row.numpy()) for row in x], dtype=torch.float64)
    torch.testing.assert_close(
        map_entropy(x), theirs, rtol=0, atol=sum_atol(64, math.log(64) + 1, torch.float64, depth=2)
    )
