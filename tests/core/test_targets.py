"""Target semantics: k targets in one pass equal k single calls; callables; output selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam
from gradcam.methods import METHODS, create_explainer

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
    for j in range(3):
        single = explainer(x, targets[:, j], **options)
        torch.testing.assert_close(multi.heatmap[:, j], single.heatmap, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(multi.scores[:, j], single.scores)
        assert torch.equal(multi.classes[:, j], single.classes)


def test_each_image_gets_its_own_target(gap_net):
    x = torch.randn(2, 3, 10, 10)
    both = gradcam.GradCAM(gap_net, "act")(x, [1, 3])
    first = gradcam.GradCAM(gap_net, "act")(x[:1], 1)
    second = gradcam.GradCAM(gap_net, "act")(x[1:], 3)
    torch.testing.assert_close(both.raw, torch.cat([first.raw, second.raw]), rtol=1e-5, atol=1e-6)


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
    torch.testing.assert_close(e.weights[0], grad[0].mean((1, 2)), rtol=1e-5, atol=1e-7)


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
