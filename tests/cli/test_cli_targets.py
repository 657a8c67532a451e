"""gradcam.cli.targets: task targets built from command-line options give the scores the options name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradcam
from conftest import GapNet, block_image
from gradcam.cli.targets import target_from_options
from gradcam.targets import ClassScore
from targets.targets_support import HandDetector, HandSegmenter

BLOCKS = [[1.0, 2.0], [3.0, -4.0]]  # A0 = these block means, A1 = -A0


@pytest.fixture
def net() -> GapNet:
    torch.manual_seed(0)
    return GapNet(inplace=False).eval()


def test_target_from_options(tmp_path, net):
    x = torch.randn(2, 3, 8, 8)
    cam = gradcam.GradCAM(net, "act")
    prob = target_from_options("probability", category=3)
    torch.testing.assert_close(cam(x, prob).scores, net(x).softmax(1)[:, 3])
    assert isinstance(target_from_options("class"), ClassScore)
    reference = torch.randn(5)
    np.save(tmp_path / "text.npy", reference.numpy())
    torch.save(reference[None], tmp_path / "text.pt")
    for path in (tmp_path / "text.npy", tmp_path / "text.pt"):
        sim = cam(x, target_from_options("similarity", embedding=str(path)))
        torch.testing.assert_close(sim.scores, torch.nn.functional.cosine_similarity(net(x), reference[None]))
    det = target_from_options("detection", box="0,0,4,2", box_weight=1.0)
    e = gradcam.GradCAM(HandDetector().eval(), "features")(block_image(BLOCKS), det)
    torch.testing.assert_close(e.scores, torch.tensor([1.75]))
    mask = torch.zeros(4, 4)
    mask[3, 0] = 1
    torch.save(mask, tmp_path / "mask.pt")
    seg = target_from_options("segmentation", category=1, mask=tmp_path / "mask.pt")
    torch.testing.assert_close(gradcam.GradCAM(HandSegmenter().eval(), "features")(block_image(BLOCKS), seg).scores,
                               torch.tensor([-9.0]))  # fmt: skip
    with pytest.raises(gradcam.TargetError, match="unknown task 'caption'; available: class"):
        target_from_options("caption")
    with pytest.raises(gradcam.TargetError, match="needs a class"):
        target_from_options("segmentation")
    with pytest.raises(gradcam.TargetError, match="needs a reference embedding"):
        target_from_options("similarity")
    with pytest.raises(gradcam.TargetError, match="'x0,y0,x1,y1' \\(4 numbers\\)"):
        target_from_options("detection", box="1,2,3")
    with pytest.raises(gradcam.TargetError, match="embedding file not found"):
        target_from_options("similarity", embedding=tmp_path / "missing.npy")
