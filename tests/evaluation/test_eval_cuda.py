"""The metrics run on the maps' device and give the CPU's numbers there (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcam.evaluation import (
    DeletionInsertion,
    PointingGame,
    connected_components,
    map_to_box,
    occlusion_map,
    spearman,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_regions_on_cuda_match_cpu():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 40, 50, generator=generator) < 0.55
    assert torch.equal(connected_components(masks.cuda()).cpu(), connected_components(masks))
    maps = torch.rand(3, 2, 40, 50, generator=generator)
    on_gpu = map_to_box(maps.cuda())
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), map_to_box(maps))


def test_faithfulness_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    model.eval()
    x, saliency = torch.randn(2, 3, 12, 12), torch.rand(2, 12, 12)
    cpu = DeletionInsertion(step=12).update(model, x, saliency, [0, 2])
    gpu = DeletionInsertion(step=12).update(model.cuda(), x.cuda(), saliency.cuda(), [0, 2])
    for a, b in zip(cpu, gpu):
        assert a["deletion_auc"] == pytest.approx(b["deletion_auc"], abs=1e-5)
        assert a["insertion_auc"] == pytest.approx(b["insertion_auc"], abs=1e-5)
    occluded = occlusion_map(model, x.cuda(), [0, 2], patch=4, stride=4)
    assert occluded.device.type == "cuda"
    assert spearman(occluded[0], saliency[0].cuda()) == pytest.approx(spearman(occluded[0].cpu(), saliency[0]))


def test_pointing_on_cuda():
    heat = torch.zeros(1, 1, 10, 10, device="cuda")
    heat[0, 0, 2, 3] = 1.0
    record = PointingGame(tolerance=0).update(heat, torch.tensor([[1]], device="cuda"), [[(1, (3, 2, 4, 3))]])[0]
    assert record["hit"] and record["point"] == [3.5, 2.5]
