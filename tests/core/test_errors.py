"""Bad input gives a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcam


def test_wrong_rank(gap_net):
    with pytest.raises(gradcam.InputError, match=r"4-D tensor \(B, C, H, W\); got shape \(3, 8, 8\).*unsqueeze"):
        gradcam.GradCAM(gap_net)(torch.randn(3, 8, 8))


def test_wrong_channel_count(gap_net):
    message = r"x has 1 channels but the model's first convolution 'body.0' expects 3"
    with pytest.raises(gradcam.InputError, match=message):
        gradcam.GradCAM(gap_net)(torch.randn(2, 1, 8, 8))


def test_not_a_tensor_and_integer_and_nan(gap_net):
    with pytest.raises(gradcam.InputError, match="x must be a torch.Tensor"):
        gradcam.GradCAM(gap_net)([[1.0]])
    with pytest.raises(gradcam.InputError, match="floating-point"):
        gradcam.GradCAM(gap_net)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    x = torch.randn(1, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(gradcam.InputError, match="NaN or infinite"):
        gradcam.GradCAM(gap_net)(x)


def test_unknown_layer_lists_close_matches(gap_net):
    with pytest.raises(gradcam.LayerError, match=r"layer 'bdy.3' not found in GapNet; close matches: 'body.3'"):
        gradcam.GradCAM(gap_net, "bdy.3")


def test_layer_without_spatial_output(gap_net):
    with pytest.raises(gradcam.LayerError, match=r"layer 'fc' outputs shape \(1, 5\); a class activation map needs"):
        gradcam.GradCAM(gap_net, "fc")(torch.randn(1, 3, 8, 8))


def test_foreign_module_as_layer(gap_net):
    with pytest.raises(gradcam.LayerError, match="not a submodule of GapNet"):
        gradcam.GradCAM(gap_net, nn.Conv2d(1, 1, 1))


def test_class_out_of_range(gap_net):
    with pytest.raises(gradcam.TargetError, match=r"target class 5 is out of range for 5 classes \(valid: 0..4\)"):
        gradcam.GradCAM(gap_net)(torch.randn(2, 3, 8, 8), 5)
    with pytest.raises(gradcam.TargetError, match="target class -1 is out of range"):
        gradcam.GradCAM(gap_net)(torch.randn(2, 3, 8, 8), [0, -1])


def test_targets_of_wrong_length(gap_net):
    with pytest.raises(gradcam.TargetError, match="target has 3 entries but the batch has 2 images"):
        gradcam.GradCAM(gap_net)(torch.randn(2, 3, 8, 8), [0, 1, 2])


def test_float_targets(gap_net):
    with pytest.raises(gradcam.TargetError, match="must be integers"):
        gradcam.GradCAM(gap_net)(torch.randn(2, 3, 8, 8), torch.tensor([0.0, 1.0]))


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        features = self.conv(x)
        return {"scores": features.mean((2, 3)), "embedding": features.flatten(1)}


class TupleNet(DictNet):
    def forward(self, x):
        return tuple(super().forward(x).values())


def test_dict_output_without_selector():
    with pytest.raises(gradcam.TargetError, match=r"a dict with keys \['scores', 'embedding'\]; pass output=KEY"):
        gradcam.GradCAM(DictNet(), "conv")(torch.randn(1, 3, 8, 8))


def test_tuple_output_without_selector():
    with pytest.raises(gradcam.TargetError, match=r"a tuple of 2 items \(\[0\] \(1, 4\), \[1\] \(1, 144\)\)"):
        gradcam.GradCAM(TupleNet(), "conv")(torch.randn(1, 3, 8, 8))


def test_missing_output_key():
    with pytest.raises(gradcam.TargetError, match=r"output='logits' is not in the model output; a dict with keys"):
        gradcam.GradCAM(DictNet(), "conv", output="logits")(torch.randn(1, 3, 8, 8))


def test_callable_target_of_wrong_shape(gap_net):
    with pytest.raises(gradcam.TargetError, match=r"must return \(B,\) or \(B, k\) scalars with B=2; got shape \(\)"):
        gradcam.GradCAM(gap_net)(torch.randn(2, 3, 8, 8), lambda out: out.sum())


def test_unknown_method():
    with pytest.raises(ValueError, match=r"unknown method 'grad-cam'; available: gradcam, counterfactual"):
        gradcam.create_explainer("grad-cam", nn.Conv2d(1, 1, 1))


def test_torchscript_models_get_a_clear_error_for_layer_methods_and_work_for_guided(gap_net, tmp_path):
    scripted = torch.jit.trace(gap_net, torch.randn(1, 3, 8, 8))
    with pytest.raises(gradcam.LayerError, match="TorchScript modules do not run Python hooks; save the model with"):
        gradcam.GradCAM(scripted)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        gradcam.GuidedBackprop(scripted)(x, [1, 2]).heatmap, gradcam.GuidedBackprop(gap_net)(x, [1, 2]).heatmap
    )
