"""Finding the layer to explain: by module, by dotted name, or automatically."""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import GradCAMError, InputError, LayerError

logger = logging.getLogger("gradcam")

_POOLING = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
)  # fmt: skip


@dataclass(frozen=True)
class LayerInfo:
    """One module's output as seen in a probe forward pass, in the order the modules finished."""

    name: str
    kind: str
    shape: tuple[int, ...]
    candidate: bool
    in_attention: bool = False
    batched: bool = True


def close_matches(name: str, model: nn.Module, n: int = 5) -> list[str]:
    """The module names of ``model`` closest to ``name`` (for error messages)."""
    names = [m for m, _ in model.named_modules() if m]
    found = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    return found or [m for m in names if m.startswith(name.split(".")[0])][:n]


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """Turn a module or a dotted name ("layer4.1", "features.28") into ``(name, module)``."""
    if isinstance(layer, str):
        try:
            module = model.get_submodule(layer) if layer else model
        except AttributeError:
            matches = close_matches(layer, model)
            hint = f"; close matches: {', '.join(repr(m) for m in matches)}" if matches else ""
            raise LayerError(
                f"layer {layer!r} not found in {type(model).__name__}{hint} "
                "(`gradcam layers MODEL` or model.named_modules() lists them)"
            ) from None
        return layer, module
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise LayerError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
    raise LayerError(
        f"layer must be an nn.Module, a dotted module name or None; got {type(layer).__name__}"
    )


_ATTENTION = re.compile(r"(^|_)(attn|attention)($|_|\d)", re.IGNORECASE)
# Children that hold a dense model's head: the automatic choice never explains the logits layer.
HEAD_NAMES = frozenset({"classifier", "aux_classifier", "decode_head", "auxiliary_head", "head", "heads",
                        "segmentation_head"})  # fmt: skip


def in_attention(name: str, model: nn.Module) -> bool:
    """Whether module ``name`` is (inside) an attention module: a path part spelt ``attn`` / ``attention``
    (``self_attn``, ``attn_layer``, ...) or a module whose class name contains ``Attention``."""
    parts = name.split(".")
    if any(_ATTENTION.search(part) for part in parts):
        return True
    module = model
    for part in parts:
        module = getattr(module, part, None) if not part.isdigit() else _child(module, part)
        if module is None:
            return False
        if "attention" in type(module).__name__.lower():
            return True
    return False


def _child(module: nn.Module, part: str) -> nn.Module | None:
    return module._modules.get(part)


def probe_layers(model: nn.Module, x: torch.Tensor, forward_kwargs: dict | None = None) -> list[LayerInfo]:
    """Run one forward pass on ``x`` and list every module's tensor output in completion order.

    A module is a *candidate* for Grad-CAM when its output is a (B, K, u, v) map with ``u * v > 1`` (for
    (B, C, L) / (B, C, T, H, W) inputs: a map of that rank with more than one cell) and the batch of ``x``
    on axis 0, that was not produced by a pooling module (a container whose output is its last pooling
    child's output inherits that) and that is not inside an attention module. Tensors are identified by
    object, so an in-place ReLU that returns its input is a
    candidate like the convolution before it. A failing forward raises :class:`InputError`.
    """
    return _probe(model, x, forward_kwargs)[0]


