"""Ablation-CAM: weights by hand, the sign of negative scores, batched == a naive loop on both code paths,
agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from tolerances import sum_atol

A = grid_input()[0]


def test_weights_and_map_by_hand():
    # y0 = <G0, A0> + <G1, A1> = 9 + 1 = 10; without channel 0: 1, without channel 1: 9.
    e = gradcam.AblationCAM(GridNet(), "features")(grid_input(), 0)
    torch.testing.assert_close(e.weights, torch.tensor([[0.9, 0.1]]))
    torch.testing.assert_close(e.raw, torch.relu(0.9 * A[0] + 0.1 * A[1]).unsqueeze(0))
    flipped = gradcam.AblationCAM(GridNet(), "features")(grid_input(), 0, counterfactual=True)
    torch.testing.assert_close(flipped.weights, -e.weights)


def test_a_negative_score_keeps_the_sign_of_the_drop():
    # y1 = -0.5 * sum(A0) = -5; removing channel 0 RAISES it to 0: (y - y^0) / |y| = -5 / 5 = -1.
    model = GridNet(second=-0.5)
    e = gradcam.AblationCAM(model, "features")(grid_input(), 1)
    torch.testing.assert_close(e.weights, torch.tensor([[-1.0, 0.0]]))
    assert e.raw.abs().sum() == 0  # channel 0 argues against class 1: nothing to show
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # pytorch-grad-cam divides by y itself: -5 / -5 = +1, the channel that lowers the score is shown.
    with pgc.AblationCAM(model=model, target_layers=[model.features]) as cam:
        cam.activations_and_grads(grid_input())
        activations = cam.activations_and_grads.activations[0]
        theirs = cam.get_cam_weights(grid_input(), model.features, [ClassifierOutputTarget(1)], activations, None)
    torch.testing.assert_close(torch.from_numpy(theirs).float(), torch.tensor([[1.0, 0.0]]))


class ConcatNet(nn.Module):
    """The layer's output is concatenated with a tensor from BEFORE the layer (DenseNet-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(9, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        return self.head(torch.cat([stem, self.layer(stem)], dim=1))


def naive_weights(model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """The paper's loop: one forward pass per image and channel, the channel zeroed by a hook."""
    module = model.get_submodule(layer)
    rows = []
    with torch.no_grad():
        for b, c in enumerate(classes):
            y = model(x[b : b + 1])[0, c]
            row = []
            for k in range(channels(model, layer, x)):

                def zero(m, i, o, k=k):
                    o = o.clone()
                    o[:, k] = 0
                    return o

                handle = module.register_forward_hook(zero)
                row.append((y - model(x[b : b + 1])[0, c]) / y.abs())
                handle.remove()
            rows.append(torch.stack(row))
    return torch.stack(rows)


def channels(model: nn.Module, layer: str, x: torch.Tensor) -> int:
    shapes = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model(x[:1])
    handle.remove()
    return shapes[0][1]


@pytest.mark.parametrize(("net", "layer", "fast"), [("gap", "body", True), ("concat", "layer", False)])
def test_batched_equals_the_naive_loop(gap_net, net, layer, fast):
    torch.manual_seed(6)
    model = gap_net if net == "gap" else ConcatNet().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = naive_weights(model, layer, x, [1, 3])
    # (y - y_k) / |y| from batched against single forward passes: each logit within sum_atol of the nets'
    # longest sums (gap_net's conv2: 72 terms; ConcatNet's GAP: 64), 4 steps deep, divided by |y|
    with torch.no_grad():
        y = model(x)[torch.arange(2), [1, 3]].abs()
    atol = 2 * sum_atol(72, max(1.0, float(model(x).detach().abs().max())), depth=4) / float(y.min())
    for batch_size in (1, 4, 32):
        explainer = gradcam.AblationCAM(model, layer, batch_size=batch_size)
        e = explainer(x, [1, 3])
        # One image copy per pass where the model broadcasts after the layer (learnt once n > 1 rows).
        assert explainer.broadcast is (None if batch_size == 1 else fast)
        torch.testing.assert_close(e.weights, expected, rtol=0, atol=atol)


def test_agrees_with_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        classes = model(x).argmax(dim=1).tolist()  # positive top-1 logits: both divide by the same y
    ours = gradcam.AblationCAM(model, "layer3", batch_size=64)(x, classes)
    assert (ours.scores > 0).all()
    with pgc.AblationCAM(model=model, target_layers=[model.layer3], batch_size=64) as cam:
        cam.activations_and_grads(x)
        activations = cam.activations_and_grads.activations[0]
        targets = [ClassifierOutputTarget(c) for c in classes]
        weights = torch.from_numpy(cam.get_cam_weights(x, model.layer3, targets, activations, None)).float()
    assert weights.abs().max() > 0
    # (y - y_k) / y with the ablated logits y_k from other batches: each logit within the bound of resnet18's
    # layer4 (3x3 convs over 512 channels, ~8 layers after layer3, then GAP and fc), divided by y
    logit_atol = sum_atol(512 * 9, max(1.0, float(ours.scores.abs().max())), depth=10)
    torch.testing.assert_close(ours.weights, weights, rtol=0, atol=2 * logit_atol / float(ours.scores.min()))


def test_token_layers_are_refused(gap_net):
    with pytest.raises(gradcam.MethodError, match="reshape= is not supported"):
        gradcam.AblationCAM(gap_net, "body", reshape=lambda t: t)


def test_a_reused_module_is_refused():
    # torchvision's BasicBlock calls its `relu` twice; ablating both calls is not Ablation-CAM.
    model = scaled_resnet18()
    with pytest.raises(gradcam.MethodError, match=r"'layer4.1.relu' is called 2 times in one forward pass"):
        gradcam.AblationCAM(model, "layer4.1.relu")(torch.randn(1, 3, 64, 64))  # 2x2 (1x1 is an error)
