"""LayerCAM: the element-wise map by hand, agreement with pytorch-grad-cam (also on an early layer)."""

from __future__ import annotations

import pytest
import torch

import gradcam
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from methods.pgc_reference import layer_terms, pgc_raw_and_weights
from tolerances import sum_atol


def test_map_by_hand():
    # ReLU(G0) * A0 = [[1, 0], [0, 8]];  ReLU(G1) * A1 = [[0, 1], [0, 0]] (the -1 gradient is dropped).
    e = gradcam.LayerCAM(GridNet(), "features")(grid_input(), 0)
    torch.testing.assert_close(e.raw, torch.tensor([[[1.0, 1.0], [0.0, 8.0]]]))
    torch.testing.assert_close(e.weights, torch.tensor([[3 / 4, 1 / 4]]))  # mean ReLU(g), reported only
    # Class 1 reads 0.5 * A0 everywhere: 0.5 * A0.
    e = gradcam.LayerCAM(GridNet(), "features")(grid_input(), 1)
    torch.testing.assert_close(e.raw, 0.5 * grid_input()[:, 0])


@pytest.mark.parametrize("layer", ["layer4", "layer1"])
def test_agrees_with_pytorch_grad_cam(layer):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.LayerCAM(model, layer)(x, [3, 7])
    raw, _ = pgc_raw_and_weights(pgc.LayerCAM, model, layer, x, [3, 7], weights=False)
    assert raw.abs().max() > 0
    # the same A and g: per cell, sum_k ReLU(g_k) A_k over K channels in two orders
    a, g = layer_terms(model, layer, x, [3, 7])
    magnitude = float((torch.relu(g) * a.abs()).sum(1).max())
    torch.testing.assert_close(ours.raw, torch.relu(raw), rtol=0, atol=sum_atol(a.shape[1], magnitude))
