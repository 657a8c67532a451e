"""Layer lookup: by name, by module, automatically; close-match suggestions."""

from __future__ import annotations

import pytest
import torch
import torchvision

import gradcam
from gradcam.layers import choose_layer, probe_layers

AUTO_CHOICES = {
    "vgg16": "features.29",
    "resnet50": "layer4",
    "densenet121": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
}


@pytest.mark.parametrize(("arch", "expected"), AUTO_CHOICES.items())
def test_automatic_layer_on_torchvision(arch, expected):
    model = getattr(torchvision.models, arch)(weights=None).eval()
    infos = probe_layers(model, torch.randn(1, 3, 64, 64))
    assert choose_layer(infos, model) == expected
    chosen = next(info for info in infos if info.name == expected)
    assert len(chosen.shape) == 4 and chosen.shape[2] * chosen.shape[3] > 1


def test_automatic_layer_is_reported(gap_net, caplog):
    cam = gradcam.GradCAM(gap_net)
    assert cam.layer_name is None
    with caplog.at_level("INFO", logger="gradcam"):
        e = cam(torch.randn(1, 3, 8, 8))
    assert e.layer == cam.layer_name == "act"
    assert "act" in caplog.text


def test_layer_by_module_equals_by_name(gap_net):
    x = torch.randn(1, 3, 8, 8)
    by_name = gradcam.GradCAM(gap_net, "body.3")(x, 0)
    by_module = gradcam.GradCAM(gap_net, gap_net.body[3])(x, 0)
    assert by_module.layer == "body.3"
    torch.testing.assert_close(by_name.raw, by_module.raw)
