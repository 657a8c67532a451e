"""Eigen-Grad-CAM and element-wise Grad-CAM: maps by hand, agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch

import gradcam
from methods.cam_nets import A0, GridNet, grid_input, scaled_resnet18
from methods.pgc_reference import pgc_raw_and_weights
from tolerances import assert_close, gamma, sum_atol


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
    summed_terms = torch.stack([g * a for g, a in zip(*_grads_and_activations(model, layer, x, [3, 7]))])
    summed = summed_terms.sum(1)
    for b in range(2):  # our sign rule, applied independently: correlate with HiResCAM's map before its ReLU
        centred = summed[b] - summed[b].mean()
        sign = 1.0 if float((theirs[b] * centred).sum()) >= 0 else -1.0
        expected = torch.relu(sign * theirs[b])
        assert expected.max() > 0
        torch.testing.assert_close(ours.raw[b], expected, rtol=0, atol=projection_atol(summed_terms[b]))


def projection_atol(terms):
    """Bound on |ours - pytorch-grad-cam| for the centred first-component projection of the terms (K, u, v).

    As for Eigen-CAM (test_eigencam.py): numpy's float32 SVD is backward stable (error ~ gamma_n sigma_1, n the
    longer side), so the first right singular vector moves by that over the gap sigma_1 - sigma_2 (Wedin) and
    each cell's projection by its row's norm times that; plus pytorch-grad-cam's float32 centring (a mean over
    the u*v positions, projected on v) and the K-term dot product, each summed in two orders.
    """
    matrix = terms.flatten(1).T.double()  # (u*v positions) x (K channels)
    shift = sum_atol(matrix.shape[0], float(matrix.abs().max()))  # a float32 column mean's error
    matrix = matrix - matrix.mean(0)
    sigma = torch.linalg.svdvals(matrix)
    vector_error = 2 * gamma(max(matrix.shape)) * float(sigma[0] / (sigma[0] - sigma[1]))
    v = torch.linalg.svd(matrix, full_matrices=False)[2][0]
    dot_terms = float((matrix.abs() @ v.abs()).max())
    vector_part = float(matrix.norm(dim=1).max()) * vector_error
    return vector_part + shift * float(v.abs().sum()) + sum_atol(matrix.shape[1], dot_terms)


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
