"""The contract's hygiene checks, run on every new path: task targets, forward kwargs, token reshapes,
channels-last grids, the keyword-input and detector adapters, Hugging Face and torchvision models."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer

import gradcam
from conftest import GapNet, block_image
from contract.test_hygiene import assert_same_state, snapshot
from gradcam.reshape import TokenGrid, auto_reshape, token_layer
from gradcam.targets import (
    ClassScore,
    DetectionScore,
    DetectorAdapter,
    EmbeddingSimilarity,
    KeywordImageInput,
    SegmentationScore,
    SequenceLogProbability,
    Stack,
    WeightedClasses,
)
from targets.targets_support import (
    HandDetector,
    HandSegmenter,
    TinyCaptioner,
    one_thread,  # noqa: F401  (autouse fixture)
    tiny_clip,
)


@dataclass
class Case:
    model: nn.Module
    layer: str
    x: torch.Tensor
    target: Callable[[Any], torch.Tensor]
    before: str  # a module that runs before the layer: no graph may be recorded there
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
    forward_kwargs: dict | None = None

    def explain(self, model: nn.Module | None = None, x: torch.Tensor | None = None, target: Any = None):
        model = self.model if model is None else model
        x = self.x if x is None else x
        kwargs = {k: v.to(x.device) for k, v in (self.forward_kwargs or {}).items()}
        return gradcam.GradCAM(model, self.layer, reshape=self.reshape)(
            x, self.target if target is None else target, forward_kwargs=kwargs
        )


def gap_case(target) -> Case:
    torch.manual_seed(0)
    return Case(GapNet(), "body", torch.randn(2, 3, 8, 8), target, "body.0")


def hf_vit_case() -> Case:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=4)  # fmt: skip
    model = transformers.ViTForImageClassification(config)
    x = torch.randn(2, 3, 32, 32)
    layer = token_layer(model)
    return Case(model, layer, x, ClassScore([1, 3], kind="probability"), "vit.embeddings.patch_embeddings",
                auto_reshape(model, layer, x))  # fmt: skip


def hf_clip_case() -> Case:
    model = KeywordImageInput(tiny_clip(train=True))
    prompts = {"input_ids": torch.tensor([[0, 5, 9, 1], [0, 7, 3, 1], [0, 2, 2, 1]])}
    return Case(model, "model.vision_model.encoder.layers.1.layer_norm1", torch.randn(2, 3, 32, 32),
                ClassScore([0, 2], select="logits_per_image"), "model.vision_model.embeddings",
                TokenGrid(prefix=1), prompts)  # fmt: skip


def tv_detection_case() -> Case:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    detector = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0, min_size=64, max_size=64,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=10,
    )  # fmt: skip
    adapter = DetectorAdapter(detector)
    return Case(adapter, "detector.backbone.body.6", torch.rand(2, 3, 48, 64), DetectionScore(index=[0, 1]),
                "detector.backbone.body.0", adapter.crop_padding)  # fmt: skip


def tv_segmentation_case() -> Case:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)
    mask = torch.zeros(48, 48)
    mask[5:30, 10:20] = 1.0
    return Case(model, "backbone.16", torch.rand(2, 3, 48, 48), SegmentationScore([1, 2], mask), "backbone.0")


def swin_case() -> Case:
    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2],
                            num_classes=3)  # fmt: skip
    return Case(model, "features.3.0.norm1", torch.randn(2, 3, 32, 32), ClassScore([0, 2]), "features.0",
                TokenGrid("channels_last"))  # fmt: skip


def captioner_case() -> Case:
    torch.manual_seed(0)
    return Case(TinyCaptioner(), "body", torch.randn(2, 3, 8, 8), SequenceLogProbability([1, 4, 2, 6]), "body.0",
                None, {"input_ids": torch.tensor([[1, 4, 2, 6], [3, 3, 0, 5]])})  # fmt: skip


CASES: dict[str, Callable[[], Case]] = {
    "class-probability": lambda: gap_case(ClassScore([1, 2], kind="probability")),
    "weighted-stack": lambda: gap_case(Stack(WeightedClasses({0: 1.0, 3: -1.0}), ClassScore(2, kind="sigmoid"))),
    "similarity": lambda: gap_case(EmbeddingSimilarity(torch.randn(3, 5))),
    "hand-segmentation": lambda: Case(HandSegmenter(), "features", torch.cat([block_image([[1, 2], [3, -4]])] * 2),
                                      SegmentationScore([0, 1]), "features"),
    "hand-detection": lambda: Case(HandDetector(), "features", block_image([[1, 2], [3, -4]]),
                                   DetectionScore(box=(0, 0, 4, 2), box_weight=1.0), "features"),
    "sequence-forward-kwargs": captioner_case,
    "hf-vit-tokens": hf_vit_case,
    "hf-clip-keyword-input": hf_clip_case,
    "torchvision-detection": tv_detection_case,
    "torchvision-segmentation": tv_segmentation_case,
    "swin-channels-last": swin_case,
}  # fmt: skip


def make_messy(model: nn.Module) -> nn.Module:
    """Training mode with one module in eval, a frozen parameter, an existing .grad and a user hook."""
    model.train()
    leaves = [m for m in model.modules() if not list(m.children())]
    leaves[-1].eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 7.0)
    leaves[0].register_forward_hook(lambda m, i, o: None)
    return model


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    built = CASES[request.param]()
    make_messy(built.model)
    return built


def test_state_is_restored_and_eval_mode_is_used(case):
    before = snapshot(case.model)
    e = case.explain()
    assert_same_state(before, snapshot(case.model))
    assert torch.isfinite(e.heatmap).all() and e.raw.abs().sum() > 0
    reference = case.explain(copy.deepcopy(case.model).eval())
    torch.testing.assert_close(e.heatmap, reference.heatmap)

    def failing(output):
        raise gradcam.TargetError("the target failed")

    with pytest.raises(gradcam.TargetError, match="the target failed"):
        case.explain(target=failing)
    assert_same_state(before, snapshot(case.model))


def test_no_parameter_gradient_and_no_graph_before_the_layer(case):
    model = case.model.eval()
    calls: list[int] = []
    handles = [p.register_hook(lambda g: calls.append(1)) for p in model.parameters() if p.requires_grad]
    grad_mode: list[bool] = []
    before = model.get_submodule(case.before)
    handles.append(before.register_forward_hook(lambda m, i, o: grad_mode.append(torch.is_grad_enabled())))
    try:
        case.explain()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    assert grad_mode and not any(grad_mode)


def test_frozen_no_grad_and_inference_mode_give_the_same_maps(case):
    model = case.model.eval()
    reference = case.explain()
    frozen = copy.deepcopy(model).requires_grad_(False)
    torch.testing.assert_close(case.explain(frozen).heatmap, reference.heatmap)
    with torch.no_grad():
        torch.testing.assert_close(case.explain().heatmap, reference.heatmap)
    with torch.inference_mode():
        torch.testing.assert_close(case.explain(x=case.x.clone()).heatmap, reference.heatmap)
    assert torch.is_grad_enabled()


def test_autocast_bf16_gives_float32_maps(case):
    case.model.eval()
    reference = case.explain()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = case.explain()
    except RuntimeError as error:  # a model whose own forward does not support CPU autocast
        pytest.skip(f"the model's forward fails under CPU bf16 autocast: {str(error).splitlines()[0]}")
    assert mixed.heatmap.dtype == torch.float32 and mixed.weights.dtype == torch.float32
    assert torch.isfinite(mixed.heatmap).all()
    # bf16 forwards round activations (8-bit mantissa): maps agree on the whole, not to float32 precision
    agreement = torch.nn.functional.cosine_similarity(mixed.heatmap.flatten(1), reference.heatmap.flatten(1))
    assert bool((agreement > 0.9).all()), agreement


def test_in_place_ops_after_the_layer_do_not_change_task_maps():
    torch.manual_seed(3)
    in_place, out_of_place = GapNet(inplace=True).eval(), GapNet(inplace=False).eval()
    out_of_place.load_state_dict(in_place.state_dict())
    x = torch.randn(2, 3, 8, 8)
    target = Stack(ClassScore([1, 4], kind="probability"), EmbeddingSimilarity(torch.randn(5)))
    torch.testing.assert_close(
        gradcam.GradCAM(in_place, "body")(x, target).heatmap, gradcam.GradCAM(out_of_place, "body")(x, target).heatmap
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_maps_stay_on_the_device_and_match_cpu(case, monkeypatch):
    # TF32 convolutions (cuDNN's default) differ from float32 by ~1e-3 per layer: compare in full float32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    case.model.eval()
    reference = case.explain()
    on_gpu = case.explain(copy.deepcopy(case.model).cuda(), case.x.cuda())
    assert on_gpu.heatmap.device.type == "cuda" and on_gpu.scores.device.type == "cuda"
    torch.testing.assert_close(on_gpu.heatmap.cpu(), reference.heatmap, rtol=1e-3, atol=1e-3)
