"""Deletion/insertion, Average Drop, occlusion and Spearman: exact curves on a linear 'model'."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradcam.evaluation.faithfulness import (
    ConfidenceChange,
    DeletionInsertion,
    OcclusionCorrelation,
    auc,
    baseline_images,
    gaussian_blur,
    occlusion_map,
    perturbation_curves,
    pixel_ranks,
    target_scores,
    window_starts,
)
from gradcam.evaluation.statistics import average_ranks, spearman
from tolerances import assert_close, gamma, ratio_rtol, sum_atol, unit_roundoff


class PixelSum(nn.Module):
    """logits = [sum(w * x), 0]: the class-0 score is the weighted sum of the pixels left."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weights).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
SALIENCY = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]])  # order: (0,0)=1, (1,0)=3, (1,1)=4, (0,1)=2


def test_deletion_and_insertion_curves_by_hand():
    model = PixelSum(torch.ones(1, 1, 2, 2))
    curves, fractions = perturbation_curves(model, X, SALIENCY, [0], step=1, score="logit")
    assert curves.tolist() == [[10.0, 9.0, 6.0, 2.0, 0.0]] and fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert auc(curves, fractions).item() == pytest.approx(0.25 * (9.5 + 7.5 + 4 + 1))
    inserted, _ = perturbation_curves(model, X, SALIENCY, [0], mode="insertion", step=1, baseline=0.0, score="logit")
    assert inserted.tolist() == [[0.0, 1.0, 4.0, 8.0, 10.0]]
    assert auc(inserted, fractions).item() == pytest.approx(4.5)
    # a step that does not divide H*W: points at 0, 3 and 4 pixels, the trapezoid follows the real spacing
    uneven, fractions = perturbation_curves(model, X, SALIENCY, [0], step=3, score="logit")
    assert uneven.tolist() == [[10.0, 2.0, 0.0]] and fractions.tolist() == [0.0, 0.75, 1.0]
    assert auc(uneven, fractions).item() == pytest.approx(0.75 * 6 + 0.25 * 1)
    # a mean baseline: removed pixels become the image mean 2.5
    mean_curve, _ = perturbation_curves(model, X, SALIENCY, [0], step=2, baseline="mean", score="logit")
    assert mean_curve.tolist() == [[10.0, 6.0 + 2 * 2.5, 10.0]]


def test_probability_score_and_batched_chunks_agree():
    model = PixelSum(torch.tensor([[[[0.5, -1.0], [0.25, 1.0]]]]))
    x = torch.cat([X, X.flip(-1)])
    saliency = torch.cat([SALIENCY, SALIENCY.flip(-1)])
    whole, _ = perturbation_curves(model, x, saliency, [0, 1], step=1)
    chunked, _ = perturbation_curves(model, x, saliency, [0, 1], step=1, batch_size=2)
    # the logits are exact (dyadic weights on integer pixels), so chunks of 2 give the same floats
    assert torch.equal(whole, chunked)
    first = 0.5 * 1 - 1.0 * 2 + 0.25 * 3 + 1.0 * 4  # image 0, class 0: softmax([s, 0])[0] = sigmoid(s)
    second = 0.5 * 2 - 1.0 * 1 + 0.25 * 4 + 1.0 * 3  # image 1 (flipped), class 1: 1 - sigmoid(s)
    # a float32 softmax of 2 exact logits: two exps (2 ulps each), their sum and a quotient
    softmax_rtol = ratio_rtol(4 * unit_roundoff(), 4 * unit_roundoff() + gamma(2), unit_roundoff())
    assert whole[0, 0].item() == pytest.approx(1 / (1 + math.exp(-first)), rel=softmax_rtol)
    assert whole[1, 0].item() == pytest.approx(1 - 1 / (1 + math.exp(-second)), rel=softmax_rtol)


