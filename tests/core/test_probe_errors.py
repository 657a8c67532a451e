"""Errors instead of silent garbage: 1x1 layers, maps that cannot be anything but zero, targets made under
inference mode or of another integer dtype, and every failing forward pass as an InputError with the fix."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

import gradcam
from gradcam.reshape import TokenGrid
from gradcam.targets import KeywordImageInput


def test_a_1x1_layer_is_an_error_that_names_the_automatic_choice(gap_net):
    with pytest.raises(gradcam.LayerError, match=r"layer 'pool' outputs a 1x1 map \(2, 6, 1, 1\).*here 'act'"):
        gradcam.GradCAM(gap_net, "pool")(torch.randn(2, 3, 8, 8))
    resnet = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    with pytest.raises(gradcam.LayerError, match=r"layer 'avgpool' outputs a 1x1 map.*here 'layer4'"):
        gradcam.GradCAM(resnet, "avgpool")(torch.randn(1, 3, 64, 64))  # layer4 is 2x2 (at 32x32 it is 1x1: layer3)


def test_a_zero_gradient_layer_is_logged_with_the_reason(caplog):
    # ViT's final norm is per token and the head reads the class token only: the patch tokens get no gradient.
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=5).eval()  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="gradcam"):
        e = gradcam.GradCAM(vit, "encoder.ln", reshape=TokenGrid(prefix=1))(x, [0, 1])
    assert bool((e.raw == 0).all())
    message = next(r.getMessage() for r in caplog.records if "identically zero" in r.getMessage())
    assert "layer 'encoder.ln'" in message and "image(s) [0, 1]" in message and "class token" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gradcam"):
        e = gradcam.GradCAM(vit)(x, [0, 1])  # the automatic choice: the last block's input
    assert not caplog.records and bool((e.raw.flatten(1).amax(1) > 0).all())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("shape", [(2,), (2, 1)])
def test_targets_made_under_inference_mode_or_of_another_integer_dtype_are_accepted(gap_net, dtype, shape):
    x = torch.randn(2, 3, 8, 8)
    expected = gradcam.GradCAM(gap_net)(x, [[3], [1]])
    with torch.inference_mode():
        target = torch.tensor([3, 1], dtype=dtype).reshape(shape)
    e = gradcam.GradCAM(gap_net)(x, target)
    assert e.classes.reshape(-1).tolist() == [3, 1]
    torch.testing.assert_close(e.raw.reshape(expected.raw.shape), expected.raw, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_a_target_on_another_device_is_accepted(gap_net):  # pragma: no cover - GPU machines
    x = torch.randn(2, 3, 8, 8)
    e = gradcam.GradCAM(gap_net)(x, torch.tensor([3, 1], device="cuda"))
    assert e.classes.tolist() == [3, 1]


def test_a_dtype_mismatch_in_the_probe_is_an_input_error_with_the_fix(gap_net):
    with pytest.raises(gradcam.InputError, match=r"in the layer probe.*Input type \(double\) and bias type \(float\).*"
                                                 r"pass x.to\(torch.float32\)"):  # fmt: skip
        gradcam.GradCAM(gap_net)(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(gradcam.InputError, match=r"pass x.to\(torch.float32\)"):  # the explained pass too
        gradcam.GradCAM(gap_net, "act")(torch.randn(1, 3, 8, 8, dtype=torch.float64))


def test_a_model_on_meta_is_an_input_error_with_the_fix(gap_net):
    with pytest.raises(gradcam.InputError, match=r"'meta' device.*model.to_empty\(device='cpu'\)"):
        gradcam.GradCAM(gap_net.to("meta"))(torch.randn(1, 3, 8, 8))


def test_clip_without_its_text_inputs_is_told_how_to_call_it():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=8)).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(gradcam.InputError, match=r"first argument is 'input_ids', not the image.*KeywordImageInput"):
        gradcam.GradCAM(clip)(x)
    with pytest.raises(gradcam.InputError, match=r"You have to specify input_ids.*forward_kwargs=\{'input_ids'"):
        gradcam.GradCAM(KeywordImageInput(clip))(x)
    tower = KeywordImageInput(clip, method="get_image_features")
    e = gradcam.GradCAM(tower)(x, lambda out: out.pooler_output.sum(-1))
    assert e.layer == "model.vision_model.encoder.layers.1.layer_norm1"


def test_any_exception_of_the_forward_becomes_an_input_error_keeping_the_cause():
    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] < 16:
                raise ValueError("images must be at least 16 pixels wide")
            return self.conv(x).mean((2, 3))

    with pytest.raises(gradcam.InputError, match="ValueError: images must be at least 16 pixels wide") as info:
        gradcam.GradCAM(Picky())(torch.randn(1, 3, 8, 8))
    assert isinstance(info.value.__cause__, ValueError)


def test_ablation_cam_refuses_an_automatic_token_layer():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=5).eval()  # fmt: skip
    with pytest.raises(gradcam.MethodError, match=r"token layer 'encoder.layers.encoder_layer_0.ln_1'; Ablation-CAM"):
        gradcam.AblationCAM(vit)(torch.randn(1, 3, 32, 32))
