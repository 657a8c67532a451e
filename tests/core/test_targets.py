"""Target semantics: k targets in one pass equal k single calls; callables; output selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from gradcam.methods import METHODS, create_explainer
from tolerances import assert_close, cam_magnitude, heatmap_atol, layer_output, sum_atol

LAYER_METHODS = [name for name, spec in METHODS.items() if spec.uses_layer]


@pytest.mark.parametrize("method", list(METHODS))
def test_k_targets_equal_k_single_calls(gap_net, method):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 10, 10)
    targets = torch.tensor([[0, 4, 2], [1, 1, 3], [4, 0, 2]])
    explainer = create_explainer(method, gap_net, "act" if METHODS[method].uses_layer else None)
    options = METHODS[method].call_options
    multi = explainer(x, targets, **options)
    assert multi.heatmap.shape[:2] == (3, 3)
    # k backward passes at once (vmapped) against one at a time: kernels may order the sums differently.
    # gap_net's longest sum is conv2's 8 * 3 * 3 = 72 terms, 4 accumulations forward and 4 backward; the
    # summed terms of a CAM are sum_k |alpha_k||A_k|, of the other maps their largest value
    scale = float(multi.raw.abs().max())
    if multi.weights is not None and multi.weights.shape[-1] == 6:
        scale = max(scale, cam_magnitude(multi.weights, layer_output(gap_net, "act", x)))
    raw_atol = sum_atol(72, scale, depth=8)
    normalised = multi.heatmap.dim() == multi.raw.dim()  # CAMs: upsampled and min-max normalised
    heat_atol = heatmap_atol(multi.raw, (10, 10), raw_atol) if normalised else raw_atol
    for j in range(3):
        single = explainer(x, targets[:, j], **options)
        torch.testing.assert_close(multi.raw[:, j], single.raw, rtol=0, atol=raw_atol)
        torch.testing.assert_close(multi.heatmap[:, j], single.heatmap, rtol=0, atol=heat_atol)
        torch.testing.assert_close(multi.scores[:, j], single.scores)
        assert torch.equal(multi.classes[:, j], single.classes)


def test_each_image_gets_its_own_target(gap_net):
    x = torch.randn(2, 3, 10, 10)
    both = gradcam.GradCAM(gap_net, "act")(x, [1, 3])
    first = gradcam.GradCAM(gap_net, "act")(x[:1], 1)
    second = gradcam.GradCAM(gap_net, "act")(x[1:], 3)
    # a batch of 2 against batches of 1: gap_net's longest sum is 72 terms, 4 forward + 4 backward
    raw_atol = sum_atol(72, cam_magnitude(both.weights, layer_output(gap_net, "act", x)), depth=8)
    torch.testing.assert_close(both.raw, torch.cat([first.raw, second.raw]), rtol=0, atol=raw_atol)


def test_none_target_is_top1(gap_net):
    x = torch.randn(4, 3, 10, 10)
    e = gradcam.GradCAM(gap_net, "act")(x)
    assert torch.equal(e.classes, gap_net(x).argmax(1))


def test_callable_target_equals_class_target(gap_net):
    x = torch.randn(2, 3, 10, 10)
    by_index = gradcam.GradCAM(gap_net, "act")(x, 2)
    by_callable = gradcam.GradCAM(gap_net, "act")(x, lambda out: out[:, 2])
    torch.testing.assert_close(by_callable.raw, by_index.raw)
    assert by_callable.classes is None


def test_callable_probability_target_differs_from_logit(gap_net):
    # d softmax_c / dA = p_c (dy_c/dA - sum_j p_j dy_j/dA): checked against autograd on the same scalar.
    x = torch.randn(1, 3, 10, 10)
    e = gradcam.GradCAM(gap_net, "act")(x, lambda out: out.softmax(1)[:, 2])
    features = torch.relu(gap_net.body(x))
    leaf = features.detach().requires_grad_(True)
    prob = gap_net.fc(leaf.mean((2, 3))).softmax(1)[0, 2]
    (grad,) = torch.autograd.grad(prob, leaf)
    # the same A; the softmax's gradient sums 5 classes and the fc's backward 5 terms, then alpha 25 cells
    assert_close(e.weights[0], grad[0].mean((1, 2)), terms=25, magnitude=float(grad.abs().mean((2, 3)).max()), depth=3)


class DictNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"scores": self.net(x), "aux": torch.zeros(1)}


class TupleNet(DictNet):
    def forward(self, x):
        return (torch.zeros(1), self.net(x))


def test_output_selector_for_dict_and_tuple(gap_net):
    x = torch.randn(2, 3, 8, 8)
    reference = gradcam.GradCAM(gap_net, "act")(x, 1).raw
    via_key = gradcam.GradCAM(DictNet(gap_net), "net.act", output="scores")(x, 1).raw
    via_index = gradcam.GradCAM(TupleNet(gap_net), "net.act", output=1)(x, 1).raw
    torch.testing.assert_close(via_key, reference)
    torch.testing.assert_close(via_index, reference)


def test_topk_target_explains_the_k_best_classes_from_one_pass(gap_net):
    from gradcam.targets import TopK

    x = torch.randn(3, 3, 10, 10)
    logits = gap_net(x).detach()
    e = gradcam.GradCAM(gap_net, "act")(x, TopK(3))
    expected = logits.topk(3, dim=1).indices
    assert torch.equal(e.classes, expected)
    torch.testing.assert_close(e.logits, logits)
    explicit = gradcam.GradCAM(gap_net, "act")(x, expected)
    torch.testing.assert_close(e.heatmap, explicit.heatmap)
    with pytest.raises(gradcam.TargetError, match=r"TopK\(6\) asks for more classes than the model's 5"):
        gradcam.GradCAM(gap_net, "act")(x, TopK(6))
