"""The shared engine: every method is a small subclass that says only what differs.

One call of a layer method does, in order: validate ``x``; find the layer (once); with the model
in eval mode and hooks that live for this call only, run ONE forward pass that records no graph
before the layer; turn the output into scalars ``y`` (``targets.resolve_target``); differentiate
``y`` (``-y`` for counterfactual maps) with respect to the captured activations ``A`` only
(``torch.autograd.grad``, so no parameter gradient is ever computed and the backward stops at the
layer); ask the subclass for its channel weights ``alpha``; ``L = ReLU(sum_k alpha_k A_k)``;
upsampling to the input size; per-map min-max normalisation.

Inputs are images ``(B, C, H, W)``, signals ``(B, C, L)`` or volumes / videos ``(B, C, T, H, W)``; the
layer's activations have the same number of trailing axes, ``(B, K, *S)``. Weights average over all of
``S``, and maps are upsampled linearly, bilinearly or trilinearly (``align_corners=False``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import REENTRANT_CHECKPOINT_FIX, capture_layer, model_guard, reentrant_checkpoint_error
from ..errors import GradCAMError, InputError, LayerError
from ..explanation import Explanation
from ..layers import auto_layer, call_model, resolve_layer
from ..targets import OutputSelector, ResolvedTarget, Target, per_image_targets, resolve_target

logger = logging.getLogger("gradcam")


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
_LAYOUTS = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}
_GRIDS = {1: "(B, K, l)", 2: "(B, K, u, v)", 3: "(B, K, t, u, v)"}
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def spatial_axes(rank: int) -> tuple[int, ...]:
    """The last ``rank`` axes, ``(-rank, ..., -1)``: where a map's positions are, whatever leads them."""
    return tuple(range(-rank, 0))


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Upsampling of (B, k, *S) maps to (B, k, *size): linear, bilinear or trilinear for 1, 2 or 3 axes,
    ``align_corners=False``."""
    if tuple(maps.shape[-len(size) :]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode=_MODES[len(size)], align_corners=False)


def normalize(maps: torch.Tensor, rank: int = 2) -> torch.Tensor:
    """Per-map min-max normalisation over the last ``rank`` axes to [0, 1]; a flat map becomes all zero.

    ``(m - min) / (max - min)``, with the division done per map on the (..., 1, 1) statistics so the
    full-size tensor is touched twice (subtract, multiply) rather than four times. A map whose span is within
    ``8 eps max(|min|, |max|)`` (a few roundings of its own values: a mathematically constant map computed in
    floating point) counts as flat, so rounding noise is never stretched to [0, 1].
    """
    low, high = torch.aminmax(maps.flatten(-rank), dim=-1)
    low, high = low[(..., *[None] * rank)], high[(..., *[None] * rank)]
    span = high - low
    eps = torch.finfo(maps.dtype).eps if maps.is_floating_point() else 0.0
    flat = span <= 8 * eps * torch.maximum(low.abs(), high.abs())
    scale = torch.where(flat, 0, 1 / torch.where(flat, 1, span))
    return (maps - low).mul_(scale)


def first_conv_channels(model: nn.Module) -> tuple[str, int, int] | None:
    """Name, ``in_channels`` and number of spatial axes of the first 1-, 2- or 3-D convolution of ``model``."""
    for name, module in model.named_modules():
        rank = next((r for kind, r in _CONVS.items() if isinstance(module, kind)), None)
        if rank is not None:
            return name, module.in_channels, rank
    return None


def check_input(x: Any, model: nn.Module) -> torch.Tensor:
    """Validate ``x`` as a finite, non-empty, floating batch for ``model``: images (B, C, H, W), signals
    (B, C, L) or volumes / videos (B, C, T, H, W), whose rank matches the model's first convolution."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x must be a torch.Tensor of shape (B, C, H, W); got {type(x).__name__}")
    conv = first_conv_channels(model)
    if x.dim() not in (3, 4, 5) or (conv is not None and x.dim() != conv[2] + 2):
        rank = conv[2] if conv is not None else None
        if rank is not None:
            hint = " (add a batch axis: x.unsqueeze(0))" if x.dim() == rank + 1 else ""
            hint += f"; the model's first convolution '{conv[0]}' is {rank}-D"
            expected = f"a {rank + 2}-D tensor {_LAYOUTS[rank]}"
        else:
            hint = ""
            expected = "a (B, C, L), (B, C, H, W) or (B, C, T, H, W) tensor"
        raise InputError(f"x must be {expected}; got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise InputError(f"x must be a floating-point tensor (normalised image batch); got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise InputError("x is an empty batch (B = 0)")
    if conv is not None and conv[1] != x.shape[1]:
        layout = _LAYOUTS[conv[2]].replace("C", str(conv[1]))
        raise InputError(
            f"x has {x.shape[1]} channels but the model's first convolution '{conv[0]}' expects "
            f"{conv[1]}; x must be {layout}"
        )
    if x.device.type == "cpu":  # on an accelerator the check runs after the work is queued: no mid-call sync
        require_finite(x)
    return x


def require_finite(x: torch.Tensor) -> None:
    """Raise :class:`InputError` if ``x`` holds NaN or infinite values (a device sync on accelerators).

    One reduction: ``sum(x)`` is finite whenever every element is (NaN and inf propagate through a
    sum); only when it is not (a true non-finite value, or an overflow of huge finite values) is the
    exact element-wise test run, so the answer is always the element-wise one.
    """
    if bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        raise InputError("x contains NaN or infinite values")


def usable_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor autograd may use (a copy of an inference-mode tensor); call outside inference mode."""
    return x.clone() if x.is_inference() else x


def no_autocast(x: torch.Tensor):
    """A context that turns autocast off on ``x``'s device: maps are computed in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def run_model(model: nn.Module, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None = None) -> Any:
    """The forward pass ``model(x, **forward_kwargs)``; any failure becomes :class:`InputError` naming the input,
    the model's message and, where recognisable, the fix (see :func:`gradcam.layers.call_model`)."""
    return call_model(model, x, forward_kwargs)


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is (or contains) a ``torch.compile`` wrapper."""
    return any(hasattr(module, "_orig_mod") for module in model.modules())


def compile_friendly():
    """While a ``torch.compile``'d model compiles inside an explanation, keep its backward callable more
    than once (no donated buffers), so k targets can fall back to k backward passes when the compiled
    backward cannot be vmapped. A no-op for eager models and for torch versions without the option."""
    config = getattr(getattr(torch, "_functorch", None), "config", None)
    if config is None or not hasattr(config, "donated_buffer"):
        return contextlib.nullcontext()
    return config.patch(donated_buffer=False)


def finish(tensor: torch.Tensor, multi: bool) -> torch.Tensor:
    """Drop the k axis (dim 1) for single-target calls."""
    return tensor if multi else tensor.squeeze(1)


class Explainer:
    """Base of every method: holds the model and the output selector; subclasses implement ``__call__``.

    ``output`` picks the class scores out of a tuple / dict / ``ModelOutput`` (a key, an index or a
    callable). ``eval_mode`` (default True) runs the explanation with the model in eval mode and
    restores every module's ``training`` flag afterwards.
    """

    name: ClassVar[str] = "explainer"

    def __init__(self, model: nn.Module, *, output: OutputSelector = None, eval_mode: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.output = output
        self.eval_mode = eval_mode

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        """Explain ``target`` for the batch ``x``; ``forward_kwargs`` are passed to ``model(x, **kw)``
        unchanged (token ids, attention masks, ... of multi-input models)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


@dataclass
class MapContext:
    """What a layer method's weights may depend on, for one call."""

    activations: torch.Tensor  # A, (B, K, *S): S = (u, v), (l,) or (t, u, v); float32
    gradients: torch.Tensor | None  # d(sign*y)/dA, (B, k, K, *S), float32; None if not needed
    target: ResolvedTarget
    output: Any  # the raw model output
    sign: float  # +1, or -1 for counterfactual maps
    inputs: torch.Tensor  # x, (B, C, H, W)
    rescore: Callable[[torch.Tensor, int], torch.Tensor]  # (inputs (N,C,H,W) of image b, b) -> (N, k) scores
    features: torch.Tensor | None = None  # what the map sums over; defaults to activations
    request: Target = None  # the target as the caller gave it (methods that run passes of their own)
    forward_kwargs: Mapping[str, Any] | None = None  # the call's forward kwargs, for the same reason

    @property
    def axes(self) -> tuple[int, ...]:
        """The activations' position axes as negative indices (valid for A and for the gradients)."""
        return spatial_axes(self.activations.dim() - 2)


_PEER_KEYWORDS = {
    "target_layers": "layer= (one layer: layer=model.layer4[-1] or layer='layer4'; for several layers fused, "
    "gradcam.MultiLayerCAM(model, layers=[...]))",
    "reshape_transform": "reshape= (a callable applied to the activations and gradients, or gradcam.reshape.TokenGrid; "
    "token models get it automatically when layer=None)",
    "use_cuda": "nothing: the explainer runs on the device of the model and of x",
}


def reject_peer_keywords(cls: str, unknown: Mapping[str, Any]) -> None:
    """A :class:`LayerError` for pytorch-grad-cam's constructor keywords (the migration's most common slip),
    a ``TypeError`` for any other unexpected keyword, as Python would raise."""
    for key in unknown:
        if key in _PEER_KEYWORDS:
            raise LayerError(f"{cls}(model, {key}=...) is pytorch-grad-cam's spelling; here pass {_PEER_KEYWORDS[key]}")
    if unknown:
        raise TypeError(f"{cls}() got an unexpected keyword argument {next(iter(unknown))!r}")


class LayerMethod(Explainer):
    """A class-activation-map method at one layer: ``L = ReLU(sum_k alpha_k A_k)``.

    Subclasses implement :meth:`channel_weights` (and set ``needs_gradients``). ``layer`` is an
    ``nn.Module``, a dotted name (``"layer4.1"``) or None for the automatic choice: the last module
    whose output is a (B, K, u, v) map with u*v > 1 before pooling removes the spatial dims.
    ``reshape`` maps a token layer's output to a grid: a callable (a pure re-indexing, also applied
    to the gradients, e.g. :class:`gradcam.reshape.TokenGrid`), ``"auto"`` (inferred once, from the
    model and the first call's activations, by :func:`gradcam.reshape.reshape_for_output`) or None.
    """

    needs_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__(model, output=output, eval_mode=eval_mode)
        reject_peer_keywords(type(self).__name__, unknown)
        if isinstance(model, torch.jit.ScriptModule):
            raise LayerError(
                f"{type(self).__name__} needs the activations of a layer, and TorchScript modules do not run "
                "Python hooks; save the model with torch.export (a .pt2 file keeps its layers) or use an "
                "input-space method (guided-backprop, gradient, smoothgrad, integrated-gradients)"
            )
        self._layer: tuple[str, nn.Module] | None = None if layer is None else resolve_layer(model, layer)
        if isinstance(reshape, str) and reshape != "auto":
            raise LayerError(f"reshape must be a callable, 'auto' or None; got {reshape!r}")
        self.reshape = reshape

    @property
    def layer_name(self) -> str | None:
        """The layer in use (None until the first call when it is chosen automatically)."""
        return None if self._layer is None else self._layer[0]

    def channel_weights(self, context: MapContext) -> torch.Tensor | None:
        """The channel weights alpha, (B, k, K); None for a method whose ``combine`` has no channel weights."""
        raise NotImplementedError

    def target_gradients(self, scores: torch.Tensor, captured: torch.Tensor, name: str) -> torch.Tensor:
        """The derivatives the weights are built from, (B, k, *A.shape[1:]): ``d scores[:, j] / dA``
        (:func:`layer_gradients`); a second-order method (:class:`~gradcam.ShapleyCAM`) overrides it."""
        return layer_gradients(scores, captured, name)

    def channel_terms(self, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        """The map's summands, (B, k, K, *S): ``combine`` is ``ReLU`` of their sum over K.

        ``alpha_k F_k`` here; element-wise methods (HiResCAM's ``g_k A_k``, ...) override it together
        with ``combine``. Eigen smoothing (:class:`gradcam.smoothing.EigenSmooth`) projects them on their
        first principal component instead of summing them.
        """
        features = context.activations if context.features is None else context.features
        return weights[(..., *[None] * len(context.axes))] * features.unsqueeze(1)

    def combine(self, weights: torch.Tensor, context: MapContext) -> torch.Tensor:
        """``ReLU(sum_k alpha_k F_k)`` for every map, (B, k, *S); F is A unless a method says otherwise."""
        features = context.activations if context.features is None else context.features
        return torch.relu(torch.einsum("bjc,bc...->bj...", weights, features))

    def _forward(
        self, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None, record_graph: bool
    ) -> tuple[str, torch.Tensor, Any]:
        """One forward pass recording no graph before the layer: ``(layer name, captured A, output)``.

        Call inside ``model_guard`` and ``torch.inference_mode(False)``.
        """
        name, layer = self._resolve(x, forward_kwargs)
        with torch.no_grad(), compile_friendly(), capture_layer(layer, name, record_graph=record_graph) as capture:
            output = run_model(self.model, x, forward_kwargs)
        if capture.activations is not None and isinstance(self.reshape, str) and x.dim() != 4:
            self.reshape = None  # token layouts are 2-D grids
        if capture.activations is not None and isinstance(self.reshape, str):  # "auto", on the first call
            from ..reshape import reshape_for_output

            size = (int(x.shape[-2]), int(x.shape[-1]))
            self.reshape = reshape_for_output(self.model, name, capture.activations.shape, size)
            logger.info("gradcam: reshape for layer %s: %s", name, self.reshape)
        if capture.activations is None:
            hint = ""
            if is_compiled(self.model):
                hint = (
                    "; the model is torch.compile'd and was compiled before this explainer's hook existed, so "
                    "the compiled graph skips it: create the explainer before the first compiled call, or "
                    "explain the eager module (model._orig_mod)"
                )
            raise LayerError(f"layer '{name}' was not called during the forward pass{hint}")
        if capture.in_reentrant_checkpoint:
            raise LayerError(
                f"layer '{name}' runs inside torch.utils.checkpoint(..., use_reentrant=True), which keeps no graph "
                f"of its segment, so no gradient can reach the layer; {REENTRANT_CHECKPOINT_FIX}"
            )
        return name, capture.activations, output

    def _rescorer(
        self,
        x: torch.Tensor,
        target: Target,
        resolved: ResolvedTarget,
        forward_kwargs: Mapping[str, Any] | None,
    ) -> Callable[..., torch.Tensor]:
        """A function scoring N modified copies of image b for the same targets, without gradients."""
        return make_rescorer(self.model, x, target, resolved, forward_kwargs, self.output)

    def _as_grid(
        self, captured: torch.Tensor, name: str, batch: int, x: torch.Tensor | None = None, forward_kwargs: Any = None
    ) -> torch.Tensor:
        """The captured output as a (B, K, *S) grid with as many position axes as the input ``x`` has (through
        ``reshape`` when one is given); a grid of one position is a :class:`LayerError` naming the automatic
        choice for ``x``."""
        grid = captured if self.reshape is None else self.reshape(captured)
        via = "" if self.reshape is None else " after reshape"
        rank = 2 if x is None else x.dim() - 2
        if grid.dim() != rank + 2 or grid.shape[0] != batch:
            raise LayerError(
                f"layer '{name}' outputs shape {tuple(grid.shape)}{via}; a class activation map needs a "
                f"{_GRIDS[rank]} feature map with B={batch} for a {_LAYOUTS[rank]} input (token layers need "
                "reshape=...)"
            )
        if math.prod(grid.shape[2:]) == 1:
            suggestion = "layer=None for the automatic choice"
            if x is not None:
                with contextlib.suppress(GradCAMError):
                    suggestion += f", here '{auto_layer(self.model, x, forward_kwargs).name}'"
            raise LayerError(
                f"layer '{name}' outputs a 1x1 map {tuple(grid.shape)}{via}: its spatial dims are pooled away, so a "
                f"map there is one number per image (min-max normalising it shows rounding noise); pass {suggestion}, "
                "or another layer before the pooling"
            )
        return grid

    def _resolve(self, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None = None) -> tuple[str, nn.Module]:
        if self._layer is None:
            choice = auto_layer(self.model, x, forward_kwargs)
            self._layer = resolve_layer(self.model, choice.name)
            if self.reshape is None and choice.reshape is not None:
                self.reshape = choice.reshape
            logger.info("gradcam: layer chosen automatically (%s): %s, reshape %s", choice.rule, choice.name,
                        choice.reshape)  # fmt: skip
        return self._layer

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        x = check_input(x, self.model)
        with model_guard(self.model, self.eval_mode), torch.inference_mode(False):
            x = usable_input(x)
            name, captured, output = self._forward(x, forward_kwargs, record_graph=self.needs_gradients)
            with torch.enable_grad():
                resolved = resolve_target(target, output, x.shape[0], self.output)
            sign = -1.0 if counterfactual else 1.0
            activations = self._as_grid(captured, name, x.shape[0], x, forward_kwargs)
            gradients = None
            if self.needs_gradients:
                gradients = self.target_gradients(sign * resolved.scores, captured, name)
                if self.reshape is not None:
                    gradients = torch.stack([self.reshape(g) for g in gradients.unbind(1)], dim=1)
            with no_autocast(x):
                context = MapContext(
                    activations.detach().float(),
                    None if gradients is None else gradients.float(),
                    resolved,
                    output,
                    sign,
                    x,
                    self._rescorer(x, target, resolved, forward_kwargs),
                    request=target,
                    forward_kwargs=forward_kwargs,
                )
                weights = self.channel_weights(context)
                raw = self.combine(weights, context)
                heatmap = normalize(upsample(raw, tuple(x.shape[2:])), x.dim() - 2)
        if x.device.type != "cpu":
            require_finite(x)
        if gradients is not None:  # after the work is queued: one sync on accelerators
            warn_if_zero(gradients, name)
        multi = resolved.multi
        return Explanation(
            heatmap=finish(heatmap, multi),
            raw=finish(raw, multi),
            scores=finish(resolved.scores.detach(), multi),
            method=self.name,
            weights=None if weights is None else finish(weights, multi),
            classes=None if resolved.classes is None else finish(resolved.classes, multi),
            layer=name,
            counterfactual=counterfactual,
            logits=resolved.logits,
        )


def kwargs_for_image(forward_kwargs: Mapping[str, Any] | None, b: int, batch: int, rows: int) -> dict[str, Any]:
    """``forward_kwargs`` for ``rows`` copies of image b: tensors with a leading batch axis are sliced
    to row b and expanded; everything else is passed unchanged."""
    return {
        key: value[b : b + 1].expand(rows, *value.shape[1:])
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch
        else value
        for key, value in (forward_kwargs or {}).items()
    }


def make_rescorer(
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    resolved: ResolvedTarget,
    forward_kwargs: Mapping[str, Any] | None,
    selector: OutputSelector = None,
    *,
    probabilities: bool = False,
) -> Callable[..., torch.Tensor]:
    """``rescore(inputs, b, rows=None) -> (rows, k)``: image b's target scores for modified inputs.

    ``inputs`` (N, C, H, W) are variants of image b; the output is expected to have ``rows`` rows
    (default N). Class-index targets read the same classes as the explained call, as logits or,
    with ``probabilities``, as ``softmax(logits)[c]`` over the model's classes. Callable targets are
    applied to the new output; a target with per-image state (boxes, masks, references) provides
    ``for_image(b, n)``, the same target for n copies of image b.
    """
    batch = x.shape[0]
    target = per_image_targets(target)

    def rescore(inputs: torch.Tensor, b: int, rows: int | None = None) -> torch.Tensor:
        n = inputs.shape[0] if rows is None else rows
        kwargs = kwargs_for_image(forward_kwargs, b, batch, inputs.shape[0])
        with torch.no_grad():
            output = run_model(model, inputs, kwargs)
            if resolved.classes is None:
                image_target = target.for_image(b, n) if hasattr(target, "for_image") else target
                return resolve_target(image_target, output, n, selector).scores
            classes = resolved.classes[b : b + 1].expand(n, -1)
            scores = resolve_target(classes, output, n, selector)
            if not probabilities:
                return scores.scores
            return torch.softmax(scores.logits.float(), dim=1).gather(1, classes)

    return rescore


def warn_if_zero(gradients: torch.Tensor, name: str) -> None:
    """Log a WARNING when the target's gradient at the layer is identically zero for some image: its
    map is then all zero because the target does not depend on that layer's values (e.g. a ViT's last
    block output or final norm under a class-token classifier: only the class token reaches the head)."""
    zero = gradients.flatten(2).abs().amax(-1) == 0  # (B, k)
    if bool(zero.any()):
        images = sorted({int(b) for b in zero.nonzero()[:, 0]})
        logger.warning(
            "gradcam: the target's gradient at layer '%s' is identically zero for image(s) %s, so the map is all "
            "zero: the target does not depend on this layer's values. Usual causes: a class-token classifier "
            "explained at the last block's output or final norm (only the class token reaches the head: choose "
            "the last block's norm1, or layer=None for the automatic choice); a head whose weights are zero "
            "(torchvision initialises ViT heads so); a target that reads nothing (a segmentation class no pixel "
            "is predicted as, a box no detection matches)",
            name,
            images[:8],
        )


def layer_gradients(scores: torch.Tensor, activations: torch.Tensor, name: str) -> torch.Tensor:
    """``d scores[:, j] / dA`` for each of the k columns, stacked to (B, k, *A.shape[1:]).

    Images are independent in eval mode, so the gradient of the batch sum gives every image's own
    gradient; the k columns share one vectorised backward pass (``is_grads_batched``) through the
    (small) part of the network after the layer. Where that backward cannot be vmapped (a
    ``torch.compile``'d model's kernels), the k columns take k backward passes over one graph.
    """
    if not scores.requires_grad:
        raise LayerError(f"the target does not depend on layer '{name}': no gradient reaches it")
    try:
        grads = _column_gradients(scores, activations)
    except RuntimeError as error:
        diagnosed = reentrant_checkpoint_error(error, f"layer '{name}'")
        if diagnosed is None:
            raise
        raise diagnosed from error
    if grads is None:
        raise LayerError(f"the target does not depend on layer '{name}': no gradient reaches it")
    return grads


def _column_gradients(scores: torch.Tensor, activations: torch.Tensor) -> torch.Tensor | None:
    """``layer_gradients``' backward passes: (B, k, *A.shape[1:]), or None when A is not in the graph."""
    batch, k = scores.shape
    if k == 1:
        (grad,) = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
        grads = None if grad is None else grad.unsqueeze(1)
    else:  # all k columns in ONE backward pass, vectorised over one-hot grad_outputs
        one_hot = torch.eye(k, dtype=scores.dtype, device=scores.device).unsqueeze(1).expand(k, batch, k)
        try:
            (grad,) = torch.autograd.grad(
                scores, activations, one_hot, is_grads_batched=True, allow_unused=True, retain_graph=True
            )
            grads = None if grad is None else grad.transpose(0, 1)
        except RuntimeError as error:  # a backward vmap cannot batch (torch.compile's out= kernels)
            if "atching rule" not in str(error) and "vmap" not in str(error):
                raise
            columns = [
                torch.autograd.grad(scores[:, j].sum(), activations, retain_graph=j < k - 1, allow_unused=True)[0]
                for j in range(k)
            ]
            grads = None if columns[0] is None else torch.stack(columns, dim=1)
    return grads
