"""Eigen-Grad-CAM and element-wise Grad-CAM: maps by hand, agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch

import gradcam
from methods.cam_nets import A0, GridNet, grid_input, scaled_resnet18
from methods.pgc_reference import pgc_raw_and_weights
from tolerances import assert_close


def test_element_wise_map_by_hand():
    # A1 = [[2, 1], [1, 0]]: class 0's terms are G0*A0 = [[1, 0], [0, 8]] and G1*A1 = [[-2, 1], [0, 0]].
    x = torch.tensor([[A0, [[2.0, 1.0], [1.0, 0.0]]]])
    e = gradcam.GradCAMElementWise(GridNet(), "features")(x, 0)
    torch.testing.assert_close(e.raw, torch.tensor([[[1.0, 1.0], [0.0, 8.0]]]))  # the -2 is dropped first
    hires = gradcam.HiResCAM(GridNet(), "features")(x, 0)
    torch.testing.assert_close(hires.raw, torch.tensor([[[0.0, 1.0], [0.0, 8.0]]]))  # ... here it cancels the 1
    torch.testing.assert_close(e.weights, hires.weights)  # mean g, reported only


def test_eigen_grad_cam_by_hand():
    # Class 1 reads 0.5 * A0: the terms are (0.5 A0, 0), rank one; centred: 0.5 (A0 - 2.5) on the axis (1, 0).
    e = gradcam.EigenGradCAM(GridNet(), "features")(grid_input(), 1)
    torch.testing.assert_close(e.raw, torch.relu(0.5 * (torch.tensor([A0]) - 2.5)))
    # Class 0: terms (G0*A0, G1*A1) = ([[1, 0], [0, 8]], [[0, 1], [0, 0]]); the projection is the centred
    # matrix times v1 with v1 the top eigenvector of its 2x2 covariance (checked against torch.linalg.eigh).
    terms = torch.tensor([[1.0, 0.0, 0.0, 8.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64).T
    centred = terms - terms.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    projection = centred @ vectors[:, -1]
    projection = projection if float(projection @ (terms.sum(1) - terms.sum(1).mean())) > 0 else -projection
    e = gradcam.EigenGradCAM(GridNet(), "features")(grid_input(), 0)
    torch.testing.assert_close(e.raw[0], torch.relu(projection).view(2, 2).float())
    assert e.raw[0, 1, 1] == e.raw.max()  # the 8 dominates


@pytest.mark.parametrize("layer", ["layer4", "layer2"])
def test_element_wise_agrees_with_pytorch_grad_cam(layer):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.GradCAMElementWise(model, layer)(x, [3, 7])
    raw, _ = pgc_raw_and_weights(pgc.GradCAMElementWise, model, layer, x, [3, 7], weights=False)
    assert float(raw.max()) > 0
    channels = model.get_submodule(layer)[-1].conv2.out_channels
    # One sum of K non-negative terms, in another order: 2 gamma_K * sum (= the map itself).
    assert_close(ours.raw, raw, terms=channels, magnitude=float(raw.max()))


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_eigen_grad_cam_agrees_with_pytorch_grad_cam(layer):
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.EigenGradCAM(model, layer)(x, [3, 7])
    theirs, _ = pgc_raw_and_weights(pgc.EigenGradCAM, model, layer, x, [3, 7], weights=False)  # SVD sign arbitrary
    summed = torch.stack([(g * a).sum(0) for g, a in zip(*_grads_and_activations(model, layer, x, [3, 7]))])
    for b in range(2):  # our sign rule, applied independently: correlate with HiResCAM's map before its ReLU
        centred = summed[b] - summed[b].mean()
        sign = 1.0 if float((theirs[b] * centred).sum()) >= 0 else -1.0
        expected = torch.relu(sign * theirs[b])
        assert expected.max() > 0
        torch.testing.assert_close(ours.raw[b], expected, rtol=1e-5, atol=1e-5 * float(theirs[b].abs().max()))


def _grads_and_activations(model, layer, x, classes):
    """Plain autograd: A and dy_c/dA of each image (no gradcam code)."""
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    y = out.gather(1, torch.tensor(classes)[:, None]).sum()
    (g,) = torch.autograd.grad(y, captured[0])
    return g.detach(), captured[0].detach()