def test_ties_are_broken_at_random_but_never_across_values():
    saliency = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.5]]])
    for seed in range(5):
        ranks = pixel_ranks(saliency, seed)[0]
        assert sorted(ranks[0, :2].tolist()) == [0, 1] and ranks[1, 2] == 2
        assert sorted([ranks[0, 2].item(), *ranks[1, :2].tolist()]) == [3, 4, 5]
    orders = {tuple(pixel_ranks(torch.zeros(1, 4, 4), seed).flatten().tolist()) for seed in range(4)}
    assert len(orders) > 1  # a flat map is removed in a random order, not raster order
    model = PixelSum(torch.ones(1, 1, 2, 3))
    x = torch.arange(1.0, 7.0).view(1, 1, 2, 3)
    curves, _ = perturbation_curves(model, x, saliency, [0], step=2, score="logit")
    assert curves[0, 1].item() == 21.0 - 1.0 - 2.0  # both tied pixels removed together: order irrelevant


def test_deletion_insertion_metric_keeps_mean_curves():
    model = PixelSum(torch.ones(1, 1, 2, 2))
    metric = DeletionInsertion(step=1, insertion_baseline=0.0, score="logit")
    records = metric.update(model, torch.cat([X, X]), torch.cat([SALIENCY, SALIENCY.flip(-1)]), [0, 0])
    assert records[0] == {"deletion_auc": pytest.approx(5.5), "insertion_auc": pytest.approx(4.5)}
    # flipped saliency: order (0,1)=2, (1,1)=4, (1,0)=3, (0,0)=1 -> 10, 8, 4, 1, 0
    assert records[1]["deletion_auc"] == pytest.approx(0.25 * (9 + 6 + 2.5 + 0.5))
    assert metric.mean_curve("deletion").tolist() == [10.0, 8.5, 5.0, 1.5, 0.0]
    assert metric.summary()["deletion_auc"] == pytest.approx((5.5 + 4.5) / 2)


def test_average_drop_and_increase_by_hand():
    model = PixelSum(torch.ones(1, 1, 2, 2))
    x = torch.ones(2, 1, 2, 2)
    saliency = torch.tensor([[[1.0, 0.0], [0.0, 0.5]], [[1.0, 1.0], [1.0, 1.0]]])
    metric = ConfidenceChange()
    records = metric.update(model, x, saliency, [0, 1])
    y0, o0 = torch.sigmoid(torch.tensor(4.0)).item(), torch.sigmoid(torch.tensor(1.5)).item()
    assert records[0]["drop"] == pytest.approx((y0 - o0) / y0) and not records[0]["increase"]
    assert records[1]["drop"] == 0.0  # the full map keeps the image: no drop, no increase
    assert metric.summary()["average_drop"] == pytest.approx(100 * (y0 - o0) / y0 / 2)
    # in pixel space (x = (p - 0.5) / 0.5): p = 1 everywhere, E = p * L -> x' = 2 L - 1
    pixel = ConfidenceChange(mean=(0.5,), std=(0.5,))
    record = pixel.update(model, x[:1], saliency[:1], [1])[0]
    y1 = 1 - torch.sigmoid(torch.tensor(4.0)).item()
    o1 = 1 - torch.sigmoid(torch.tensor((2 * 1 - 1) + (2 * 0 - 1) * 2 + (2 * 0.5 - 1))).item()

    # 1 - sigmoid(s) in float32 cancels: sigmoid's rounding (u of a value near 1) relative to the small difference,
    # twice (here and in the library if it subtracts too), plus a softmax's own few roundings
    def cancellation(p: float) -> float:
        return 2 * unit_roundoff() * (1 - p) / p + 8 * unit_roundoff()

    assert record["score"] == pytest.approx(y1, rel=cancellation(y1))
    assert record["explanation_score"] == pytest.approx(o1, rel=cancellation(o1))
    assert record["increase"] and record["drop"] == 0.0
    with pytest.raises(ValueError, match="both mean and std"):
        ConfidenceChange(mean=(0.5,))


def test_occlusion_map_by_hand_and_window_positions():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 9]  # the last window is cut off at the edge
    assert window_starts(3, 4, 2) == [0]
    model = PixelSum(torch.ones(1, 1, 2, 3))
    x = torch.arange(1.0, 7.0).view(1, 1, 2, 3)  # [[1, 2, 3], [4, 5, 6]]
    occluded = occlusion_map(model, x, [0], patch=2, stride=1, score="logit")
    # windows (columns 0-1 and 1-2, both rows): drops 1+2+4+5 = 12 and 2+3+5+6 = 16
    assert occluded[0].tolist() == [[12.0, 14.0, 16.0], [12.0, 14.0, 16.0]]


