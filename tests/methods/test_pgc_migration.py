"""Migrating from pytorch-grad-cam: its per-image target lists work unchanged and give its numbers; its
constructor keywords get an error that says what to write here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradcam
from methods.cam_nets import scaled_resnet18
from tolerances import assert_close

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)


def pgc_raw(model: nn.Module, layer: str, x: torch.Tensor, targets: list) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's own hooks and backward: its map before ReLU / resize / normalisation, and the
    magnitude sum_k |alpha_k A_k| that bounds the rounding of its sum."""
    module = model.get_submodule(layer)
    with pgc.GradCAM(model=model, target_layers=[module]) as cam:
        cam(input_tensor=x, targets=targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(x, module, targets, activations, grads, eigen_smooth=False)
        weights = cam.get_cam_weights(x, module, targets, activations, grads)
    magnitude = np.abs(weights[:, :, None, None] * activations).sum(1)
    return torch.from_numpy(raw).float(), torch.from_numpy(magnitude).float()


@pytest.mark.parametrize("kind", [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget])
def test_pgc_classifier_targets_give_pgc_maps(kind):
    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    targets = [kind(3), kind(7)]
    ours = gradcam.GradCAM(model, "layer4")(x, targets)  # each callable sees only its image's row
    raw, magnitude = pgc_raw(model, "layer4", x, targets)
    assert float(raw.amax()) > 0 and ours.classes is None
    assert_close(ours.raw, torch.relu(raw), terms=512, magnitude=float(magnitude.max()), depth=2)
    if kind is ClassifierOutputTarget:  # the same scalars as class indices: the same map, bit for bit
        torch.testing.assert_close(ours.raw, gradcam.GradCAM(model, "layer4")(x, [3, 7]).raw, rtol=0, atol=0)


class TinySegmenter(nn.Module):
    """conv -> ReLU -> conv to 3 class logits at the input's resolution: a (B, 3, H, W) tensor output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.head(self.body(x)), size=x.shape[-2:], mode="bilinear")


def test_pgc_segmentation_targets_give_pgc_maps():
    model = TinySegmenter().eval()
    x = torch.randn(2, 3, 16, 16)
    masks = [np.zeros((16, 16), np.float32), np.ones((16, 16), np.float32)]
    masks[0][4:12, 2:9] = 1
    targets = [SemanticSegmentationTarget(2, masks[0]), SemanticSegmentationTarget(0, masks[1])]
    ours = gradcam.GradCAM(model, "body")(x, targets)
    raw, magnitude = pgc_raw(model, "body", x, targets)
    assert float(raw.amax()) > 0
    assert_close(ours.raw, torch.relu(raw), terms=8, magnitude=float(magnitude.max()), depth=2)


def test_per_image_targets_need_one_callable_per_image(gap_net):
    with pytest.raises(gradcam.TargetError, match=r"lists 1 per-image callables but the batch has 2 images.*"
                                                  r"ClassifierOutputTarget"):  # fmt: skip
        gradcam.GradCAM(gap_net)(torch.randn(2, 3, 8, 8), [ClassifierOutputTarget(1)])
    with pytest.raises(gradcam.TargetError, match=r"per-image target 0 .* must return one scalar from its row"):
        gradcam.GradCAM(gap_net)(torch.randn(1, 3, 8, 8), [lambda row: row[:2]])


def test_perturbation_methods_take_per_image_targets(gap_net):
    x = torch.randn(2, 3, 8, 8)
    by_list = gradcam.ScoreCAM(gap_net, "act", score="logit")(x, [ClassifierOutputTarget(3), ClassifierOutputTarget(1)])
    by_index = gradcam.ScoreCAM(gap_net, "act", score="logit")(x, [3, 1])
    torch.testing.assert_close(by_list.raw, by_index.raw, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [gradcam.GradCAM, gradcam.ScoreCAM, gradcam.LayerCAM, gradcam.EigenCAM])
def test_target_layers_is_an_error_that_says_layer(cls, gap_net):
    expected = rf"{cls.__name__}\(model, target_layers=\.\.\.\) is pytorch-grad-cam's spelling; here pass layer= "
    expected += r".*MultiLayerCAM"
    with pytest.raises(gradcam.LayerError, match=expected):
        cls(gap_net, target_layers=[gap_net.act])
    with pytest.raises(gradcam.LayerError, match=r"pass reshape="):
        gradcam.GradCAM(gap_net, reshape_transform=lambda t: t)
    with pytest.raises(gradcam.LayerError, match=r"MultiLayerCAM\(model, target_layers=\[\.\.\.\]\).*pass layers="):
        gradcam.MultiLayerCAM(gap_net, target_layers=[gap_net.act])
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        cls(gap_net, colour=True)
