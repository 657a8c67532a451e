"""An independent float64 Grad-CAM at a named layer, for checking the automatic choice's maps.

``reference_raw`` runs a float64 copy of the model with a plain forward hook that keeps the layer's
output in the graph, differentiates the target with ``torch.autograd.grad``, lays tokens on their
grid with the plain indexing of ``tokens[:, P + i*w + j] -> grid[:, :, i, j]`` (or a permute for
channels-last grids), then ``alpha = mean_uv(dy/dA)`` and ``ReLU(sum_k alpha_k A_k)``. It shares no
code with the engine (no capture, no reshape module, no target resolution).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tolerances import assert_close


def to_grid(tensor: torch.Tensor, layout: str | None, grid: tuple[int, int] | None, prefix: int | None) -> torch.Tensor:
    """(B, N, C) tokens / (B, h, w, C) channels-last / (B, K, u, v) maps -> (B, K, u, v), written out by hand."""
    if layout is None:
        return tensor
    if layout == "channels_last":
        return tensor.permute(0, 3, 1, 2)
    rows, cols = grid
    out = tensor.new_zeros(tensor.shape[0], tensor.shape[2], rows, cols)
    for i in range(rows):
        for j in range(cols):
            out[:, :, i, j] = tensor[:, prefix + i * cols + j, :]
    return out


def reference_raw(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    target: Callable[[Any], torch.Tensor],
    layout: str | None = None,
    grid: tuple[int, int] | None = None,
    prefix: int | None = None,
    copy_model: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, magnitude)`` at ``layer`` in float64 (on a float64 copy of ``model``, or on ``model`` itself, already
    float64 and in eval mode, with ``copy_model=False``): the map before its ReLU ``S = sum_k alpha_k A_k``
    (B, u, v) and ``sum_k |alpha_k A_k|``, which bounds the rounding of the sum. Grad-CAM's map is ReLU(S),
    its counterfactual map ReLU(-S)."""
    twin = copy.deepcopy(model).double().eval() if copy_model else model
    seen: list[torch.Tensor] = []
    def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        seen.append(output)
        return output.clone()  # downstream in-place ops (DenseNet's F.relu(..., inplace=True)) must not change A

    handle = twin.get_submodule(layer).register_forward_hook(keep)
    try:
        output = twin(x.double())
    finally:
        handle.remove()
    activations = seen[-1]
    scores = target(output)
    (grad,) = torch.autograd.grad(scores.sum(), activations)
    a = to_grid(activations.detach(), layout, grid, prefix)
    g = to_grid(grad, layout, grid, prefix)
    alpha = g.flatten(2).mean(-1)  # over every activation axis (u, v; or t, u, v)
    terms = alpha.reshape(*alpha.shape, *[1] * (a.dim() - 2)) * a
    return terms.sum(1), terms.abs().sum(1)


def assert_raw_matches(actual: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, channels: int) -> None:
    """Our raw map (float64 model, float32 weighted sum) against the float64 reference: the only rounding
    is the float32 sum of K products (plus one rounding of each factor), Higham's bound on sum |alpha_k A_k|."""
    assert_close(actual.double(), expected, terms=channels + 2, magnitude=float(magnitude.max()), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ the zoo



@dataclass(frozen=True)
class Entry:
    """One architecture of the sweep: how to build it with random weights, the input side, what to explain,
    and where the automatic layer must be (a regex on its name: the last stage of the family)."""

    id: str
    family: str
    build: Callable[[], nn.Module]
    size: int
    layer: str
    task: str = "classification"  # classification | segmentation | detection | embedding
    heavy: bool = False  # more than ~10 s on one core: only in the full sweep (GRADCAM_FULL_ZOO=1)
    options: dict = field(default_factory=dict)


def logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
    return output["logits"] if isinstance(output, Mapping) else output.logits


def segmentation_target(output: Any) -> torch.Tensor:
    """Class 1's logits summed over the whole map."""
    return logits_of(output)[:, 1].sum((-2, -1))


def detection_target(output: Any) -> torch.Tensor:
    """Each image's most confident detection's score."""
    return torch.stack([found["scores"][0] for found in output])


def embedding_target(output: Any) -> torch.Tensor:
    """The first feature of the pooled image embedding (its sum would be constant: a LayerNorm's output with
    unit scale and zero shift sums to zero)."""
    return output.pooler_output[:, 0]


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _tv_dense(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        from gradcam.targets import DetectorAdapter

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs)
        return DetectorAdapter(model) if hasattr(model, "transform") else model

    return build


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    return build


def _hf(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))

    return build


