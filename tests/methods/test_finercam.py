"""Finer-CAM: the difference target by hand, the compared classes, agreement with pytorch-grad-cam."""

from __future__ import annotations

import pytest
import torch

import gradcam
from gradcam.methods.finercam import FinerTarget
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from methods.pgc_reference import layer_terms
from tolerances import cam_magnitude, gamma, layer_output, sum_atol


def test_one_compared_class_gives_the_difference_of_grad_cams():
    # GridNet on grid_input: y0 = 10, y1 = 5; Grad-CAM alphas are (3/4, 0) for class 0 and (1/2, 0) for class 1.
    # One compared class has weight 1 (a softmax of one), so the target is y0 - alpha y1 and, Grad-CAM being
    # linear in the target, alpha = (3/4 - 0.5 * 1/2, 0) = (1/2, 0).
    e = gradcam.FinerCAM(GridNet(), "features", alpha=0.5, comparison=(1,))(grid_input(), 0)
    torch.testing.assert_close(e.weights, torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(e.scores, torch.tensor([10.0 - 0.5 * 5.0]))
    assert e.classes.tolist() == [0]
    plain = gradcam.FinerCAM(GridNet(), "features", alpha=0.0, comparison=(1,))(grid_input(), 0)
    torch.testing.assert_close(plain.raw, gradcam.GradCAM(GridNet(), "features")(grid_input(), 0).raw)


class ChannelMeans(torch.nn.Module):
    """x (B, 5, H, W) -> layer = x (1x1 identity conv) -> logits = channel means: the logits are chosen by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(5, 5, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(5).view(5, 5, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def test_compared_classes_are_the_closest_logits_and_weights_are_renormalised():
    logits = torch.tensor([5.0, 1.0, 4.5, 9.0, 5.2])
    x = logits.view(1, 5, 1, 1).expand(1, 5, 2, 2).clone()
    # class 0 (5.0): distances 4, 0.5, 4, 0.2 -> ranks 1, 2 are classes 4 (5.2) and 2 (4.5)
    e = gradcam.FinerCAM(ChannelMeans(), "features", comparison=(1, 2))(x, 0)
    w = torch.softmax(torch.tensor([5.2, 4.5]), 0)
    torch.testing.assert_close(e.scores, (w[0] * (5.0 - 5.2) + w[1] * (5.0 - 4.5)).view(1))
    # pytorch-grad-cam's form sum p_j (y_c - y_j) / sum p_j with p the softmax over all classes: the same value
    p = torch.softmax(logits, 0)
    torch.testing.assert_close(e.scores, ((p[4] * -0.2 + p[2] * 0.5) / (p[4] + p[2])).view(1))
    target = FinerTarget(torch.tensor([[0]]), torch.tensor([[[4, 2]]]), 1.0)
    torch.testing.assert_close(target(logits[None]), e.scores.view(1, 1))


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_agrees_with_pytorch_grad_cam(layer):
    pgc = pytest.importorskip("pytorch_grad_cam")
    # pytorch-grad-cam divides by (sum_j p_j + 1e-9): with a confident model (scaled_resnet18(20): sum_j p_j ~ 3e-5)
    # that eps moves its maps by ~1e-4 relative; with the unscaled classifier (sum_j p_j ~ 0.02) it is negligible
    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = gradcam.FinerCAM(model, layer)(x)
    module = model.get_submodule(layer)
    with pgc.FinerCAM(model, [module]) as cam:
        cam(x)  # its own targets (the top class against ranks 1-3), hooks and backward pass
        a = cam.base_cam.activations_and_grads.activations[0].numpy()
        g = cam.base_cam.activations_and_grads.gradients[0].numpy()
        raw = torch.from_numpy(cam.base_cam.get_cam_image(x, module, None, a, g, eigen_smooth=False)).float()
    assert torch.equal(ours.classes, model(x).argmax(1))
    assert float(raw.max()) > 0
    # Both explain y_c - sum_j w_j y_j over the same 3 compared classes; the weights w_j are rounded differently
    # (a softmax over 3: a few roundings each, gamma(8)) and pytorch-grad-cam's 1e-9 shifts them by 1e-9 / sum p_j.
    # The gradient is linear in the target: its size is that of |g_c| + sum_j w_j |g_j| (per-class autograd),
    # and its error that relative to it, through the GAP over u*v cells and the K-channel sum.
    with torch.no_grad():
        logits = model(x)
        p = torch.softmax(logits.double(), 1)
    compared = (logits - logits.gather(1, ours.classes[:, None])).abs().argsort(1)[:, 1:4]
    weights = torch.softmax(logits.gather(1, compared).double(), 1)
    a, size = layer_terms(model, layer, x, ours.classes.tolist())
    size = size.abs().double()
    for j in range(3):
        size += weights[:, j, None, None, None] * layer_terms(model, layer, x, compared[:, j].tolist())[1].abs()
    magnitude = cam_magnitude(size.mean((2, 3)), a)
    shift = gamma(8) + 1e-9 / float(p.gather(1, compared).sum(1).min())
    channels, cells = a.shape[1], a.shape[2] * a.shape[3]
    atol = sum_atol(max(channels, cells), magnitude, depth=2) + shift * magnitude
    torch.testing.assert_close(ours.raw, torch.relu(raw), rtol=0, atol=atol)


def test_k_targets_and_errors(gap_net):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8)
    explainer = gradcam.FinerCAM(gap_net, "act")
    both = explainer(x, torch.tensor([[0, 3], [4, 1]]))
    assert both.heatmap.shape == (2, 2, 8, 8) and both.classes.tolist() == [[0, 3], [4, 1]]
    # the same computation in a batch of 2 targets against 1 (kernels may block them differently): on 'act'
    # g = sum_classes v_i W_i / 16 (target weights |v_i| <= 1), summed over 16 cells, then over 6 channels
    alpha_size = gap_net.fc.weight.detach().abs().sum(0).expand(2, -1) / 16
    magnitude = cam_magnitude(alpha_size, layer_output(gap_net, "act", x))
    atol = sum_atol(16, magnitude, depth=3)
    torch.testing.assert_close(both.raw[:, 1], explainer(x, [3, 1]).raw, rtol=0, atol=atol)
    with pytest.raises(gradcam.TargetError, match="class indices"):
        explainer(x, lambda out: out[:, 0])
    with pytest.raises(gradcam.TargetError, match="classes to compare with"):
        gradcam.FinerCAM(gap_net, "act", comparison=(7,))(x)
    with pytest.raises(ValueError, match="comparison must be ranks"):
        gradcam.FinerCAM(gap_net, "act", comparison=(0,))
