"""Grad-CAM++: the closed form by hand, TorchCAM's missing denominator, agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch

import gradcam
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from methods.pgc_reference import layer_terms
from tolerances import assert_close, cam_magnitude, sum_atol

A = grid_input()[0]  # (2, 2, 2): A0 (sum 10), A1 (sum 2)


def test_weights_and_map_by_hand():
    # Class 0: g = G0 = [[1, 0], [0, 2]] on A0 (sum 10), g = G1 = [[-1, 1], [0, 0]] on A1 (sum 2).
    # alpha = g^2 / (2 g^2 + sum(A) g^3):
    #   A0: g=1 -> 1/(2 + 10) = 1/12; g=2 -> 4/(8 + 80) = 1/22; w0 = 1/12 * 1 + 1/22 * 2 = 23/132
    #   A1: g=-1 -> denominator 2 - 2 = 0 -> alpha 0 (and ReLU(g) = 0); g=1 -> 1/(2 + 2) = 1/4; w1 = 1/4
    e = gradcam.GradCAMPlusPlus(GridNet(), "features")(grid_input(), 0)
    torch.testing.assert_close(e.weights, torch.tensor([[23 / 132, 1 / 4]]))
    torch.testing.assert_close(e.raw, torch.relu(23 / 132 * A[0] + 1 / 4 * A[1]).unsqueeze(0))
    torch.testing.assert_close(e.raw[0, 1, 1], torch.tensor(23 / 132 * 4))


def test_counterfactual_uses_the_negated_gradient():
    # -y0: g = -G0, -G1. A0: g=-1, -2 -> ReLU(g) = 0 -> w0 = 0. A1: g=1 at (0,0): 1/(2 + 2) = 1/4; g=-1 -> 0.
    e = gradcam.GradCAMPlusPlus(GridNet(), "features")(grid_input(), 0, counterfactual=True)
    torch.testing.assert_close(e.weights, torch.tensor([[0.0, 1 / 4]]))


def test_torchcam_never_applies_the_denominator():
    torchcam = pytest.importorskip("torchcam.methods")
    model = GridNet()
    ours = gradcam.GradCAMPlusPlus(model, "features")(grid_input(), 0)
    x = grid_input().requires_grad_(True)  # the hooked Identity's output must be in the graph
    with torchcam.GradCAMpp(model, "features", input_shape=(2, 2, 2)) as extractor:
        theirs = extractor(class_idx=0, scores=model(x), normalized=False)[0].detach()
    # TorchCAM's alpha is g^2 (`alpha[mask].div_()` divides a copy): w0 = 1*1 + 4*2 = 9, w1 = 1*1 = 1.
    torch.testing.assert_close(theirs, torch.relu(9 * A[0] + 1 * A[1]).unsqueeze(0))
    without_denominator = model.head.weight[0].view(2, 2, 2) ** 2 * torch.relu(model.head.weight[0].view(2, 2, 2))
    assert without_denominator.sum(dim=(-2, -1)).tolist() == [9.0, 1.0]
    # ... which changes the map's shape, not only its scale:
    assert not torch.allclose(gradcam.methods.base.normalize(theirs), gradcam.methods.base.normalize(ours.raw))


@pytest.mark.parametrize("layer", ["layer4", "layer3.1"])
def test_agrees_with_pytorch_grad_cam(layer):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # pytorch-grad-cam adds eps = 1e-6 to the denominator 2 g^2 + sum(A) g^3, which matters where
    # |g| < 1e-2 (channels with small classifier weights). A classifier scaled by 1e6 makes every g^2
    # >> 1e-6, so the eps is negligible and both compute the same closed form.
    model = scaled_resnet18(scale=1e6)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    classes = [3, 7]
    ours = gradcam.GradCAMPlusPlus(model, layer)(x, classes)
    module = model.get_submodule(layer)
    targets = [ClassifierOutputTarget(c) for c in classes]
    with pgc.GradCAMPlusPlus(model=model, target_layers=[module]) as cam:
        cam(input_tensor=x, targets=targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        weights = torch.from_numpy(cam.get_cam_weights(x, module, targets, activations, grads))
        raw = torch.from_numpy(cam.get_cam_image(x, module, targets, activations, grads, eigen_smooth=False))
    assert weights.abs().max() > 0
    # the same A and g; the closed form sums u*v cells twice (sum A, then the weighted ReLU(g)) with a
    # quotient between, all of positive terms; the map then sums K channels
    a, _ = layer_terms(model, layer, x, classes)
    channels, cells = a.shape[1], a.shape[2] * a.shape[3]
    assert_close(ours.weights, weights.float(), terms=cells, depth=3)
    raw_atol = sum_atol(max(channels, cells), cam_magnitude(ours.weights, a), depth=4)
    torch.testing.assert_close(ours.raw, torch.relu(raw).float(), rtol=0, atol=raw_atol)