# torchvision classification: family prefix -> (input side, regex of the last stage's layers)
_TV_FAMILIES: tuple[tuple[str, int, str], ...] = (
    ("alexnet", 64, r"^features\.(8|9|10|11)$"),
    ("convnext", 64, r"^features(\.7(\.\d+)*)?$"),
    ("densenet", 64, r"^features(\.(denseblock4|norm5)(\..*)?)?$"),
    ("efficientnet", 64, r"^features(\.8(\.\d+)*)?$"),
    ("googlenet", 64, r"^inception5b$"),
    ("inception", 107, r"^Mixed_7c$"),
    ("maxvit", 224, r"^blocks(\.3(\..*)?)?$"),
    ("mnasnet", 64, r"^layers(\.1[4-6])?$"),
    ("mobilenet", 64, r"^features(\.1[2-8](\.\d+)*)?$"),
    ("regnet", 64, r"^trunk_output(\.block4(\..*)?)?$"),
    ("resne", 64, r"^layer4$"),
    ("wide_resnet", 64, r"^layer4$"),
    ("shufflenet", 64, r"^conv5(\.\d+)?$"),
    ("squeezenet", 64, r"^features(\.1[0-2](\.\w+)?)?$"),
    ("swin", 64, r"^(permute|norm|features\.7(\..*)?)$"),
    ("vgg", 64, r"^features\.\d+$"),
    ("vit", 32, r"^encoder\.layers\.encoder_layer_(11|23|31)\.ln_1$"),
)
# Builders whose parameter count makes one check take more than ~10 s on one core.
_TV_HEAVY = re.compile(
    r"^(convnext_(base|large)|efficientnet_(b[5-7]|v2_[ml])|regnet_(x_(16|32)gf|y_(16|32|128)gf)|resnext101_64x4d|"
    r"vit_(h_14|l_16|l_32)|swin_(b|v2_b)|vgg(16|19).*|wide_resnet101_2|maxvit_t)$"
)
_VIT_SIDES = {"vit_b_16": 32, "vit_b_32": 64, "vit_l_16": 32, "vit_l_32": 64, "vit_h_14": 28}


def torchvision_classification() -> list[Entry]:
    import torchvision

    entries = []
    for name in torchvision.models.list_models(module=torchvision.models):
        family, size, regex = next((f, s, r) for f, s, r in _TV_FAMILIES if name.startswith(f))
        kwargs: dict[str, Any] = {}
        if name.startswith("vit_"):
            size = _VIT_SIDES[name]
            kwargs["image_size"] = size
        if name == "inception_v3":
            kwargs.update(aux_logits=False, init_weights=False)
        if name == "googlenet":
            kwargs.update(aux_logits=False, init_weights=False)
        entries.append(Entry(f"torchvision:{name}", f"torchvision {family}", _tv(name, **kwargs), size, regex,
                             heavy=bool(_TV_HEAVY.match(name))))  # fmt: skip
    return entries