def _probe(model: nn.Module, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None) -> tuple[list[LayerInfo], Any]:
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    producer: dict[int, nn.Module] = {}
    keep_alive: list[torch.Tensor] = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                producer.setdefault(id(output), module)
                keep_alive.append(output)
                records.append((name, module, output))

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            output = call_model(model, x, forward_kwargs, "the layer probe")
    finally:
        for handle in handles:
            handle.remove()
    infos = []
    batch = x.shape[0]
    attention: dict[str, bool] = {}
    for name, module, out in records:
        if name not in attention:
            attention[name] = in_attention(name, model)
        batched = out.dim() > 0 and out.shape[0] == batch
        spatial = out.dim() == x.dim() and out.dim() >= 3 and math.prod(out.shape[2:]) > 1
        pooled = isinstance(producer.get(id(out), module), _POOLING)
        if spatial and x.dim() != 4:  # 1-D / 3-D: a channels-last (B, t, h, w, C) output is no (B, K, t, u, v) map
            widths = {int(m.normalized_shape[-1]) for m in module.modules() if isinstance(m, nn.LayerNorm)}
            fits = all(n <= size for n, size in zip(out.shape[2:], x.shape[2:]))  # a map is no larger than x
            spatial = fits and not (out.shape[-1] in widths and out.shape[1] not in widths)
        candidate = spatial and batched and not pooled and not attention[name]
        infos.append(LayerInfo(name, type(module).__name__, tuple(out.shape), candidate, attention[name], batched))
    return infos, output


def choose_layer(infos: list[LayerInfo], model: nn.Module) -> str:
    """The last candidate (a (B, K, u, v) map) to finish before the spatial dims are pooled away."""
    candidates = [info.name for info in infos if info.candidate]
    if not candidates:
        raise LayerError(
            f"no layer of {type(model).__name__} outputs a (B, K, u, v) feature map with u*v > 1; "
            "pass layer= explicitly (token outputs need a reshape to a grid)"
        )
    return candidates[-1]


@dataclass(frozen=True)
class LayerChoice:
    """The automatic choice for one model: the layer, the reshape of its output to a grid (None for a
    (B, K, u, v) map), the rule that chose it and whether the rules recognised the model."""

    name: str
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    rule: str
    recognised: bool = True
    infos: tuple[LayerInfo, ...] = ()


