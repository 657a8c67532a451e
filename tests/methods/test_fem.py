"""FEM: k-sigma weights by hand, class-agnostic contract, agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from gradcam.methods.base import normalize
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from tolerances import cam_magnitude, layer_output, normalized_atol, sum_atol


class IdentityGapNet(nn.Module):
    """x (B, K, u, v) -> features = Identity (the layer: A = x) -> GAP -> linear(K -> 2): FEM reads only A."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((-2, -1)))


def test_weights_and_map_by_hand_one_sigma():
    # A0 = [[1, 2], [3, 4]]: mean 2.5, std sqrt(1.25) = 1.118, threshold 3.618: only 4 lies above, w0 = 1/4.
    # A1 = [[0, 1], [1, 0]]: mean 0.5, std 0.5, threshold exactly 1: the rule is strict, no value above, w1 = 0.
    x = grid_input()
    e = gradcam.FEM(GridNet(), "features", sigmas=1)(x, 0)
    torch.testing.assert_close(e.weights, torch.tensor([[0.25, 0.0]]), rtol=0, atol=0)
    torch.testing.assert_close(e.raw, torch.tensor([[[0.25, 0.5], [0.75, 1.0]]]), rtol=0, atol=0)


def test_default_two_sigma_rule_by_hand():
    # 16 positions. One spike c: mean c/16, std c sqrt(15)/16, threshold c (1 + 2 sqrt 15)/16 = 0.547 c < c: w = 1/16.
    # Two spikes c: mean c/8, std c sqrt(7)/8, threshold c (1 + 2 sqrt 7)/8 = 0.786 c < c: w = 2/16.
    # A constant channel has std 0 and nothing strictly above its mean: w = 0.
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 1, 2] = 8.0
    x[0, 1, 0, 0] = x[0, 1, 3, 3] = 4.0
    x[0, 2] = 0.1  # not exactly representable: the mean must still equal every value
    e = gradcam.FEM(IdentityGapNet(), "features")(x, [[0, 1]])
    torch.testing.assert_close(e.weights, torch.tensor([[[1 / 16, 2 / 16, 0.0]] * 2]), rtol=0, atol=0)
    expected = x[0, 0] / 16 + x[0, 1] * 2 / 16
    torch.testing.assert_close(e.raw, expected.expand(1, 2, 4, 4), rtol=0, atol=0)  # one map for every target


def test_too_few_positions_for_two_sigma_give_a_zero_map():
    # over n positions no value exceeds mean + sqrt(n - 1) std: a 2x2 grid (sqrt 3 < 2) never passes the rule
    torch.manual_seed(0)
    e = gradcam.FEM(IdentityGapNet(), "features")(torch.randn(2, 3, 2, 2).exp())
    assert not e.weights.any() and not e.heatmap.any()


def test_counterfactual_and_bad_sigmas_are_refused():
    with pytest.raises(gradcam.MethodError, match="class-agnostic"):
        gradcam.FEM(GridNet(), "features")(grid_input(), 0, counterfactual=True)
    for bad in (float("nan"), "2", True, float("inf")):
        with pytest.raises(gradcam.MethodError, match="sigmas"):
            gradcam.FEM(GridNet(), "features", sigmas=bad)


def pgc_fem_raw(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's FEM map before its ReLU / resize / normalisation, (B, u, v)."""
    from pytorch_grad_cam import FEM as PgcFEM

    maps: list[torch.Tensor] = []

    class Recording(PgcFEM):
        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            maps.append(torch.from_numpy(cam))
            return cam

    with Recording(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        cam(input_tensor=x, targets=None)
    return maps[0].float()


@pytest.mark.parametrize("layer", ["layer3", "layer2.1"])
def test_agrees_with_pytorch_grad_cam(layer):
    pytest.importorskip("pytorch_grad_cam")
    model = scaled_resnet18()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.FEM(model, layer)(x, [3, 7])
    reference = pgc_fem_raw(model, layer, x)
    a = layer_output(model, layer, x)
    # the weights are counts: they agree exactly when no activation of a live channel lies within a few roundings
    # of its threshold (the mean and std are sums of u*v cells, then a square root)
    values = a.double()
    mean = values.mean((2, 3), keepdim=True)
    cells = a.shape[2] * a.shape[3]
    std = (values - mean).square().mean((2, 3), keepdim=True).sqrt()
    threshold = mean + 2 * std
    margin = sum_atol(cells, 1.0, depth=2) * (values.abs().mean((2, 3), keepdim=True) + 2 * std)  # linear in size
    live = values.flatten(2).abs().amax(-1) > 0  # an all-zero channel (a dead ReLU): 0 > 0 is exact in both
    assert live.sum() > a.shape[1]
    assert bool(((values - threshold).abs() > margin).flatten(2)[live].all())
    assert ours.weights.any()
    # the maps sum K channels of alpha_k A_k (alpha in [0, 1], A >= 0 after the block's ReLU)
    raw_atol = sum_atol(a.shape[1], cam_magnitude(ours.weights, a), depth=2)
    torch.testing.assert_close(ours.raw, torch.relu(reference), rtol=0, atol=raw_atol)
    spans = ours.raw.flatten(1).amax(1) - ours.raw.flatten(1).amin(1)
    map_atol = normalized_atol(raw_atol, float(spans.min()))
    torch.testing.assert_close(normalize(ours.raw), normalize(torch.relu(reference)), rtol=0, atol=map_atol)
