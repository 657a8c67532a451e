"""Token layers as (B, K, u, v) grids, so Grad-CAM works on transformer backbones.

A class activation map needs a feature map ``A`` of shape (B, K, u, v). Transformer layers give
either tokens ``(B, N, C)`` -- ViT, DeiT, BEiT, the CLIP vision tower, HF Swin -- or channels-last
grids ``(B, h, w, C)`` (torchvision / timm Swin). ``LayerMethod(model, layer, reshape=...)`` maps the
captured tensor to a grid and applies the *same* function to the gradients, so a reshape must be a
pure re-indexing (select, permute, reshape): every grid cell is one token, nothing is mixed.

Token layout (the convention of every ViT implementation: the patch convolution's output is
flattened row-major, then prefix tokens are concatenated in front)::

    tokens[:, :P]          prefix tokens: class, distillation, register tokens (dropped)
    tokens[:, P + i*w + j] the patch in row i, column j  ->  grid[:, :, i, j]

The grid size comes, in this order of preference, from an explicit ``grid=(h, w)``; from the model
(``auto_reshape``: prefix tokens counted from the model's token parameters, ``h = H // patch``,
``w = W // patch`` from the input size and the patch-embedding convolution); or from ``N`` alone
(the fewest prefix tokens, at most ``MAX_PREFIX``, that leave a square number of patches). The
last rule cannot tell 9 = 3x3 patches from 4 = 2x2 patches + 5 registers: pass ``prefix=`` or use
:func:`auto_reshape` when a model has register tokens.

Which token layer to explain: in a ViT the classifier reads only the class token of the last
block's output, so the patch tokens of that output receive no gradient and their map is zero.
Grad-CAM on ViTs therefore uses the input of the last block's attention, its first LayerNorm
(:func:`token_layer`), as in pytorch-grad-cam's ViT recipe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .capture import model_guard
from .errors import LayerError
from .layers import call_model, resolve_layer

MAX_PREFIX = 16
Layout = Literal["tokens", "channels_last"]

# Parameters that hold one prefix token each (timm, torchvision and Hugging Face spellings).
_ONE_TOKEN = ("cls_token", "class_token", "class_embedding", "dist_token", "distillation_token")
# Parameters that hold several prefix tokens, shaped (1, n, C) or (n, C).
_MANY_TOKENS = ("reg_token", "register_tokens")
# The first LayerNorm of a transformer block (before attention), per library.
_PRE_ATTENTION_NORMS = ("norm1", "layernorm_before", "layer_norm1", "ln_1", "norm_1", "ln1")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def infer_prefix(num_tokens: int, max_prefix: int = MAX_PREFIX) -> int:
    """The fewest leading tokens (<= ``max_prefix``) whose removal leaves a square number of patches."""
    for prefix in range(min(max_prefix, num_tokens - 1) + 1):
        if _is_square(num_tokens - prefix):
            return prefix
    raise LayerError(
        f"cannot lay {num_tokens} tokens on a square grid after dropping up to {max_prefix} prefix "
        "tokens; pass grid=(h, w) (and prefix=P) to TokenGrid"
    )


def tokens_to_grid(
    tokens: torch.Tensor, grid: tuple[int, int] | None = None, prefix: int | None = None
) -> torch.Tensor:
    """``(B, N, C) -> (B, C, h, w)``: drop ``prefix`` leading tokens, lay the rest row-major on h x w.

    ``grid[:, c, i, j] = tokens[:, prefix + i*w + j, c]``. With ``grid`` only, ``prefix = N - h*w``;
    with ``prefix`` only, the remaining patches must form a square; with neither, see
    :func:`infer_prefix`.
    """
    if tokens.dim() != 3:
        raise LayerError(f"token reshape needs a (B, N, C) tensor; got shape {tuple(tokens.shape)}")
    batch, num, channels = tokens.shape
    if prefix is not None and (isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0):
        raise LayerError(f"prefix must be an integer >= 0; got {prefix!r}")
    if grid is None:
        prefix = infer_prefix(num) if prefix is None else prefix
        if not _is_square(num - prefix):
            raise LayerError(
                f"{num} tokens minus {prefix} prefix tokens = {num - prefix} patches, not a square "
                "number; pass grid=(h, w)"
            )
        side = math.isqrt(num - prefix)
        height, width = side, side
    else:
        height, width = _check_grid(grid)
        prefix = num - height * width if prefix is None else prefix
        if prefix < 0 or prefix + height * width != num:
            raise LayerError(
                f"grid {height}x{width} with {prefix} prefix tokens needs {max(prefix, 0) + height * width} "
                f"tokens; the layer gives {num}"
            )
    return tokens[:, prefix:, :].transpose(1, 2).reshape(batch, channels, height, width)


def channels_last_to_grid(features: torch.Tensor) -> torch.Tensor:
    """``(B, h, w, C) -> (B, C, h, w)`` (Swin-style channels-last feature maps)."""
    if features.dim() != 4:
        raise LayerError(f"channels-last reshape needs a (B, h, w, C) tensor; got shape {tuple(features.shape)}")
    return features.permute(0, 3, 1, 2)


def _check_grid(grid: Any) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise LayerError(f"grid must be a pair (h, w) of positive integers; got {grid!r}") from None
    if height < 1 or width < 1:
        raise LayerError(f"grid must be a pair (h, w) of positive integers; got {grid!r}")
    return height, width


@dataclass(frozen=True)
class TokenGrid:
    """A reshape for ``LayerMethod(..., reshape=TokenGrid(...))``: tokens or channels-last to (B, C, h, w).

    ``layout="tokens"``: (B, N, C) tokens, see :func:`tokens_to_grid` (``grid`` and ``prefix`` are
    overrides; left None they are inferred from N). ``layout="channels_last"``: (B, h, w, C) grids.
    """

    layout: Layout = "tokens"
    grid: tuple[int, int] | None = None
    prefix: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("tokens", "channels_last"):
            raise LayerError(f"layout must be 'tokens' or 'channels_last'; got {self.layout!r}")
        if self.grid is not None:
            object.__setattr__(self, "grid", _check_grid(self.grid))
        if self.prefix is not None and (
            isinstance(self.prefix, bool) or not isinstance(self.prefix, int) or self.prefix < 0
        ):
            raise LayerError(f"prefix must be an integer >= 0; got {self.prefix!r}")

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        if self.layout == "channels_last":
            return channels_last_to_grid(features)
        return tokens_to_grid(features, self.grid, self.prefix)


def prefix_tokens(model: nn.Module) -> int | None:
    """Number of prefix tokens the model puts before its patch tokens, or None if it shows none.

    Read from ``num_prefix_tokens`` (timm) or counted from the token parameters of the first module
    that has any: class token (``cls_token``, ``class_token``, ``class_embedding``), distillation
    token (``dist_token``, ``distillation_token``), register tokens (``reg_token``, ``register_tokens``).
    """
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
    for module in model.modules():
        found, count = False, 0
        for attr in _ONE_TOKEN:
            if isinstance(getattr(module, attr, None), torch.Tensor):
                found, count = True, count + 1
        for attr in _MANY_TOKENS:
            value = getattr(module, attr, None)
            if isinstance(value, torch.Tensor) and value.dim() >= 2:
                found, count = True, count + value.shape[-2]
        if found:
            return count
    return None


def patch_size(model: nn.Module) -> tuple[int, int] | None:
    """The patch size of the first patch-embedding convolution (a Conv2d with stride == kernel > 1)."""
    for module in model.modules():
        if (
            isinstance(module, nn.Conv2d)
            and tuple(module.kernel_size) == tuple(module.stride)
            and (module.stride[0] > 1 or module.stride[1] > 1)
        ):
            return int(module.stride[0]), int(module.stride[1])
    return None


def token_layer(model: nn.Module) -> str:
    """The default token layer of a transformer: the first LayerNorm of its last block.

    That is the input of the last attention, where patch tokens still reach the class token (the
    last block's output patch tokens do not reach a class-token classifier at all). In image-text
    models (CLIP) only modules whose path names a ``vision`` / ``visual`` tower are considered.
    """
    found = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm) and name.rsplit(".", 1)[-1] in _PRE_ATTENTION_NORMS
    ]
    vision = [name for name in found if "vision" in name or "visual" in name]
    found = vision or found  # image-text models: the image tower's blocks, not the text tower's
    if not found:
        raise LayerError(
            f"no transformer block LayerNorm ({', '.join(_PRE_ATTENTION_NORMS)}) found in "
            f"{type(model).__name__}; pass layer= explicitly"
        )
    return found[-1]


def _plausible(size: tuple[int, int], grid: tuple[int, int]) -> bool:
    """Is ``grid`` the spatial size of a feature map of an input of ``size`` at one common stride?"""
    (height, width), (rows, cols) = size, grid
    if rows < 1 or cols < 1 or rows > height or cols > width:
        return False
    for stride in {max(1, height // rows), max(1, round(height / rows)), max(1, -(-height // rows))}:
        if abs(height / stride - rows) <= 1 and abs(width / stride - cols) <= 1:
            return True
    return False


def _norm_widths(module: nn.Module) -> set[int]:
    return {int(m.normalized_shape[-1]) for m in module.modules() if isinstance(m, nn.LayerNorm) and m.normalized_shape}


def _probe_shape(
    model: nn.Module, layer: nn.Module, name: str, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None
) -> tuple[int, ...]:
    shapes: list[tuple[int, ...]] = []

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            shapes.append(tuple(output.shape))

    handle = layer.register_forward_hook(hook)
    try:
        with model_guard(model), torch.no_grad():
            call_model(model, x, forward_kwargs, "the reshape probe")
    finally:
        handle.remove()
    if not shapes:
        raise LayerError(f"layer '{name}' did not output a tensor during the forward pass")
    return shapes[-1]


def auto_reshape(
    model: nn.Module,
    layer: nn.Module | str,
    x: torch.Tensor,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> TokenGrid | None:
    """The reshape ``layer`` needs for inputs like ``x`` (None for a (B, K, u, v) map already): one
    no-grad forward pass (eval mode, the hook removed afterwards) reads the layer's output shape, and
    :func:`reshape_for_output` decides. (An explainer given ``reshape="auto"`` decides from its first
    call's activations instead, without that extra pass.)
    """
    name, module = resolve_layer(model, layer)
    shape = _probe_shape(model, module, name, x[:1], _first(forward_kwargs, x.shape[0]))
    return reshape_for_output(model, name, shape, (int(x.shape[-2]), int(x.shape[-1])))


def reshape_for_output(
    model: nn.Module, layer: str, shape: Sequence[int], size: tuple[int, int]
) -> TokenGrid | None:
    """The reshape for ``layer`` of ``model`` when it outputs ``shape`` for an input of ``size`` (H, W):

    - ``(B, K, u, v)``: None, already a map;
    - ``(B, N, C)`` tokens: the prefix count from :func:`prefix_tokens` (unknown: any of 0..MAX_PREFIX,
      fewest first); the grid is ``(H // p, W // p)`` for the patch size p of :func:`patch_size` -- or
      that grid halved s times, for the later stages of hierarchical models (HF Swin) -- when it
      accounts for the tokens; else the grid of ``N - prefix`` cells with the input's aspect ratio
      (square inputs: a square grid); else, with a known prefix, the closest plausible grid.
    - ``(B, a, b, C)``: channels-last when ``(a, b)`` and not ``(b, C)`` is a grid an input of size
      (H, W) can give at one stride; when both could be, channels-last only if the layer normalises
      its last dim (a LayerNorm of width C inside it) and not its second.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3:
        return _token_grid(model, layer, shape[1], size)
    if len(shape) == 4:
        first = _plausible(size, (shape[2], shape[3]))
        last = _plausible(size, (shape[1], shape[2]))
        if last and not first:
            return TokenGrid("channels_last")
        if last and first:
            widths = _norm_widths(resolve_layer(model, layer)[1])
            if shape[3] in widths and shape[1] not in widths:
                return TokenGrid("channels_last")
        return None
    raise LayerError(
        f"layer '{layer}' outputs shape {shape}; expected (B, N, C) tokens, a (B, h, w, C) or a (B, K, u, v) map"
    )


def _token_grid(model: nn.Module, name: str, num: int, size: tuple[int, int]) -> TokenGrid:
    """The grid and prefix of ``num`` tokens for an input of ``size`` (see :func:`auto_reshape`)."""
    known = prefix_tokens(model)
    prefixes = [known] if known is not None else list(range(min(MAX_PREFIX, num - 1) + 1))
    patch = patch_size(model)
    if patch is not None:  # the patch grid, or that grid halved s times (hierarchical stages)
        rows, cols = size[0] // patch[0], size[1] // patch[1]
        while rows >= 1 and cols >= 1:
            if num - rows * cols in prefixes:
                return TokenGrid("tokens", (rows, cols), num - rows * cols)
            if rows * cols < num or rows * cols == 1:
                break
            rows, cols = -(-rows // 2), -(-cols // 2)
    for prefix in prefixes:  # a grid with exactly the input's aspect ratio
        count = num - prefix
        for rows in range(1, count + 1):
            if count % rows == 0 and rows * size[1] == (count // rows) * size[0]:
                return TokenGrid("tokens", (rows, count // rows), prefix)
    if known is not None and known < num:  # the closest plausible grid
        count = num - known
        pairs = [(r, count // r) for r in range(1, count + 1) if count % r == 0 and _plausible(size, (r, count // r))]
        if pairs:
            aspect = math.log(size[0] / size[1])
            rows, cols = min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - aspect))
            return TokenGrid("tokens", (rows, cols), known)
    hint = f"with {known} prefix tokens " if known is not None else ""
    raise LayerError(
        f"layer '{name}' gives {num} tokens; {hint}they do not form a grid for input size {size}; "
        "pass reshape=TokenGrid(grid=(h, w), prefix=P)"
    )


def _first(forward_kwargs: Mapping[str, Any] | None, batch: int) -> dict[str, Any]:
    return {
        key: value[:1] if isinstance(value, torch.Tensor) and value.shape[:1] == (batch,) else value
        for key, value in (forward_kwargs or {}).items()
    }


__all__ = [
    "MAX_PREFIX",
    "TokenGrid",
    "auto_reshape",
    "channels_last_to_grid",
    "infer_prefix",
    "patch_size",
    "prefix_tokens",
    "reshape_for_output",
    "token_layer",
    "tokens_to_grid",
]