_warned: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def auto_layer(
    model: nn.Module, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None = None
) -> LayerChoice:
    """THE automatic layer choice, used by the explainers, ``gradcam layers`` and ``gradcam explain``.

    One probe forward pass (no grad; image 0 of ``x`` twice, so a layer whose axis 0 is not the batch
    shows) lists every module's output; then, in order:

    1. a :class:`~gradcam.targets.DetectorAdapter`: its ``default_layer``, cut to the image by ``crop_padding``;
    2. transformer blocks whose tokens (B, N, C) or channels-last grids (B, h, w, C) come after every
       (B, K, u, v) map (ViT, DeiT, DINOv2, BEiT, EVA, CLIP's vision tower, Swin v1/v2): the pre-attention
       LayerNorm of the last block (``norm1``, ``ln_1``, ``layernorm_before``, ``layer_norm1``) -- the last
       block's input, where the patch tokens still reach a class-token classifier (the last block's output
       reaches it through the class token only: zero maps) -- re-indexed to its grid; for a post-norm block
       (timm Swin v2) the block's output;
    3. dense models (the output is a (B, C, h, w) map): the last feature map outside the head
       (``classifier``, ``decode_head``, ...), i.e. the backbone's last stage;
    4. otherwise the last (B, K, u, v) map before the spatial dims are pooled away, outside the head when
       there is one (SqueezeNet's classifier convolution makes class-score maps, not features).

    Never a layer inside attention, never one without the batch on axis 0, never a 1x1 map. A model
    none of this recognises (no token blocks, no dense output, no pooled or (B, K) output after the
    choice) is logged at WARNING once.
    """
    from .reshape import reshape_for_output  # reshape imports this module

    detector = _detector_choice(model)
    if detector is not None:
        return detector
    rows = x[:1].expand(2, *x.shape[1:]).contiguous()  # a real copy: a model may write into its input
    kwargs = {
        key: value[:1].expand(2, *value.shape[1:]).contiguous()
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == x.shape[0]
        else value
        for key, value in (forward_kwargs or {}).items()
    }
    infos, output = _probe(model, rows, kwargs)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    layouts: dict[int, Any] = {}
    for index, info in enumerate(infos):
        if x.dim() == 4 and info.batched and not info.in_attention and len(info.shape) in (3, 4):
            try:
                layouts[index] = reshape_for_output(model, info.name, info.shape, size)
            except LayerError:
                layouts[index] = "none"
    maps = [i for i, info in enumerate(infos) if info.candidate and layouts.get(i) is None]
    last_map = maps[-1] if maps else -1
    if x.dim() != 4:
        tokens = [i for i, info in enumerate(infos) if i > last_map and info.batched and not info.in_attention
                  and _is_block_norm(info.name) and (len(info.shape) == 3 or not info.candidate)]  # fmt: skip
        if tokens:
            raise LayerError(
                f"{type(model).__name__} is a transformer on {x.dim() - 2}-D inputs (its blocks' tokens, e.g. "
                f"'{infos[tokens[-1]].name}' {infos[tokens[-1]].shape}, come after every map): token grids are laid "
                "out for 2-D images only; pass layer= a (B, K, ...) map, or reshape= a callable laying the tokens out"
            )
    blocks = [
        i for i, reshape in layouts.items()
        if reshape not in (None, "none") and _is_block_norm(infos[i].name) and i > last_map
    ]  # fmt: skip
    vision = [i for i in blocks if "vision" in infos[i].name or "visual" in infos[i].name]
    blocks = vision or blocks
    if blocks:
        index = _block_input(infos, layouts, blocks[-1])
        info = infos[index]
        return LayerChoice(info.name, layouts[index], "transformer blocks", True, tuple(infos))
    dense = _dense_output(output, rows.shape[0])
    outside = [i for i in maps if not set(infos[i].name.split(".")) & HEAD_NAMES]
    if dense and outside:
        info = infos[outside[-1]]
        return LayerChoice(info.name, None, "dense model backbone", True, tuple(infos))
    maps = outside or maps  # a class-score map in the head (SqueezeNet's classifier) is not a feature map
    last_map = maps[-1] if maps else -1
    if not maps:
        tokens = [i for i, reshape in layouts.items() if reshape not in (None, "none")]
        hint = f" (token layers such as '{infos[tokens[-1]].name}' need reshape=...)" if tokens else ""
        raise LayerError(
            f"no layer of {type(model).__name__} outputs a (B, K, u, v) feature map with u*v > 1 and the batch "
            f"on axis 0; pass layer= explicitly{hint}"
        )
    info = infos[last_map]
    after = infos[last_map + 1 :]
    recognised = dense or any(
        len(later.shape) == 2 or (later.kind in {c.__name__ for c in _POOLING}) for later in after
    )
    if not recognised and model not in _warned:
        _warned.add(model)
        logger.warning(
            "gradcam: no rule recognises %s (no token blocks, no dense output, no pooling or (B, K) output after "
            "its last feature map); using its last (B, K, u, v) map '%s' -- pass layer= if that is not the one",
            type(model).__name__,
            info.name,
        )
    return LayerChoice(info.name, None, "last feature map", recognised, tuple(infos))


def _block_input(infos: list[LayerInfo], layouts: dict[int, Any], index: int) -> int:
    """``index`` (a block's first norm) when it normalises the block's input (pre-norm: it finishes before
    any attention output of its block); for a post-norm block (Swin v2: ``x + norm1(attn(x))``, whose norm
    scale timm initialises to zero) the block's own output when it is a token / channels-last grid."""
    block = infos[index].name.rsplit(".", 1)[0]
    inside = [i for i, info in enumerate(infos) if info.in_attention and info.name.startswith(block + ".")]
    if not inside or min(inside) > index:
        return index
    after = [i for i in range(index + 1, len(infos)) if infos[i].name == block and layouts.get(i) not in (None, "none")]
    return after[-1] if after else index


_BLOCK_NORMS = ("norm1", "layernorm_before", "layer_norm1", "ln_1", "norm_1", "ln1")


