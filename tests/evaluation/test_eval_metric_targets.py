"""Faithfulness metrics with the explainers' callable targets: a segmentation region scored by hand, and a
callable reading the same logit as a class index giving the very same curves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcam.errors import TargetError
from gradcam.evaluation.faithfulness import (
    ConfidenceChange,
    DeletionInsertion,
    occlusion_map,
    perturbation_curves,
    target_scores,
)
from gradcam.targets import ClassScore, SegmentationScore, TopK
from tolerances import gamma, ratio_rtol, relative, unit_roundoff

X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
SALIENCY = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]])  # order: (0,0), (1,0), (1,1), (0,1)


class PixelSegmenter(nn.Module):
    """A 1x1 'segmentation net': class-c logits are ``w_c * x`` at every pixel, (B, 2, H, W)."""

    def __init__(self, weights: tuple[float, float] = (2.0, -1.0)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weights).view(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}  # torchvision's segmentation output


class PixelSum(nn.Module):
    """logits = [sum(w * x), -sum(x)]."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weights).flatten(1).sum(dim=1)
        return torch.stack([score, -x.flatten(1).sum(1)], dim=1)


def test_deletion_on_a_segmentation_region_by_hand():
    model = PixelSegmenter()
    x = torch.cat([X, X.flip(-1)])  # image 1: [[2, 1], [4, 3]]
    saliency = torch.cat([SALIENCY, SALIENCY.flip(-1)])  # image 1 order: (0,1), (1,1), (1,0), (0,0)
    masks = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]])  # one region per image
    target = SegmentationScore(0, masks)
    for batch_size in (1, 2, 64):  # chunks of copies of one image: each chunk gets that image's mask
        curves, fractions = perturbation_curves(model, x, saliency, target, step=1, batch_size=batch_size)
        # y = 2 * sum of the masked pixels still there (exact small integers)
        assert curves.tolist() == [[16.0, 14.0, 8.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0]]
        assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    metric = DeletionInsertion(step=1, insertion_baseline=0.0)
    record = metric.update(model, x, saliency, target)[0]
    assert record["deletion_auc"] == pytest.approx(0.25 * (15 + 11 + 4 + 0))  # trapezoids of exact values
    # insertion from 0 puts (0,0)=1, (1,0)=3, (1,1)=4 back in that order: 0, 2, 8, 16, 16
    assert record["insertion_auc"] == pytest.approx(0.25 * (1 + 5 + 12 + 16))
    # Average Drop: E = L * I keeps x * clamp(saliency, 0, 1): image 0's region sum 0.9 + 1.5 + 1.2 = 3.6 of 8
    drop = ConfidenceChange().update(model, x[:1], saliency[:1], SegmentationScore(0, masks[:1]))[0]
    assert drop["score"] == 16.0 and drop["explanation_score"] == pytest.approx(2 * 3.6, rel=1e-6)
    assert drop["drop"] == pytest.approx((16 - 7.2) / 16, rel=1e-6)


def test_a_callable_reading_the_logit_equals_the_class_index_result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    saliency = torch.rand(2, 6, 6)
    classes = [2, 0]
    for batch_size in (5, 64):
        by_index, _ = perturbation_curves(model, x, saliency, classes, step=4, score="logit", batch_size=batch_size)
        by_callable, _ = perturbation_curves(model, x, saliency, ClassScore(classes), step=4, batch_size=batch_size)
        per_image = [lambda row: row[2], lambda row: row[0]]  # pytorch-grad-cam's per-image target list
        by_list, _ = perturbation_curves(model, x, saliency, per_image, step=4, batch_size=batch_size)
        # the same float64 logits, rounded to float32 once: bit for bit
        assert torch.equal(by_index, by_callable) and torch.equal(by_index, by_list)
    probability, _ = perturbation_curves(model, x, saliency, classes, step=4)
    softmax, _ = perturbation_curves(model, x, saliency, ClassScore(classes, kind="probability"), step=4)
    # ours rounds the logits to float32 first (each within u |s|, moving log p by at most 2 u max|s|), then a
    # float32 softmax of 3 terms (two-ulp exps, their sum, a quotient); the callable's softmax is float64
    with torch.no_grad():
        largest = float(model(x).abs().max())
    u = unit_roundoff()
    rtol = ratio_rtol(2 * u * largest, 4 * u, 4 * u + gamma(3), u)
    torch.testing.assert_close(probability, softmax, **relative(rtol))
    occluded = occlusion_map(model, x, classes, patch=2, stride=2, score="logit")
    assert torch.equal(occluded, occlusion_map(model, x, ClassScore(classes), patch=2, stride=2))


def test_target_scores_errors_name_the_target():
    model = PixelSum(torch.ones(1, 1, 2, 2))
    with pytest.raises(TargetError, match="fixed targets"):
        perturbation_curves(model, X, SALIENCY, TopK(1))
    with pytest.raises(TargetError, match="one score per image"):
        target_scores(model, X, lambda out: out)  # (1, 2): two scores for one image
    with pytest.raises(TargetError, match="per-image callables"):
        perturbation_curves(model, X, SALIENCY, [lambda r: r[0], lambda r: r[1]])
    with pytest.raises(TargetError, match="integers"):
        perturbation_curves(model, X, SALIENCY, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="callable target"):
        target_scores(PixelSegmenter(), X, 0, output="out")