def torchvision_dense() -> list[Entry]:
    det = {"min_size": 64, "max_size": 64, "box_score_thresh": 0.0, "num_classes": 3}
    rcnn = {**det, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_detections_per_img": 10}
    single = {"min_size": 64, "max_size": 64, "num_classes": 3, "score_thresh": 0.0, "detections_per_img": 10,
              "topk_candidates": 50}  # fmt: skip
    ssd = {"num_classes": 3, "score_thresh": 0.0, "detections_per_img": 10, "topk_candidates": 50}
    return [
        Entry("torchvision:deeplabv3_mobilenet_v3_large", "torchvision segmentation",
              _tv_dense("deeplabv3_mobilenet_v3_large", num_classes=3), 64, r"^backbone\.16$", "segmentation"),
        Entry("torchvision:deeplabv3_resnet50", "torchvision segmentation",
              _tv_dense("deeplabv3_resnet50", num_classes=3), 64, r"^backbone\.layer4$", "segmentation"),
        Entry("torchvision:deeplabv3_resnet101", "torchvision segmentation",
              _tv_dense("deeplabv3_resnet101", num_classes=3), 64, r"^backbone\.layer4$", "segmentation", heavy=True),
        Entry("torchvision:fcn_resnet50", "torchvision segmentation",
              _tv_dense("fcn_resnet50", num_classes=3), 64, r"^backbone\.layer4$", "segmentation"),
        Entry("torchvision:fcn_resnet101", "torchvision segmentation",
              _tv_dense("fcn_resnet101", num_classes=3), 64, r"^backbone\.layer4$", "segmentation", heavy=True),
        Entry("torchvision:lraspp_mobilenet_v3_large", "torchvision segmentation",
              _tv_dense("lraspp_mobilenet_v3_large", num_classes=3), 64, r"^backbone\.16$", "segmentation"),
        Entry("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "torchvision detection",
              _tv_dense("fasterrcnn_mobilenet_v3_large_320_fpn", **rcnn), 64, r"^detector\.backbone\.body\.16$",
              "detection"),
        Entry("torchvision:fasterrcnn_mobilenet_v3_large_fpn", "torchvision detection",
              _tv_dense("fasterrcnn_mobilenet_v3_large_fpn", **rcnn), 64, r"^detector\.backbone\.body\.16$",
              "detection"),
        Entry("torchvision:fasterrcnn_resnet50_fpn", "torchvision detection",
              _tv_dense("fasterrcnn_resnet50_fpn", **rcnn), 64, r"^detector\.backbone\.body\.layer4$", "detection",
              heavy=True),
        Entry("torchvision:fasterrcnn_resnet50_fpn_v2", "torchvision detection",
              _tv_dense("fasterrcnn_resnet50_fpn_v2", **rcnn), 64, r"^detector\.backbone\.body\.layer4$", "detection",
              heavy=True),
        Entry("torchvision:maskrcnn_resnet50_fpn", "torchvision detection",
              _tv_dense("maskrcnn_resnet50_fpn", **rcnn), 64, r"^detector\.backbone\.body\.layer4$", "detection",
              heavy=True),
        Entry("torchvision:maskrcnn_resnet50_fpn_v2", "torchvision detection",
              _tv_dense("maskrcnn_resnet50_fpn_v2", **rcnn), 64, r"^detector\.backbone\.body\.layer4$", "detection",
              heavy=True),
        Entry("torchvision:keypointrcnn_resnet50_fpn", "torchvision detection",
              _tv_dense("keypointrcnn_resnet50_fpn", **{**rcnn, "num_classes": 2}), 64,
              r"^detector\.backbone\.body\.layer4$", "detection", heavy=True),
        Entry("torchvision:retinanet_resnet50_fpn", "torchvision detection",
              _tv_dense("retinanet_resnet50_fpn", **single), 64, r"^detector\.backbone\.body\.layer4$", "detection",
              heavy=True),
        Entry("torchvision:retinanet_resnet50_fpn_v2", "torchvision detection",
              _tv_dense("retinanet_resnet50_fpn_v2", **single), 64, r"^detector\.backbone\.body\.layer4$", "detection",
              heavy=True),
        Entry("torchvision:fcos_resnet50_fpn", "torchvision detection",
              _tv_dense("fcos_resnet50_fpn", **single), 64, r"^detector\.backbone\.body\.layer4$", "detection",
              heavy=True),
        Entry("torchvision:ssd300_vgg16", "torchvision detection", _tv_dense("ssd300_vgg16", **ssd), 64,
              r"^detector\.backbone\.features$", "detection", heavy=True),
        Entry("torchvision:ssdlite320_mobilenet_v3_large", "torchvision detection",
              _tv_dense("ssdlite320_mobilenet_v3_large", **ssd), 64, r"^detector\.backbone\.features\.0$",
              "detection"),
    ]  # fmt: skip


def torchvision_video() -> list[Entry]:
    """Video classifiers on (B, C, T, H, W) clips (8 frames): the CNNs get a 3-D map; the video transformers
    (MViT, Swin3D), whose tokens have no 3-D layout here, must be refused with a LayerError saying so."""
    import torchvision

    cnn = {"r3d_18": r"^layer4$", "mc3_18": r"^layer4$", "r2plus1d_18": r"^layer4$", "s3d": r"^features(\.15)?$"}
    entries = []
    for name in torchvision.models.list_models(module=torchvision.models.video):
        if name in cnn:
            size = 224 if name == "s3d" else 32
            entries.append(Entry(f"torchvision:{name}", "torchvision video", _tv(name), size, cnn[name], "video",
                                 heavy=name == "s3d", options={"frames": 16 if name == "s3d" else 8}))  # fmt: skip
        else:
            entries.append(Entry(f"torchvision:{name}", "torchvision video", _tv(name), 32, r"^$", "video-tokens",
                                 heavy=name.startswith(("swin3d_b", "swin3d_s", "mvit"))))  # fmt: skip
    return entries


def timm_families() -> list[Entry]:
    return [
        Entry("timm:resnet18", "timm resnet", _timm("resnet18", num_classes=5), 64, r"^layer4$"),
        Entry("timm:efficientnet_b0", "timm efficientnet", _timm("efficientnet_b0", num_classes=5), 64,
              r"^(bn2|conv_head|blocks\.6.*)$"),
        Entry("timm:convnext_atto", "timm convnext", _timm("convnext_atto", num_classes=5), 64,
              r"^(stages(\.3(\..*)?)?|norm_pre)$"),
        Entry("timm:regnetx_002", "timm regnet", _timm("regnetx_002", num_classes=5), 64,
              r"^(s4(\..*)?|final_conv)$"),
        Entry("timm:vit_tiny_patch16_224", "timm vit", _timm("vit_tiny_patch16_224", img_size=32, num_classes=5),
              32, r"^blocks\.11\.norm1$"),
        Entry("timm:deit_tiny_distilled_patch16_224", "timm deit",
              _timm("deit_tiny_distilled_patch16_224", img_size=32, num_classes=5), 32, r"^blocks\.11\.norm1$"),
        Entry("timm:vit_small_patch14_reg4_dinov2", "timm dinov2 (registers)",
              _timm("vit_small_patch14_reg4_dinov2", img_size=28, num_classes=5), 28, r"^blocks\.11\.norm1$"),
        Entry("timm:beit_base_patch16_224", "timm beit", _timm("beit_base_patch16_224", img_size=32, num_classes=5),
              32, r"^blocks\.11\.norm1$", heavy=True),
        Entry("timm:eva02_tiny_patch14_224", "timm eva", _timm("eva02_tiny_patch14_224", img_size=28, num_classes=5),
              28, r"^blocks\.11\.norm1$"),
        Entry("timm:swin_tiny_patch4_window7_224", "timm swin",
              _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=2, num_classes=5), 64,
              r"^layers\.3\.blocks\.1\.norm1$"),
        Entry("timm:swinv2_tiny_window8_256", "timm swin v2",
              _timm("swinv2_tiny_window8_256", img_size=128, window_size=4, num_classes=5), 128,
              r"^layers\.3\.blocks\.1$"),
        Entry("timm:mobilevit_xxs", "timm mobilevit", _timm("mobilevit_xxs", num_classes=5), 64,
              r"^(final_conv(\..*)?|stages\.4(\..*)?)$"),
        Entry("timm:coatnet_nano_rw_224", "timm coatnet", _timm("coatnet_nano_rw_224", num_classes=5), 224,
              r"^(norm|stages(\.3(\..*)?)?)$"),
    ]  # fmt: skip


