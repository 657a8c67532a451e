"""End to end on tiny random configs of real classes: transformers (ResNet, ViT, DeiT, CLIP) and torchvision
detection / segmentation. Nothing is downloaded."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
from torchvision.ops import box_iou

import gradcam
from gradcam.reshape import TokenGrid, auto_reshape, token_layer
from gradcam.targets import (
    ClassScore,
    DetectionScore,
    DetectorAdapter,
    EmbeddingSimilarity,
    KeywordImageInput,
    SegmentationScore,
    embed,
    text_embedding,
)
from targets.targets_support import (
    assert_weights_close,
    autograd_reference,
    one_thread,  # noqa: F401  (autouse fixture)
    tiny_clip,
)
from tolerances import cam_magnitude, layer_output, sum_atol


def transformers_or_skip():
    return pytest.importorskip("transformers")


def tiny_vit(cls_name: str = "ViTForImageClassification", config_name: str = "ViTConfig", **extra):
    transformers = transformers_or_skip()
    config = getattr(transformers, config_name)(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=4, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config).eval()


def tiny_detector() -> nn.Module:
    torch.manual_seed(0)
    return fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0, min_size=64, max_size=64,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=10,
    ).eval()  # fmt: skip


def tiny_segmenter() -> nn.Module:
    torch.manual_seed(0)
    return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3, aux_loss=False).eval()


# ---------------------------------------------------------------------------------------------- Hugging Face


def test_hf_resnet_model_output():
    transformers = transformers_or_skip()
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    model = transformers.ResNetForImageClassification(config).eval()
    x = torch.randn(2, 3, 32, 32)
    cam = gradcam.GradCAM(model)
    e = cam(x, ClassScore([2, 0], kind="sigmoid"))
    ref = autograd_reference(model, e.layer, x, lambda out: out.logits[torch.arange(2), [2, 0]].sigmoid())
    assert_weights_close(e.weights, ref)  # the same backward of one target per image: sigmoid, head, cells
    torch.testing.assert_close(e.scores, ref.scores)
    torch.testing.assert_close(cam(x, [2, 0]).raw, gradcam.GradCAM(model, e.layer, output="logits")(x, [2, 0]).raw)
    with pytest.raises(gradcam.TargetError, match=r"output='pooler' is not in the model output; .* keys \['logits'\]"):
        gradcam.GradCAM(model, e.layer, output="pooler")(x, 1)
    as_tuple = gradcam.GradCAM(model, e.layer, output=0)(x, [2, 0], forward_kwargs={"return_dict": False})
    torch.testing.assert_close(as_tuple.raw, cam(x, [2, 0]).raw)
    with pytest.raises(gradcam.TargetError, match=r"output=3 is not in the model output; a tuple of 1 items"):
        gradcam.GradCAM(model, e.layer, output=3)(x, 1, forward_kwargs={"return_dict": False})


def test_hf_deit_output_selection_and_two_prefix_tokens():
    model = tiny_vit("DeiTForImageClassificationWithTeacher", "DeiTConfig")
    x = torch.randn(2, 3, 32, 32)
    layer = token_layer(model)
    assert layer == "deit.layers.1.layernorm_before"
    reshape = auto_reshape(model, layer, x)
    assert reshape == TokenGrid("tokens", (4, 4), 2)  # class + distillation token
    by_key = gradcam.GradCAM(model, layer, output="cls_logits", reshape=reshape)(x, [1, 3])
    by_index = gradcam.GradCAM(model, layer, output=1, reshape=reshape)(x, [1, 3])
    torch.testing.assert_close(by_key.raw, by_index.raw)
    ref = autograd_reference(model, layer, x, lambda out: out.cls_logits[torch.arange(2), [1, 3]], reshape=reshape)
    assert_weights_close(by_key.weights, ref)  # the same backward of one target per image
    with pytest.raises(gradcam.TargetError, match=r"keys \['logits', 'cls_logits', 'distillation_logits'\]"):
        gradcam.GradCAM(model, layer, output="teacher", reshape=reshape)(x, 1)


def test_hf_vit_batches_k_targets_and_non_square_inputs():
    model = tiny_vit()
    x = torch.randn(3, 3, 32, 32)
    layer = token_layer(model)
    reshape = auto_reshape(model, layer, x)
    assert reshape == TokenGrid("tokens", (4, 4), 1)
    cam = gradcam.GradCAM(model, layer, reshape=reshape)
    targets = torch.tensor([[0, 3], [2, 2], [1, 0]])
    multi = cam(x, ClassScore(targets, kind="probability"))
    ref = autograd_reference(model, layer, x, lambda out: out.logits.softmax(1).gather(1, targets), reshape=reshape)
    # k targets: a vmapped backward through the rest of the ViT, whose longest sum is the MLP's 32 terms, and
    # about 12 accumulations (attention, MLP, layer norms, classifier, softmax) after the explained layer
    assert_weights_close(multi.weights, ref, terms=32, depth=12)
    activations = reshape(layer_output(model, layer, x))
    raw_atol = sum_atol(32, cam_magnitude(multi.weights, activations), depth=12)
    for b in range(3):
        single = cam(x[b : b + 1], ClassScore(int(targets[b, 1]), kind="probability"))
        torch.testing.assert_close(single.raw[0], multi.raw[b, 1], rtol=0, atol=raw_atol)
    wide = torch.randn(2, 3, 32, 48)
    kwargs = {"interpolate_pos_encoding": True}
    wide_reshape = auto_reshape(model, layer, wide, kwargs)
    assert wide_reshape == TokenGrid("tokens", (4, 6), 1)
    e = gradcam.GradCAM(model, layer, reshape=wide_reshape)(wide, [0, 1], forward_kwargs=kwargs)
    ref = autograd_reference(
        model, layer, wide, lambda out: out.logits[torch.arange(2), [0, 1]], kwargs, reshape=wide_reshape
    )
    assert e.raw.shape == (2, 4, 6)
    assert_weights_close(e.weights, ref)


def test_hf_clip_text_and_image_similarity():
    clip = tiny_clip()
    x = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[0, 5, 9, 1], [0, 7, 3, 1], [0, 2, 2, 1]])  # 3 prompts
    model = KeywordImageInput(clip)
    layer = token_layer(model)
    assert layer == "model.vision_model.encoder.layers.1.layer_norm1"
    kwargs = {"input_ids": ids}
    reshape = auto_reshape(model, layer, x, kwargs)
    assert reshape == TokenGrid("tokens", (4, 4), 1)
    cam = gradcam.GradCAM(model, layer, reshape=reshape)
    by_logits = cam(x, ClassScore([0, 2], select="logits_per_image"), forward_kwargs=kwargs)
    text = text_embedding(clip, ids)
    by_cosine = cam(x, EmbeddingSimilarity(text), forward_kwargs=kwargs)
    assert by_cosine.scores.shape == (2, 3)
    # logits_per_image = exp(logit_scale) * cos(image, text): the same map, scaled weights
    scale = float(clip.logit_scale.detach().exp())
    torch.testing.assert_close(by_logits.scores, scale * by_cosine.scores[torch.arange(2), [0, 2]])
    ref = autograd_reference(
        model, layer, x, lambda out: out.logits_per_image[torch.arange(2), [0, 2]], kwargs, reshape=reshape
    )
    assert_weights_close(by_logits.weights, ref)
    # the cosine target normalises the two embeddings itself (norms of 8 terms, a dot product, a quotient) and
    # runs 3 targets vmapped through the vision tower's rest (longest sum: the MLP's 32 terms, ~12 steps)
    assert_weights_close(scale * by_cosine.weights[torch.arange(2), [0, 2]], ref, terms=32, depth=15)
    # the image tower alone (get_image_features -> pooler_output): the same cosine, no text forward
    features = KeywordImageInput(clip, method="get_image_features")
    tower = gradcam.GradCAM(features, layer, reshape=reshape)(x, EmbeddingSimilarity(text))
    cosine = autograd_reference(
        model, layer, x, lambda out: out.logits_per_image / clip.logit_scale.exp(), kwargs, reshape=reshape
    )
    assert_weights_close(tower.weights, cosine, terms=32, depth=15)
    assert_weights_close(by_cosine.weights, cosine, terms=32, depth=15)
    # image-image: similarity with another image's embedding; an image with itself scores 1
    other = torch.randn(2, 3, 32, 32)
    reference = embed(features, other)
    self_sim = gradcam.GradCAM(features, layer, reshape=reshape)(other, EmbeddingSimilarity(reference, per_image=True))
    torch.testing.assert_close(self_sim.scores, torch.ones(2))


def test_missing_hf_extra_names_it(monkeypatch):
    class TextStub(nn.Module):
        def get_text_features(self, **kwargs):
            raise AssertionError("not reached")

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "gradcam\[hf\]"'):
        text_embedding(TextStub(), ["a photo of a cat"], tokenizer="openai/clip-vit-base-patch32")


# ---------------------------------------------------------------------------------------------- torchvision


def test_torchvision_detection_by_index_and_by_box():
    adapter = DetectorAdapter(tiny_detector())
    x = torch.rand(2, 3, 48, 64)  # padded to 64 x 64 inside the detector
    with torch.no_grad():
        detections = adapter(x)
    assert adapter.covered == (0.75, 1.0)
    layer = "detector.backbone.body.6"  # stride 8: 8 x 8 cells, 6 rows of them cover the image
    cam = gradcam.GradCAM(adapter, layer, reshape=adapter.crop_padding)
    e = cam(x, DetectionScore(index=[0, 1]))
    assert e.raw.shape == (2, 6, 8)
    torch.testing.assert_close(e.scores, torch.stack([detections[0]["scores"][0], detections[1]["scores"][1]]))
    ref = autograd_reference(
        adapter, layer, x, lambda out: torch.stack([out[0]["scores"][0], out[1]["scores"][1]]),
        reshape=adapter.crop_padding,
    )  # fmt: skip
    assert_weights_close(e.weights, ref)  # the same backward of one target per image
    references = torch.stack([d["boxes"][2] for d in detections]) + torch.tensor([1.0, 0.5, 2.0, 1.0])
    boxed = cam(x, DetectionScore(box=references, box_weight=1.0))

    def manual(out):
        rows = []
        for b in range(2):
            ious = box_iou(out[b]["boxes"].detach(), references[b, None])[:, 0]
            d = int(ious.argmax())
            rows.append(out[b]["scores"][d] + box_iou(out[b]["boxes"][d, None], references[b, None])[0, 0])
        return torch.stack(rows)

    ref = autograd_reference(adapter, layer, x, manual, reshape=adapter.crop_padding)
    torch.testing.assert_close(boxed.scores, ref.scores)
    assert_weights_close(boxed.weights, ref)  # the same backward of one target per image
    default = gradcam.GradCAM(adapter, adapter.default_layer)(x, DetectionScore())
    assert adapter.default_layer == "detector.backbone.body.16"
    assert bool((default.raw.flatten(1).amax(1) > 0).all())
    with pytest.raises(gradcam.TargetError, match="image 0: no detection overlaps box"):
        cam(x, DetectionScore(box=(60, 40, 63, 47), iou_threshold=0.9))


def test_torchvision_segmentation():
    model = tiny_segmenter()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        predicted = model(x)["out"].argmax(1)
    category = int(predicted[0, 0, 0])
    layer = "backbone.16"
    cam = gradcam.GradCAM(model, layer)
    e = cam(x, SegmentationScore(category))
    ref = autograd_reference(
        model, layer, x, lambda out: (out["out"][:, category] * (predicted == category)).sum((1, 2))
    )
    torch.testing.assert_close(e.scores, ref.scores)
    assert_weights_close(e.weights, ref)  # the same backward of one target per image
    region = torch.zeros(48, 48, dtype=torch.bool)
    region[10:20, 30:45] = True
    categories = torch.tensor([[0, 2], [1, 2]])
    boxed = cam(x, SegmentationScore(categories, region))

    def manual(out):
        return torch.stack(
            [torch.stack([out["out"][b, categories[b, j]][region].sum() for j in range(2)]) for b in range(2)]
        )

    ref = autograd_reference(model, layer, x, manual)
    torch.testing.assert_close(boxed.scores, ref.scores)
    # 2 categories per image: a vmapped backward through the segmentation head (ASPP's 1x1 convs over 960
    # channels, its 5 x 256 projection, the classifier's 3x3 over 256: longest 256 * 9 = 2304; ~8 steps)
    assert_weights_close(boxed.weights, ref, terms=2304, depth=8)
