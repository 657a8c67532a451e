"""Properties every new layer method shares: k targets == k single calls, B images == B single calls."""

from __future__ import annotations

import pytest
import torch

import gradcam
from tolerances import assert_close, cam_magnitude, layer_output, sum_atol

FAMILY = [
    gradcam.GradCAMPlusPlus,
    gradcam.HiResCAM,
    gradcam.XGradCAM,
    gradcam.LayerCAM,
    gradcam.EigenCAM,
    gradcam.ScoreCAM,
    gradcam.AblationCAM,
    gradcam.EigenGradCAM,
    gradcam.GradCAMElementWise,
    gradcam.ISCAM,
    gradcam.FEM,
    gradcam.ShapleyCAM,
]  # not SmoothGradCAMPlusPlus: its seeded noise is drawn image after image, so image b's noise depends on b


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.name)
def test_k_targets_and_batches_equal_single_calls(gap_net, cls):
    torch.manual_seed(11)
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([[0, 3], [4, 1]])
    together = cls(gap_net, "body")(x, target)
    assert together.raw.shape == (2, 2, 4, 4) and together.heatmap.shape == (2, 2, 8, 8)
    assert together.raw.abs().sum() > 0
    # batched against single passes (forward passes of masked images for Score-CAM / Ablation-CAM): gap_net's
    # longest sum is conv2's 72 terms, 4 accumulations forward and 4 backward
    raw_atol = sum_atol(72, cam_magnitude(together.weights, layer_output(gap_net, "body", x)), depth=8)
    for b in range(2):
        for j in range(2):
            alone = cls(gap_net, "body")(x[b : b + 1], int(target[b, j]))
            torch.testing.assert_close(together.raw[b, j], alone.raw[0], rtol=0, atol=raw_atol)
            assert_close(together.weights[b, j], alone.weights[0], terms=72, depth=8)


def test_every_new_method_is_registered():
    names = {"gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam", "ablationcam", "multilayer"}
    names |= {"gradient", "smoothgrad", "integrated-gradients", "eigengradcam", "gradcam-elementwise"}
    names |= {"smoothgradcam++", "sscam", "iscam", "finercam", "kpcacam", "fullgrad"}
    names |= {"fem", "shapleycam"}
    assert names <= set(gradcam.METHODS)
    for name in names:
        assert gradcam.METHODS[name].cls.name == name
