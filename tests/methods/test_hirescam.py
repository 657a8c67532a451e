"""HiResCAM: Grad-CAM's equal on GAP heads, different (by hand) on a flatten head; agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch

import gradcam
from conftest import block_image
from methods.cam_nets import scaled_resnet18
from methods.pgc_reference import layer_terms, pgc_raw_and_weights
from tolerances import cam_magnitude, heatmap_atol, layer_output, sum_atol


def test_equals_gradcam_on_a_gap_linear_head(gap_net):
    # After the last ReLU the head is GAP + linear: dy/dA_k = W_ck / Z at every position.
    torch.manual_seed(2)
    x = torch.randn(3, 3, 10, 12)
    target = torch.tensor([[0, 4], [1, 2], [3, 3]])
    hires = gradcam.HiResCAM(gap_net, "act")(x, target)
    grad = gradcam.GradCAM(gap_net, "act")(x, target)
    assert grad.raw.abs().sum() > 0
    # the same A; HiResCAM sums 6 channels of W / 30, Grad-CAM first averages the 5 x 6 equal cells
    raw_atol = sum_atol(30, cam_magnitude(grad.weights, layer_output(gap_net, "act", x)), depth=2)
    torch.testing.assert_close(hires.raw, grad.raw, rtol=0, atol=raw_atol)
    torch.testing.assert_close(hires.heatmap, grad.heatmap, rtol=0, atol=heatmap_atol(grad.raw, (10, 12), raw_atol))
    torch.testing.assert_close(hires.weights, grad.weights)


def test_differs_from_gradcam_on_a_flatten_head_by_hand(hand_net):
    # A0 = [[1, 2], [3, 4]], A1 = -A0.
    x = block_image([[1.0, 2.0], [3.0, 4.0]])
    # Class 1: g0 = 2 everywhere, g1 = [[1, 0], [0, 0]] -> g0*A0 + g1*A1 = [[2-1, 4], [6, 8]].
    hires = gradcam.HiResCAM(hand_net, "features")(x, 1)
    torch.testing.assert_close(hires.raw, torch.tensor([[[1.0, 4.0], [6.0, 8.0]]]))
    # Grad-CAM: alpha = (2, 0.25) -> 2 A0 - 0.25 A0 = 1.75 A0.
    grad = gradcam.GradCAM(hand_net, "features")(x, 1)
    torch.testing.assert_close(grad.raw, 1.75 * torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    # Class 0: g0 = [[1, 0], [0, 1]], g1 = [[0, 2], [2, 0]] -> [[1, -4], [-6, 4]] -> ReLU; Grad-CAM is all 0.
    hires = gradcam.HiResCAM(hand_net, "features")(x, 0)
    torch.testing.assert_close(hires.raw, torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))
    assert gradcam.GradCAM(hand_net, "features")(x, 0).raw.abs().sum() == 0


@pytest.mark.parametrize("layer", ["layer4", "layer3.1"])
def test_agrees_with_pytorch_grad_cam(layer):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.HiResCAM(model, layer)(x, [3, 7])
    raw, _ = pgc_raw_and_weights(pgc.HiResCAM, model, layer, x, [3, 7], weights=False)
    assert raw.abs().max() > 0
    # the same A and g: per cell, sum_k g_k A_k over K channels in two orders
    a, g = layer_terms(model, layer, x, [3, 7])
    magnitude = float((g.abs() * a.abs()).sum(1).max())
    torch.testing.assert_close(ours.raw, torch.relu(raw), rtol=0, atol=sum_atol(a.shape[1], magnitude))