def test_occlusion_map_matches_captum():
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )
    model.eval()
    x = torch.randn(2, 3, 14, 14)
    mine = occlusion_map(model, x, [2, 0], patch=4, stride=2, fill=0.0, score="logit")
    theirs = captum.Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0.0, target=torch.tensor([2, 0])
    )
    # y - y_occluded from different batches: the logits sum 3 * 3 * 3 conv terms, 7 x 7 pooled cells and 16
    # features (longest 49, depth 3), on O(1) values; both average the same overlapping windows
    with torch.no_grad():
        logit_atol = sum_atol(49, max(1.0, float(model(x).abs().max())), depth=3)
    torch.testing.assert_close(mine, theirs[:, 0], rtol=0, atol=2 * logit_atol)  # captum repeats the map per channel


def test_spearman_by_hand_with_ties_and_against_scipy():
    assert spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([2.0, 1, 4, 3, 5])) == pytest.approx(0.8)
    assert average_ranks(torch.tensor([1.0, 2, 2, 3])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(math.sqrt(0.9))
    assert spearman(torch.tensor([3.0, 2, 1]), torch.tensor([1.0, 2, 3])) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (200,), generator=generator).float()
    b = a + torch.randint(0, 4, (200,), generator=generator).float()
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy())[0], abs=1e-12)


def test_occlusion_correlation_metric():
    model = PixelSum(torch.ones(1, 1, 2, 3))
    x = torch.arange(1.0, 7.0).view(1, 1, 2, 3)
    metric = OcclusionCorrelation(patch=2, stride=1, score="logit")
    good = metric.update(model, x, torch.tensor([[[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]]), [0])[0]
    bad = metric.update(model, x, torch.tensor([[[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]]), [0])[0]
    assert good["rank_correlation"] == pytest.approx(1.0) and bad["rank_correlation"] == pytest.approx(-1.0)
    assert metric.summary()["rank_correlation"] == pytest.approx(0.0)


def test_blur_and_baselines():
    constant = torch.full((1, 3, 9, 12), 0.7)
    assert_close(gaussian_blur(constant), constant, terms=11, depth=2)  # two passes of 11 taps summing to 1
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1.0
    blurred = gaussian_blur(impulse, kernel_size=11, sigma=5.0)[0, 0]
    taps = torch.exp(-((torch.arange(11.0) - 5) ** 2) / 50)
    taps = taps / taps.sum()
    # one nonzero tap per pass: each value is a product of two normalised taps (11-term sums for the norms)
    assert_close(blurred[5:16, 5:16], torch.outer(taps, taps), terms=11, depth=2)
    assert blurred.sum().item() == pytest.approx(1.0, rel=ratio_rtol(2 * gamma(11), 2 * gamma(11)) + gamma(21 * 21))
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert baseline_images(x, "mean")[0, :, 0, 0].tolist() == [1.5, 5.5]
    assert baseline_images(x, 3.0).unique().tolist() == [3.0]
    with pytest.raises(ValueError, match="baseline must be one of"):
        baseline_images(x, "noise")


def test_bad_arguments_name_what_was_expected():
    model = PixelSum(torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="saliency must be one"):
        perturbation_curves(model, X, torch.zeros(1, 3, 3), [0])
    with pytest.raises(ValueError, match="mode must be"):
        perturbation_curves(model, X, SALIENCY, [0], mode="erase")
    with pytest.raises(ValueError, match="step must be"):
        perturbation_curves(model, X, SALIENCY, [0], step=0)
    with pytest.raises(ValueError, match="one class index per image"):
        perturbation_curves(model, X, SALIENCY, [0, 1])
    with pytest.raises(ValueError, match="score must be"):
        target_scores(model, X, 0, score="softmax")


def test_forward_passes_leave_the_model_as_found():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2)).train()
    before = [b.clone() for b in model.buffers()]
    perturbation_curves(model, X, SALIENCY, [0], step=1)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))  # eval mode: BN stats unchanged
    assert all(p.grad is None for p in model.parameters())
