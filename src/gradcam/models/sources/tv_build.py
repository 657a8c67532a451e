"""Build a torchvision model as its builder builds a pretrained one, from a state dict already in hand.

torchvision's builders only take weights as a ``Weights`` enum, which they download. Given the enum
they also shape the model for it: the number of classes from ``meta["categories"]``, ``transform_input``
and auxiliary heads for GoogLeNet / Inception-v3, the image size for ViT and MaxViT, the auxiliary head
of FCN / DeepLabV3, the keypoints of Keypoint R-CNN, and for detectors a "trained" backbone (frozen
batch norm in some, with eps 0 for the COCO_V1 files, the first stages' parameters not trainable).
:func:`pretrained_kwargs`, :func:`before_load` and :func:`after_load` reproduce exactly that around a
``weights=None`` build, and :func:`gradcam.models.sources.tv.build_pretrained` loads the state dict
itself (``load_state_dict``, strict), so nothing is fetched. The slow test
``test_every_torchvision_model_matches_its_pretrained_build`` compares the result with torchvision's
own pretrained build for every model, which catches a torchvision release that shapes a model otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

# Inception-style builders: built with aux heads and transform_input for their published files.
_AUX_BUILDERS = ("googlenet", "inception_v3")
# ... and the aux heads dropped after loading where the builder's aux_logits default is False.
_AUX_DROPPED = {"googlenet": ("aux1", "aux2")}
# Detectors whose COCO_V1 weights were trained with FrozenBatchNorm2d eps 0 (torchvision sets it after loading).
_EPS_ZERO = {"fasterrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn"}
# Detectors whose pretrained backbone uses FrozenBatchNorm2d (the *_v2 ones and SSD keep nn.BatchNorm2d).
_FROZEN_BN = {
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fcos_resnet50_fpn",
    "keypointrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
}
# A pretrained ResNet-FPN detector trains layer2-4 only (torchvision's default trainable_backbone_layers=3).
_RESNET_TRAINABLE = ("layer2", "layer3", "layer4")
# A pretrained MobileNet-FPN detector trains its last 3 of 6 stages.
_MOBILENET_TRAINABLE_STAGES = 3


def pretrained_kwargs(builder: Callable[..., nn.Module], weights_enum: Any, name: str) -> dict[str, Any]:
    """The keyword arguments a torchvision builder sets for itself when given ``weights_enum``."""
    meta = weights_enum.meta
    params = inspect.signature(builder).parameters
    options: dict[str, Any] = {"weights": None}
    if "weights_backbone" in params:
        options["weights_backbone"] = None
    if meta.get("categories") is not None:
        options["num_classes"] = len(meta["categories"])
    if name in _AUX_BUILDERS:
        options.update(transform_input=True, aux_logits=True, init_weights=False)
    if name.startswith("vit_"):
        options["image_size"] = meta["min_size"][0]
    if name.startswith("maxvit_"):
        options["input_size"] = meta["min_size"]
    if "aux_loss" in params:
        options["aux_loss"] = True
    if "num_keypoints" in params:
        options["num_keypoints"] = len(meta["keypoint_names"])
    return options


def before_load(model: nn.Module, name: str) -> nn.Module:
    """Make a detector's backbone what a pretrained build has: frozen batch norm where torchvision uses it."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    if name in _FROZEN_BN and isinstance(body, nn.Module):
        _freeze_batch_norm(body)
    return model


def after_load(model: nn.Module, name: str, weights_enum: Any) -> nn.Module:
    """Finish a pretrained-style build once its weights are in, as torchvision does: drop GoogLeNet's
    auxiliary heads, set batch-norm eps 0 for the COCO_V1 detectors, and make a detector's first
    backbone stages not trainable."""
    if name in _AUX_DROPPED:
        model.aux_logits = False
        for head in _AUX_DROPPED[name]:
            setattr(model, head, None)
    if name in _EPS_ZERO and weights_enum.name == "COCO_V1":
        from torchvision.ops import FrozenBatchNorm2d

        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
    backbone = getattr(model, "backbone", None)
    body = getattr(backbone, "body", None)
    if isinstance(body, nn.Module) and "resnet" in name:
        for param_name, param in body.named_parameters():
            if not param_name.startswith(_RESNET_TRAINABLE):
                param.requires_grad_(False)
    elif isinstance(body, nn.Module) and "mobilenet" in name:
        _freeze_stages(list(body.children()), _mobilenet_stage_starts(body), _MOBILENET_TRAINABLE_STAGES)
    elif name == "ssd300_vgg16":  # trains 4 of its 5 VGG stages: the first (before the first max-pool) is frozen
        features = list(backbone.features.children())
        first_pool = next(i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d))
        _freeze_modules(features[:first_pool])
    return model


def _mobilenet_stage_starts(body: nn.Module) -> list[int]:
    blocks = list(body.children())
    return [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]


def _freeze_stages(blocks: Sequence[nn.Module], stage_starts: Sequence[int], trainable: int) -> None:
    _freeze_modules(blocks[: stage_starts[len(stage_starts) - trainable]])


def _freeze_modules(modules: Sequence[nn.Module]) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)


def _freeze_batch_norm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under ``module`` by a FrozenBatchNorm2d of the same size and eps."""
    from torchvision.ops import FrozenBatchNorm2d

    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, child_name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_batch_norm(child)
