"""The automatic layer choice (gradcam.layers.auto_layer): one function for the API, `gradcam layers` and
`gradcam explain`; token blocks re-indexed to their grid, dense models' backbones, detectors' adapters."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchvision
from torch import nn

import gradcam
from gradcam.capture import model_guard
from gradcam.cli import main
from gradcam.layers import auto_layer, in_attention
from gradcam.reshape import TokenGrid
from gradcam.targets import DetectorAdapter, SegmentationScore
from models.zoo_support import assert_raw_matches, reference_raw


def tiny_tv_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=5).eval()  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)  # torchvision initialises the head to zero
    return vit


def choose(model: nn.Module, x: torch.Tensor):
    with model_guard(model):
        return auto_layer(model, x)


def test_torchvision_vit_gets_the_last_block_input_on_its_grid_and_the_float64_map():
    vit = tiny_tv_vit().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    choice = choose(vit, x)
    assert (choice.name, choice.reshape, choice.rule) == (
        "encoder.layers.encoder_layer_1.ln_1", TokenGrid("tokens", (4, 4), 1), "transformer blocks")
    e = gradcam.GradCAM(vit)(x, [1, 3])  # no layer, no reshape
    assert e.layer == choice.name and e.raw.shape == (2, 4, 4)
    signed, magnitude = reference_raw(vit, x, choice.name, lambda out: out[[0, 1], [1, 3]], "tokens", (4, 4), 1)
    assert float(signed.amax()) > 0
    assert_raw_matches(e.raw, torch.relu(signed), magnitude, 16)


def test_timm_vit_never_picks_a_layer_inside_attention():
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    model = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, qk_norm=True,
                                       reg_tokens=3, num_classes=3).eval()  # fmt: skip
    choice = choose(model, torch.randn(1, 3, 32, 32))
    assert choice.name == "blocks.1.norm1" and choice.reshape == TokenGrid("tokens", (4, 4), 4)
    assert in_attention("blocks.1.attn.k_norm", model) and not in_attention(choice.name, model)
    assert not any(info.candidate for info in choice.infos if ".attn." in info.name)


def test_hf_vit_and_swin_choose_their_last_block():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        num_labels=3)).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    choice = choose(vit, x)
    assert choice.name.endswith("layers.1.layernorm_before") and choice.reshape == TokenGrid("tokens", (4, 4), 1)
    assert "patch_embeddings" not in gradcam.GradCAM(vit)(x).layer
    swin = transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2, num_labels=3)).eval()
    choice = choose(swin, x)  # used to fail on relative_position_bias
    assert choice.name == "swin.encoder.layers.1.blocks.0.layernorm_before"
    assert choice.reshape == TokenGrid("tokens", (4, 4), 0)  # the last stage: 8x8 patches merged once


def test_segmentation_models_explain_the_backbone_not_the_head():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False).eval().double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    choice = choose(model, x)
    assert choice.name.startswith("backbone.") and choice.rule == "dense model backbone"
    target = SegmentationScore(1, mask=torch.ones(64, 64))
    e = gradcam.GradCAM(model)(x, target)
    assert e.layer == choice.name
    signed, magnitude = reference_raw(model, x, choice.name, lambda out: out["out"][:, 1].sum((-2, -1)))
    assert float(signed.abs().amax()) > 0
    assert_raw_matches(e.raw, torch.relu(signed), magnitude, e.weights.shape[-1])


def test_a_bare_detector_is_told_to_use_the_adapter_and_the_adapter_gives_its_default():
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(gradcam.InputError, match=r"torchvision detector.*DetectorAdapter\(model\).*DetectionScore"):
        gradcam.GradCAM(detector)(x)
    adapter = DetectorAdapter(detector)
    choice = auto_layer(adapter, x)  # no forward pass needed
    assert (choice.name, choice.reshape) == (adapter.default_layer, adapter.crop_padding)


class Unpooled(nn.Module):
    """conv -> flatten: no pooling, no (B, K) output, no dense output -- no rule knows it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2)


def test_an_unrecognised_model_is_logged_at_warning_once(caplog):
    model = Unpooled().eval()
    x = torch.randn(2, 3, 6, 6)
    cam = gradcam.GradCAM(model)
    with caplog.at_level(logging.WARNING, logger="gradcam"):
        e = cam(x, lambda out: out.sum((1, 2)))
        gradcam.GradCAM(model)(x, lambda out: out.sum((1, 2)))
    warnings = [r for r in caplog.records if "no rule recognises Unpooled" in r.getMessage()]
    assert len(warnings) == 1 and "'conv'" in warnings[0].getMessage()
    assert e.layer == "conv"


def test_recognised_models_are_not_warned_about(gap_net, caplog):
    with caplog.at_level(logging.WARNING, logger="gradcam"):
        gradcam.GradCAM(gap_net)(torch.randn(1, 3, 8, 8))
    assert not caplog.records


FACTORY = """
import timm.models.vision_transformer as v

def build():
    import torch
    torch.manual_seed(0)
    return v.VisionTransformer(img_size=224, patch_size=32, embed_dim=16, depth=2, num_heads=2, num_classes=1000)
"""


def test_cli_layers_and_explain_use_the_same_choice_as_the_api(tmp_path, capsys):
    pytest.importorskip("timm")
    (tmp_path / "tinyvit.py").write_text(FACTORY)
    spec = f"{tmp_path / 'tinyvit.py'}:build"
    assert main(["layers", spec]) == 0
    out = capsys.readouterr().out
    marked = [line.split()[0] for line in out.splitlines() if "<- automatic choice" in line]
    assert marked == ["blocks.1.norm1"] and "gradcam explain uses 'blocks.1.norm1'" in out
    assert main(["explain", "--model", spec, "--samples", "--out", str(tmp_path / "out"), "--quiet", "--workers", "0",
                 "--method", "gradcam"]) == 0  # fmt: skip
    capsys.readouterr()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["layer"] == "blocks.1.norm1"
