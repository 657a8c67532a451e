"""KPCA-CAM: the linear kernel is Eigen-CAM, the other kernels equal scikit-learn's KernelPCA (via pytorch-grad-cam)."""

from __future__ import annotations

import pytest
import torch

import gradcam
from gradcam.methods.kpcacam import kernel_matrix
from methods.cam_nets import scaled_resnet18
from tolerances import gamma, sum_atol, unit_roundoff


def captured(model, layer, x):
    out = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return out[0]


def sklearn_atol(activations, kernel, dtype=torch.float64):
    """Bound on scikit-learn's KernelPCA projection (in ``dtype``) of one image's activations (K, u, v) against ours
    (float64), both rounded to float32 at the end: its centring (a mean over n positions), the dot products (K
    terms), the kernel function (its derivative times the argument's error), the double centring (means over n),
    eigh (backward error gamma_n |G|); the top eigenvector then moves by the kernel matrix's error over the
    eigengap (Davis-Kahan), the projection sqrt(lambda1) v1 by that and by lambda1's error (Weyl)."""
    x = activations.double().flatten(1).T  # (n positions, K channels)
    n, channels = x.shape
    x = x - x.mean(0)
    dx = sum_atol(n, float(activations.abs().max()), dtype)  # each centred entry
    norms1 = x.abs().sum(1)
    d_dot = sum_atol(channels, 1.0, dtype) * (x.abs() @ x.abs().T) + dx * (norms1[:, None] + norms1[None, :])
    g = 1.0 / channels
    dot = x @ x.T
    u = unit_roundoff(dtype)
    gram = kernel_matrix(x[None], kernel)[0]
    if kernel == "sigmoid":
        d_gram = (1 - gram**2) * g * d_dot + 4 * u
    elif kernel == "poly":
        d_gram = 3 * (g * dot + 1) ** 2 * g * d_dot + 4 * u * gram.abs()
    elif kernel == "rbf":
        d_square = d_dot.diagonal()[:, None] + d_dot.diagonal()[None, :] + 2 * d_dot
        d_gram = gram * g * d_square + 4 * u * gram
    else:  # cosine: dot / (|x_i| |x_j|), each norm's relative error half its squared norm's
        norms = x.norm(dim=1).clamp_min(1e-300)
        relative = d_dot.diagonal() / (2 * norms**2)
        d_gram = d_dot / (norms[:, None] * norms[None, :]) + gram.abs() * (relative[:, None] + relative[None, :])
        d_gram = d_gram + 4 * u
    d_centred = d_gram + d_gram.mean(0, keepdim=True) + d_gram.mean(1, keepdim=True) + d_gram.mean()
    d_centred = d_centred + sum_atol(n, 4 * float(gram.abs().max()), dtype)
    centred = gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()
    values, vectors = torch.linalg.eigh(centred)
    error = float(d_centred.norm()) + gamma(n, dtype) * float(centred.norm())
    top, gap = float(values[-1]), float(values[-1] - values[-2])
    if gap <= 2 * error:
        raise ValueError(f"eigengap {gap} within the kernel matrix's error {error}: no bound on the eigenvector")
    vector_error = 2 * error / (gap - error)
    projection = vectors[:, -1].abs() * top**0.5
    bound = top**0.5 * vector_error + vectors[:, -1].abs() * error / (2 * top**0.5) + 2 * unit_roundoff() * projection
    return float(bound.max())


def test_the_linear_kernel_is_eigen_cam(gap_net):
    # Kernel PCA with <x, y>: the top eigenvector of the centred Gram matrix X X^T, scaled by sqrt(lambda), is X v1
    torch.manual_seed(3)
    x = torch.randn(3, 3, 8, 8)
    kpca = gradcam.KPCACAM(gap_net, "body", kernel="linear")(x, [0, 1, 2])
    eigen = gradcam.EigenCAM(gap_net, "body")(x, [0, 1, 2])
    # both in float64 (eigh of the Gram matrix X X^T against the SVD of X, X the centred 16 x 6 activations), then
    # rounded to float32 (u |value| each); the float64 vectors move by gamma_n over the relative gap (Wedin). Eigen-CAM
    # then sums its 6 channel terms v_k X_k in float32 (v and X rounded to float32 first: depth 2).
    with torch.no_grad():
        matrix = gap_net.body(x).double().flatten(2).transpose(1, 2)  # (the ReLU after 'body' is in place)
    matrix = matrix - matrix.mean(1, keepdim=True)
    sigma = torch.linalg.svdvals(matrix)  # (B, 6)
    relative_gap = sigma[:, 0] ** 2 / (sigma[:, 0] ** 2 - sigma[:, 1] ** 2)
    float64_error = float((4 * gamma(16, torch.float64) * relative_gap * sigma[:, 0]).max())
    axes = torch.linalg.svd(matrix, full_matrices=False)[2][:, 0]  # (B, 6)
    channel_sum = sum_atol(6, float((matrix.abs() @ axes.abs().unsqueeze(-1)).max()), depth=2)
    atol = 2 * unit_roundoff() * float(eigen.raw.abs().max()) + float64_error + channel_sum
    torch.testing.assert_close(kpca.raw, eigen.raw, rtol=0, atol=atol)
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
    # scikit-learn on the float64 activations: a float32 worst case (kernel matrix errors over the eigengap) would be
    # ~1e-2; in float64 both sides agree to ~1e-12 before pytorch-grad-cam's and our final float32 rounding
    theirs = torch.from_numpy(get_2d_projection_kernel(a.double().numpy(), kernel))  # sign: scikit-learn's svd_flip
    mean_map = a.mean(dim=1)
    for b in range(2):  # our sign rule applied independently: correlate with the mean activation
        sign = 1.0 if float((theirs[b] * (mean_map[b] - mean_map[b].mean())).sum()) >= 0 else -1.0
        expected = torch.relu(sign * theirs[b])
        assert expected.max() > 0
        torch.testing.assert_close(ours.raw[b], expected, rtol=0, atol=sklearn_atol(a[b], kernel))


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
