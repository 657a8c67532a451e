"""XGrad-CAM: weights by hand, the GAP-head identity, agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch

import gradcam
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from methods.pgc_reference import layer_terms, pgc_raw_and_weights
from tolerances import assert_close, cam_magnitude, sum_atol


def test_weights_and_map_by_hand():
    # w0 = sum (A0 / 10) * G0 = (1*1 + 4*2) / 10 = 0.9;  w1 = sum (A1 / 2) * G1 = (1*1) / 2 = 0.5.
    x = grid_input()
    e = gradcam.XGradCAM(GridNet(), "features")(x, 0)
    torch.testing.assert_close(e.weights, torch.tensor([[0.9, 0.5]]))
    torch.testing.assert_close(e.raw, torch.relu(0.9 * x[:, 0] + 0.5 * x[:, 1]))


def test_a_channel_that_sums_to_zero_gets_weight_zero():
    x = grid_input()
    x[:, 1] = 0.0
    e = gradcam.XGradCAM(GridNet(), "features")(x, 0)
    torch.testing.assert_close(e.weights, torch.tensor([[0.9, 0.0]]))


def test_equals_gradcam_weights_on_a_gap_linear_head(gap_net):
    # g_k = W_ck / Z everywhere, so sum_ij (A/sum A) g = W_ck / Z: Grad-CAM's alpha (where sum A > 0).
    torch.manual_seed(4)
    x = torch.randn(2, 3, 8, 8)
    xgrad = gradcam.XGradCAM(gap_net, "act")(x, [1, 3])
    grad = gradcam.GradCAM(gap_net, "act")(x, [1, 3])
    alive = torch.relu(gap_net.body(x)).sum(dim=(-2, -1)) > 0
    assert alive.any() and grad.weights.abs().sum() > 0
    # sum A g / sum A: two sums of 4 x 4 cells of positive terms and a quotient; alpha: one such sum
    assert_close(xgrad.weights[alive], grad.weights[alive], terms=16, depth=3)
    assert (xgrad.weights[~alive] == 0).all()


@pytest.mark.parametrize("layer", ["layer4", "layer3.1"])
def test_agrees_with_pytorch_grad_cam(layer):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.XGradCAM(model, layer)(x, [3, 7])
    raw, weights = pgc_raw_and_weights(pgc.XGradCAM, model, layer, x, [3, 7])
    assert weights.abs().max() > 0
    # the same A (>= 0 after the block's ReLU) and g: alpha_k = sum g A / sum A over u*v cells (two sums and a
    # quotient), then the map sums K channels
    a, g = layer_terms(model, layer, x, [3, 7])
    channels, cells = a.shape[1], a.shape[2] * a.shape[3]
    sums = a.sum((2, 3))
    magnitude = float(((g.abs() * a).sum((2, 3)) / sums.clamp_min(1e-30)).max())
    # pytorch-grad-cam divides by sum A + 1e-7: its weights are smaller by alpha * 1e-7 / (sum A + 1e-7)
    eps_shift = (ours.weights.abs() * 1e-7 / (sums + 1e-7)).double()
    weights_atol = sum_atol(cells, magnitude, depth=3) + float(eps_shift.max())
    torch.testing.assert_close(ours.weights, weights, rtol=0, atol=weights_atol)
    raw_atol = sum_atol(max(channels, cells), cam_magnitude(ours.weights, a), depth=4)
    raw_atol += float(torch.einsum("bk,bkuv->buv", eps_shift, a.double()).max())
    torch.testing.assert_close(ours.raw, torch.relu(raw), rtol=0, atol=raw_atol)