def hf_tiny() -> list[Entry]:
    vit = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, num_labels=5)  # fmt: skip
    swin = dict(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2, num_labels=5)
    return [
        Entry("hf:ViTForImageClassification", "hf vit", _hf("ViTForImageClassification", "ViTConfig", **vit), 32,
              r"^vit\.(encoder\.)?layers?\.1\.layernorm_before$"),
        Entry("hf:DeiTForImageClassificationWithTeacher", "hf deit",
              _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **vit), 32,
              r"^deit\.(encoder\.)?layers?\.1\.layernorm_before$"),
        Entry("hf:BeitForImageClassification", "hf beit",
              _hf("BeitForImageClassification", "BeitConfig", **vit, use_mean_pooling=True), 32,
              r"^beit\.(encoder\.)?layers?\.1\.layernorm_before$"),
        Entry("hf:Dinov2WithRegistersForImageClassification", "hf dinov2 (registers)",
              _hf("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig", **vit,
                  num_register_tokens=4),
              32, r"^dinov2_with_registers\.(encoder\.)?layers?\.1\.norm1$"),
        Entry("hf:SwinForImageClassification", "hf swin", _hf("SwinForImageClassification", "SwinConfig", **swin), 32,
              r"^swin\.encoder\.layers\.1\.blocks\.0\.layernorm_before$"),
        Entry("hf:Swinv2ForImageClassification", "hf swin v2",
              _hf("Swinv2ForImageClassification", "Swinv2Config", **swin), 32,
              r"^swinv2\.encoder\.layers\.1\.blocks\.0\.layernorm_before$"),
        Entry("hf:ConvNextForImageClassification", "hf convnext",
              _hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16], depths=[1, 1],
                  num_stages=2, num_labels=5), 32, r"^convnext\.encoder\.stages\.1(\..*)?$"),
        Entry("hf:CLIPVisionModel", "hf clip vision",
              _hf("CLIPVisionModel", "CLIPVisionConfig", image_size=32, patch_size=8, hidden_size=16,
                  intermediate_size=32, num_hidden_layers=2, num_attention_heads=2), 32,
              r"^(vision_model\.)?encoder\.layers\.1\.layer_norm1$", "embedding"),
        Entry("hf:SegformerForSemanticSegmentation", "hf segformer",
              _hf("SegformerForSemanticSegmentation", "SegformerConfig", depths=[1, 1], hidden_sizes=[8, 16],
                  num_attention_heads=[1, 1], sr_ratios=[2, 1], decoder_hidden_size=16, num_encoder_blocks=2,
                  patch_sizes=[7, 3], strides=[4, 2], num_labels=3), 32, r"^segformer\.(encoder\.)?stages?\.1(\..*)?$",
              "segmentation"),
    ]  # fmt: skip