def _is_block_norm(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _BLOCK_NORMS


def _dense_output(output: Any, batch: int) -> bool:
    """Whether the model's output (a tensor, or ``out`` / ``logits`` of a dict or ModelOutput) is a
    (B, C, h, w) map with h*w > 1: a segmentation-style model."""
    if isinstance(output, Mapping):
        output = next((output[k] for k in ("out", "logits") if k in output), None)
    return (
        isinstance(output, torch.Tensor)
        and output.dim() == 4
        and output.shape[0] == batch
        and output.shape[2] * output.shape[3] > 1
    )


def _is_bare_detector(model: nn.Module) -> bool:
    transform = getattr(model, "transform", None)
    return isinstance(transform, nn.Module) and type(transform).__name__ == "GeneralizedRCNNTransform"


def _detector_choice(model: nn.Module) -> LayerChoice | None:
    from .targets import DetectorAdapter

    if isinstance(model, DetectorAdapter):
        return LayerChoice(model.default_layer, model.crop_padding, "detector adapter")
    if _is_bare_detector(model):
        raise InputError(
            f"{type(model).__name__} is a torchvision detector: it takes a list of 3-D images and returns "
            "detections, not a (B, C, H, W) batch -> scores; wrap it: gradcam.targets.DetectorAdapter(model), and "
            "explain a gradcam.targets.DetectionScore target"
        )
    return None


def call_model(
    model: nn.Module, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None = None, during: str | None = None
) -> Any:
    """``model(x, **forward_kwargs)``; any failure of the forward becomes :class:`InputError` with the
    model's message and, where recognisable, the fix (our own errors raised by hooks pass through).
    ``during`` names the pass in the message (``"the layer probe"``)."""
    try:
        return model(x, **(forward_kwargs or {}))
    except GradCAMError:
        raise
    # The forward is the user's model and may raise anything; only the call is covered, and what it
    # raised is the InputError's cause.
    except Exception as error:
        raise forward_error(model, x, error, during) from error


def forward_error(model: nn.Module, x: torch.Tensor, error: BaseException, during: str | None = None) -> InputError:
    """An :class:`InputError` for a failed forward pass: the model's first message line plus a hint."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    where = f" (in {during}, on image 0 of x)" if during else ""
    message = (
        f"the model's forward pass failed{where} on an input of shape {tuple(x.shape)} ({x.dtype}, {x.device}): "
        f"{type(error).__name__}: {first}"
    )
    hint = _forward_hint(model, x, text)
    return InputError(f"{message}; {hint}" if hint else message)


_IMAGE_ARGS = ("x", "input", "inputs", "images", "image", "img", "pixel_values", "tensor", "batch", "args", "data")


def _forward_hint(model: nn.Module, x: torch.Tensor, text: str) -> str:
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors) and x.device.type != "meta":
        return (
            "the model's parameters are on the 'meta' device (they hold no values): materialise them first, e.g. "
            "model.to_empty(device='cpu') then model.load_state_dict(...)"
        )
    floats = [t for t in tensors if t.is_floating_point()]
    if floats and floats[0].dtype != x.dtype and ("type" in text or "dtype" in text):
        return f"x is {x.dtype} but the model's parameters are {floats[0].dtype}: pass x.to({floats[0].dtype})"
    if floats and floats[0].device != x.device:
        return f"x is on {x.device} but the model is on {floats[0].device}: pass x.to('{floats[0].device}')"
    if type(model).__name__ == "KeywordImageInput" and ("input_ids" in text or "specify" in text):
        return (
            "the wrapped model needs its other inputs: pass forward_kwargs={'input_ids': ...} (and attention_mask), "
            "or KeywordImageInput(model, method='get_image_features') to explain the image tower alone"
        )
    try:
        first = next(iter(inspect.signature(model.forward).parameters), None)
    except (TypeError, ValueError):
        first = None
    if (first is not None and first not in _IMAGE_ARGS) or "input_ids" in text:
        return (
            f"the model's first argument is {first!r}, not the image: wrap it, e.g. "
            "gradcam.targets.KeywordImageInput(model) (the image passed as pixel_values=), and give its other inputs "
            "as forward_kwargs={'input_ids': ...}"
        )
    return ""
