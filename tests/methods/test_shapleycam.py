"""ShapleyCAM: g - H A / 2 by hand on a softmax (ReST) head, the linear-head identity with Grad-CAM, an
independent autograd Hessian, and agreement with pytorch-grad-cam's ShapleyCAM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from gradcam.methods.base import normalize
from methods.cam_nets import scaled_resnet18
from tolerances import assert_close, cam_magnitude, normalized_atol, sum_atol

# The layer's activations A: channel 0 has mean 2, channel 1 mean 0, over Z = 4 positions.
A0 = [[1.0, 2.0], [3.0, 2.0]]
A1 = [[1.0, -1.0], [-1.0, 1.0]]


class ConvGapNet(nn.Module):
    """x (B, 2, 2, 2) -> 1x1 conv with identity weights (the layer: A = x) -> GAP -> linear(I, b = (-2, 0)).

    On ``(A0, A1)`` the logits are z = p + b = (2, 0) + (-2, 0) = (0, 0) and softmax(z) = (1/2, 1/2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.copy_(torch.tensor([-2.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((-2, -1)))


def rest(classes) -> gradcam.targets.Target:
    """The paper's ReST target ``z_c - CE(z, c) = z_c + log softmax(z)_c``."""
    return gradcam.ClassScore(classes) + gradcam.ClassScore(classes, "log_probability")


def test_weights_and_map_by_hand_on_a_softmax_target():
    # y = 2 z_0 - logsumexp(z), z = W p + b, p = mean A (Z = 4). dy/dp = 2 e_0 - s = (1.5, -0.5) with s = (1/2, 1/2),
    # so g_k = (1.5, -0.5)_k / 4 at every position: Grad-CAM's alpha = (0.375, -0.125).
    # d2y/dp2 = -(diag s - s s^T) = -[[1/4, -1/4], [-1/4, 1/4]]; (H A)_k = (1/Z) (d2y/dp2 p)_k with p = (2, 0):
    # d2y/dp2 p = (-1/2, 1/2), so H A = (-1/8, 1/8) everywhere and alpha = g - HA/2 = (0.375 + 0.0625, -0.125 - 0.0625)
    # = (0.4375, -0.1875). Map: ReLU(0.4375 A0 - 0.1875 A1) = [[0.25, 1.0625], [1.5, 0.6875]].
    x = torch.tensor([[A0, A1]])
    e = gradcam.ShapleyCAM(ConvGapNet(), "conv")(x, rest(0))
    grad = gradcam.GradCAM(ConvGapNet(), "conv")(x, rest(0))
    # every value is dyadic and every product exact: the only roundings are in exp / log of the softmax
    assert_close(e.weights, torch.tensor([[0.4375, -0.1875]]), terms=4, magnitude=2.0, depth=4)
    assert_close(grad.weights, torch.tensor([[0.375, -0.125]]), terms=4, magnitude=2.0, depth=4)
    assert_close(e.raw, torch.tensor([[[0.25, 1.0625], [1.5, 0.6875]]]), terms=2, magnitude=2.0, depth=5)
    # counterfactual: -y, so g and H A both flip
    negative = gradcam.ShapleyCAM(ConvGapNet(), "conv")(x, rest(0), counterfactual=True)
    assert_close(negative.weights, -e.weights, terms=1, magnitude=1.0)


def test_a_logit_on_a_linear_head_has_no_hessian_term():
    # pytorch-grad-cam's default target (the logit) is linear in A on a GAP + linear head: H = 0 and ShapleyCAM is
    # Grad-CAM exactly (the paper's second-order term needs a curved target such as ReST)
    x = torch.tensor([[A0, A1]])
    e = gradcam.ShapleyCAM(ConvGapNet(), "conv")(x, [[0, 1]])
    grad = gradcam.GradCAM(ConvGapNet(), "conv")(x, [[0, 1]])
    torch.testing.assert_close(e.weights, grad.weights, rtol=0, atol=0)
    torch.testing.assert_close(e.weights, torch.tensor([[[0.25, 0.0], [0.0, 0.25]]]), rtol=0, atol=0)


def hessian_reference(model: nn.Module, layer: str, x: torch.Tensor, target) -> tuple[torch.Tensor, ...]:
    """A, g = dy/dA and H A by torch.autograd.functional.hvp on the part of the model after ``layer``, per image."""
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = store[0]

    def score(values: torch.Tensor) -> torch.Tensor:
        swap = model.get_submodule(layer).register_forward_hook(lambda m, i, o: values)
        try:
            return target(model(x)).sum()
        finally:
            swap.remove()

    (_, g), (_, hv) = (torch.autograd.functional.vjp(score, a), torch.autograd.functional.hvp(score, a, a))
    return a, g, hv


def test_agrees_with_an_independent_hessian_vector_product():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 5, 1), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 3, 6, 6))
    model = model.eval()
    x = torch.randn(2, 3, 6, 6)
    e = gradcam.ShapleyCAM(model, "0")(x, [[0, 2], [1, 0]])
    rows = torch.arange(2)
    for j, classes in enumerate(([0, 1], [2, 0])):
        _, g, hv = hessian_reference(model, "0", x, lambda out, c=classes: out[rows, c])
        expected = (g - 0.5 * hv).mean((2, 3))
        magnitude = float((g.abs() + 0.5 * hv.abs()).amax())
        assert float(hv.abs().max()) > 1e-3 * float(g.abs().max())  # tanh after the layer: a real Hessian term
        assert_close(e.weights[:, j], expected, terms=64, magnitude=magnitude, depth=4)