def zoo() -> list[Entry]:
    """Every entry of the sweep (torchvision classification: every builder of ``list_models``)."""
    entries = torchvision_classification() + torchvision_dense() + torchvision_video()
    try:
        import timm  # noqa: F401

        entries += timm_families()
    except ImportError:
        pass
    try:
        import transformers  # noqa: F401

        entries += hf_tiny()
    except ImportError:
        pass
    return entries


@dataclass
class Result:
    entry: Entry
    layer: str | None = None
    grid: tuple[int, ...] | None = None
    reshape: str = ""
    status: str = "ok"
    seconds: float = 0.0


def _materialise(model: nn.Module) -> None:
    """Give zero-initialised weight matrices (torchvision's ViT head, ...) small random values, so that every
    class has a gradient; done under a fixed seed."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not bool(parameter.any()):
                parameter.normal_(0, 0.02)


def check(entry: Entry, seed: int = 0) -> Result:
    """Build ``entry`` (random weights), explain it in float64 with no layer, and compare the raw map with
    :func:`reference_raw` at the chosen layer; raises AssertionError on a wrong layer or a wrong map."""
    import gradcam
    from gradcam.targets import DetectorAdapter

    start = time.perf_counter()
    result = Result(entry)
    if entry.task == "video-tokens":  # refused after the probe: no 3-D token layout
        torch.manual_seed(seed)
        model = entry.build().eval()
        frames, side = (16, 224) if entry.id.startswith("torchvision:mvit") else (8, entry.size)
        try:
            gradcam.GradCAM(model)(torch.rand(1, 3, frames, side, side))
        except gradcam.LayerError as error:
            assert "token grids are laid out for 2-D images only" in str(error)
            result.status = "not supported: refused (LayerError: token grids are laid out for 2-D images only)"
            result.seconds = time.perf_counter() - start
            return result
        raise AssertionError(f"{entry.id}: a video transformer was not refused")
    torch.manual_seed(seed)
    model = entry.build().eval()
    _materialise(model)
    model = model.double()
    frames = (entry.options["frames"],) if entry.task == "video" else ()
    x = torch.rand(2, 3, *frames, entry.size, entry.size, dtype=torch.float64)
    if entry.task in ("classification", "video"):
        target: Any = [1, 2]
        reference_target = lambda out: logits_of(out)[[0, 1], [1, 2]]  # noqa: E731
    else:
        target = {"segmentation": segmentation_target, "detection": detection_target,
                  "embedding": embedding_target}[entry.task]  # fmt: skip
        reference_target = target
    cam = gradcam.GradCAM(model)
    e = cam(x, target)
    result.layer, result.grid = e.layer, tuple(e.raw.shape[1:])
    reshape = cam.reshape
    result.reshape = "" if reshape is None else getattr(reshape, "__name__", None) or repr(reshape)
    assert re.search(entry.layer, e.layer), f"{entry.id}: automatic layer {e.layer!r} is not in the last stage"
    layout = grid = prefix = None
    if reshape is not None and not isinstance(model, DetectorAdapter):
        layout, grid, prefix = reshape.layout, reshape.grid, reshape.prefix
    if isinstance(model, DetectorAdapter):
        assert model.covered == (1.0, 1.0)  # square inputs at the detector's size: nothing to crop
    signed, magnitude = reference_raw(model, x, e.layer, reference_target, layout, grid, prefix, copy_model=False)
    assert float(signed.abs().amax()) > 0, f"{entry.id}: the reference map is identically zero"
    assert_raw_matches(e.raw, torch.relu(signed), magnitude, e.weights.shape[-1])
    if not bool((signed > 0).any()):  # ReLU(S) = 0 says little: check the counterfactual map ReLU(-S) too
        counter = cam(x, target, counterfactual=True)
        assert_raw_matches(counter.raw, torch.relu(-signed), magnitude, e.weights.shape[-1])
    result.seconds = time.perf_counter() - start
    return result
