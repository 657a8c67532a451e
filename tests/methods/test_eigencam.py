"""Eigen-CAM: rank-one activations by hand, the sign rule, class-agnostic maps, agreement with pytorch-grad-cam."""

from __future__ import annotations

import math

import pytest
import torch

import gradcam
from methods.cam_nets import GridNet, scaled_resnet18
from tolerances import gamma, sum_atol

P = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


def rank_one(sign: float = 1.0) -> torch.Tensor:
    """Layer output (P, 2P): every position's channel vector is P_ij * (1, 2)."""
    return sign * torch.stack([P, 2 * P]).unsqueeze(0)


def test_rank_one_activations_by_hand():
    # Centred: rows (P_ij - 2.5) * (1, 2); v1 = (1, 2)/sqrt5; projection sqrt5 * (P - 2.5).
    e = gradcam.EigenCAM(GridNet(), "features")(rank_one())
    root5 = math.sqrt(5)
    torch.testing.assert_close(e.weights, torch.tensor([[1 / root5, 2 / root5]]))
    torch.testing.assert_close(e.raw, root5 * torch.relu(P - 2.5).unsqueeze(0))
    # The paper's uncentred SVD: projection sqrt5 * P.
    e = gradcam.EigenCAM(GridNet(), "features", center=False)(rank_one())
    torch.testing.assert_close(e.raw, root5 * P.unsqueeze(0))


def test_sign_follows_the_mean_activation():
    # For (-P, -2P) the mean activation is -1.5 P: the map must be large where P is small.
    e = gradcam.EigenCAM(GridNet(), "features")(rank_one(-1.0))
    torch.testing.assert_close(e.raw, math.sqrt(5) * torch.relu(2.5 - P).unsqueeze(0))
    # Centred rows are -(P_ij - 2.5) * (1, 2): the axis (1, 2)/sqrt5 gives -sqrt5 (P - 2.5), positively
    # correlated with -1.5 P, so it is kept.
    torch.testing.assert_close(e.weights, torch.tensor([[1.0, 2.0]]) / math.sqrt(5))


def test_class_agnostic_and_no_counterfactual():
    x = rank_one() + 0.1 * torch.randn(3, 2, 2, 2)
    maps = gradcam.EigenCAM(GridNet(), "features")(x, torch.tensor([[0, 1]] * 3))
    torch.testing.assert_close(maps.raw[:, 0], maps.raw[:, 1])
    with pytest.raises(gradcam.MethodError, match="class-agnostic"):
        gradcam.EigenCAM(GridNet(), "features")(x, counterfactual=True)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_agrees_with_pytorch_grad_cam(layer):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.EigenCAM(model, layer)(x)
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    theirs = torch.from_numpy(get_2d_projection(captured[0].numpy()))  # numpy SVD, sign arbitrary
    mean_map = captured[0].mean(dim=1)
    for b in range(2):  # our sign rule, applied independently: correlate positively with the mean activation
        centred_mean = mean_map[b] - mean_map[b].mean()
        sign = 1.0 if float((theirs[b] * centred_mean).sum()) >= 0 else -1.0
        expected = torch.relu(sign * theirs[b])
        assert expected.max() > 0
        # numpy's float32 SVD is backward stable (error ~ gamma_n sigma_1, n the longer side): the first right
        # singular vector moves by that over the gap sigma_1 - sigma_2 (Wedin), each cell's projection by
        # its row's norm times that, plus the rounding of the K-term dot product
        matrix = captured[0][b].flatten(1).T.double()  # (u*v positions) x (K channels)
        matrix = matrix - matrix.mean(0)
        sigma = torch.linalg.svdvals(matrix)
        vector_error = 2 * gamma(max(matrix.shape)) * float(sigma[0] / (sigma[0] - sigma[1]))
        v = torch.linalg.svd(matrix, full_matrices=False)[2][0]
        terms = float((matrix.abs() @ v.abs()).max())
        atol = float(matrix.norm(dim=1).max()) * vector_error + sum_atol(matrix.shape[1], terms)
        torch.testing.assert_close(ours.raw[b], expected, rtol=0, atol=atol)