def pgc_shapley(model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's ShapleyCAM with its ReST targets: channel weights (B, K) and the map before its ReLU."""
    from pytorch_grad_cam import ShapleyCAM as PgcShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST

    found: dict[str, torch.Tensor] = {}

    class Recording(PgcShapleyCAM):
        def get_cam_weights(self, *args, **kwargs):
            weights = super().get_cam_weights(*args, **kwargs)
            found["weights"] = torch.from_numpy(weights)
            return weights

        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            found["raw"] = torch.from_numpy(cam)
            return cam

    with Recording(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputReST(c) for c in classes])
    return found["weights"].float(), found["raw"].float()


@pytest.mark.parametrize(("layer", "rank"), [("layer4", 0), ("layer4", 1), ("layer3", 0), ("layer3", 2)])
def test_agrees_with_pytorch_grad_cam(layer, rank):
    pytest.importorskip("pytorch_grad_cam")
    model = scaled_resnet18(scale=5.0)  # logits of a few units: a softmax that curves, a sizeable H A
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        classes = model(x).argsort(1, descending=True)[:, rank].tolist()  # each image's top-1, 2nd or 3rd class
    ours = gradcam.ShapleyCAM(model, layer)(x, rest(classes))
    weights, raw = pgc_shapley(model, layer, x, classes)
    rows = torch.arange(2)
    a, g, hv = hessian_reference(model, layer, x, lambda out: 2 * out[rows, classes] - out.logsumexp(1))
    # alpha: a mean over u*v cells of g - HA/2, each from a double backward through the head (pooling, 1000 logits)
    cells = a.shape[2] * a.shape[3]
    magnitude = float((g.abs() + 0.5 * hv.abs()).amax())
    weights_atol = sum_atol(max(cells, 1000), magnitude, depth=4)
    assert float((0.5 * hv.mean((2, 3))).abs().max()) > 10 * weights_atol  # the test sees a missing H A term
    torch.testing.assert_close(ours.weights, weights, rtol=0, atol=weights_atol)
    raw_atol = sum_atol(a.shape[1], cam_magnitude(ours.weights, a), depth=2)
    raw_atol += sum_atol(1, cam_magnitude(torch.full_like(ours.weights, weights_atol), a))  # the weights' error
    torch.testing.assert_close(ours.raw, torch.relu(raw), rtol=0, atol=raw_atol)
    spans = ours.raw.flatten(1).amax(1) - ours.raw.flatten(1).amin(1)
    shown = spans > 0  # an all-zero map (every cell below zero before the ReLU) normalises to zero in both
    assert shown.any()
    map_atol = normalized_atol(raw_atol, float(spans[shown].min()))
    torch.testing.assert_close(normalize(ours.raw), normalize(torch.relu(raw)), rtol=0, atol=map_atol)


class ReluConvGapNet(ConvGapNet):
    """ConvGapNet with a ReLU after the layer and b = (-2, -1/2): on ``(A0, A1)``, ReLU(A1) = [[1, 0], [0, 1]],
    p = (2, 1/2) and again z = (0, 0)."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=inplace)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([-2.0, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((-2, -1)))


@pytest.mark.parametrize("inplace", [False, True])
def test_hessian_at_the_layer_output_by_hand_whatever_relu_follows(inplace):
    # y = 2 z_0 - logsumexp(z) of R = ReLU(A); D = [A > 0]. With respect to R: dy/dR = (1.5, -0.5) / 4 everywhere and
    # H_R R = (1/4) d2y/dp2 p = (1/4) (-0.375, 0.375). With respect to A (ReLU'' = 0): g = D dy/dR, H A = D H_R R.
    # Channel 0 (A0 > 0): 0.375 + 0.09375 / 2 = 0.421875. Channel 1: -0.125 - 0.046875 = -0.171875 on the two cells
    # where A1 > 0, 0 on the others: mean -0.0859375. Map ReLU(0.421875 A0 - 0.0859375 A1).
    x = torch.tensor([[A0, A1]])
    e = gradcam.ShapleyCAM(ReluConvGapNet(inplace), "conv")(x, rest(0))
    expected = torch.tensor([[0.421875, -0.0859375]])
    assert_close(e.weights, expected, terms=4, magnitude=2.0, depth=4)
    assert_close(e.raw, torch.relu(torch.einsum("bk,bkuv->buv", expected, x)), terms=2, magnitude=4.0, depth=5)
    if inplace:
        pytest.importorskip("pytorch_grad_cam")
        # pytorch-grad-cam keeps the layer's output tensor, which the in-place ReLU then overwrites: its gradient is
        # still dy/dA, but its H A becomes H_R R at the ReLU's output, unmasked (0.09375 on all four cells of channel
        # 1: alpha_1 = -0.0625 - 0.046875 = -0.109375), and its map sums the rectified R instead of A
        weights, raw = pgc_shapley(ReluConvGapNet(inplace), "conv", x, [0])
        assert_close(weights, torch.tensor([[0.421875, -0.109375]]), terms=4, magnitude=2.0, depth=4)
        rectified = torch.relu(x)
        assert_close(raw, torch.einsum("bk,bkuv->buv", weights, rectified), terms=2, magnitude=4.0, depth=5)


def test_a_target_that_does_not_read_the_layer_is_an_error():
    x = torch.tensor([[A0, A1]])
    with pytest.raises(gradcam.LayerError, match="does not depend on layer 'conv'"):
        gradcam.ShapleyCAM(ConvGapNet(), "conv")(x, lambda out: torch.ones(out.shape[0], requires_grad=True))
