"""KPCA-CAM: the linear kernel is Eigen-CAM, the other kernels equal scikit-learn's KernelPCA (via pytorch-grad-cam)."""

from __future__ import annotations

import pytest
import torch

import gradcam
from methods.cam_nets import scaled_resnet18


def captured(model, layer, x):
    out = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return out[0]


def test_the_linear_kernel_is_eigen_cam(gap_net):
    # Kernel PCA with <x, y>: the top eigenvector of the centred Gram matrix X X^T, scaled by sqrt(lambda), is X v1
    torch.manual_seed(3)
    x = torch.randn(3, 3, 8, 8)
    kpca = gradcam.KPCACAM(gap_net, "body", kernel="linear")(x, [0, 1, 2])
    eigen = gradcam.EigenCAM(gap_net, "body")(x, [0, 1, 2])
    torch.testing.assert_close(kpca.raw, eigen.raw, rtol=1e-5, atol=1e-5 * float(eigen.raw.abs().max()))
    assert kpca.weights is None


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "cosine"])
def test_agrees_with_scikit_learn_kernel_pca(kernel):
    pytest.importorskip("sklearn")
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel

    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.KPCACAM(model, "layer3", kernel=kernel)(x)
    a = captured(model, "layer3", x)
    theirs = torch.from_numpy(get_2d_projection_kernel(a.numpy(), kernel))  # sign: scikit-learn's svd_flip
    mean_map = a.mean(dim=1)
    for b in range(2):  # our sign rule applied independently: correlate with the mean activation
        sign = 1.0 if float((theirs[b] * (mean_map[b] - mean_map[b].mean())).sum()) >= 0 else -1.0
        expected = torch.relu(sign * theirs[b])
        assert expected.max() > 0
        torch.testing.assert_close(ours.raw[b], expected, rtol=1e-5, atol=1e-5 * float(theirs[b].abs().max()))


def test_class_agnostic_without_counterfactual_or_channel_terms(gap_net):
    x = torch.randn(2, 3, 8, 8)
    e = gradcam.KPCACAM(gap_net, "body")(x, torch.tensor([[0, 1], [2, 3]]))
    torch.testing.assert_close(e.raw[:, 0], e.raw[:, 1])
    with pytest.raises(gradcam.MethodError, match="class-agnostic"):
        gradcam.KPCACAM(gap_net, "body")(x, counterfactual=True)
    with pytest.raises(gradcam.MethodError, match="no channel terms"):
        gradcam.smoothing.EigenSmooth(gradcam.KPCACAM(gap_net, "body"))(x)
    with pytest.raises(ValueError, match="kernel must be one of"):
        gradcam.KPCACAM(gap_net, kernel="laplacian")
