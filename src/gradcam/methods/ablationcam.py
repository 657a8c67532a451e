"""Ablation-CAM (Desai & Ramaswamy, WACV 2020)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..capture import forward_hook
from ..errors import InputError, LayerError, MethodError, TargetError
from ..targets import OutputSelector, ResolvedTarget, Target
from ._rescoring import Rescorer, make_rescorer
from .base import LayerMethod, MapContext
from .scorecam import check_batch_size

logger = logging.getLogger("gradcam")


@contextmanager
def ablate_channels(layer: nn.Module, name: str, channels: torch.Tensor, value: float) -> Iterator[list[int]]:
    """While active, ``layer`` outputs one row per entry of ``channels``: its (first) output row with
    that channel set to ``value`` (entry -1: left intact). Yields a one-item list counting the
    layer's calls. The hook is removed on exit."""
    calls = [0]

    def hook(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor:
        calls[0] += 1
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise LayerError(f"layer '{name}' must output a (B, K, ...) tensor to ablate its channels")
        rows = output[:1].expand(channels.shape[0], *output.shape[1:]).clone()
        wanted = channels.to(rows.device)
        keep = wanted >= 0
        rows[torch.arange(wanted.shape[0], device=rows.device)[keep], wanted[keep]] = value
        return rows

    with forward_hook(layer, hook):
        yield calls
    if calls[0] > 1:
        raise MethodError(
            f"layer '{name}' is called {calls[0]} times in one forward pass (a reused module, such as the "
            "ReLU of a ResNet block); Ablation-CAM needs a layer called once: choose its parent block"
        )


class AblationCAM(LayerMethod):
    """Ablation-CAM: ``w_k = (y_c - y_c^k) / y_c``, ``L = ReLU(sum_k w_k A_k)``, no gradients.

    ``y_c^k`` is the target's score when channel k of the layer output is set to ``value`` (0, the
    paper's ablation). The scores come from forward passes with a hook that replaces the layer's
    output by ``batch_size`` ablated copies at a time. Fast path: the model is fed ONE copy of the
    image and the hook expands the layer output to the ablated rows, so only the part of the
    network after the layer runs on the batch (skip connections from before the layer broadcast).
    Models that cannot broadcast there (a concatenation with an earlier tensor) fall back to feeding
    ``batch_size`` copies of the image; both give the same numbers. ``y_c`` is recomputed the same
    way (one unablated row), so the differences are exact.

    We divide by ``|y_c|`` (the paper's ``y_c`` for the positive scores it explains; dividing by a
    negative score would flip every weight) and by 1 when ``y_c = 0``; a positive factor per map does
    not change the normalised heatmap. ``counterfactual=True`` negates the weights.
    Token layers (``reshape=``) are not supported.
    """

    name = "ablationcam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        batch_size: int = 32,
        value: float = 0.0,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
        **unknown: Any,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape, **unknown)
        if reshape is not None:
            raise MethodError("Ablation-CAM ablates channels of a (B, K, u, v) layer output; reshape= is not supported")
        self.batch_size = check_batch_size(batch_size)
        self.value = float(value)
        self.broadcast: bool | None = None  # learnt on the first call: does the fast path work?

    def _resolve(self, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None = None) -> tuple[str, nn.Module]:
        resolved = super()._resolve(x, forward_kwargs)
        if self.reshape is not None:  # the automatic choice is a token layer (ViT, Swin, ...)
            raise MethodError(
                f"the automatic layer of {type(self.model).__name__} is the token layer '{resolved[0]}'; Ablation-CAM "
                "ablates channels of a (B, K, u, v) map: pass layer= a convolutional map, or use GradCAM"
            )
        return resolved

    def _rescorer(
        self,
        x: torch.Tensor,
        target: Target,
        resolved: ResolvedTarget,
        forward_kwargs: Mapping[str, Any] | None,
    ) -> Rescorer:
        return make_rescorer(self.model, x, target, resolved, forward_kwargs, self.output)

    def _scores(self, context: MapContext, b: int, channels: torch.Tensor) -> torch.Tensor:
        """Image b's target scores with each listed channel ablated (-1: none), (n, k)."""
        name, layer = self._layer
        image = context.inputs[b : b + 1]
        n = channels.shape[0]
        if n == 1:
            with ablate_channels(layer, name, channels, self.value):
                return context.rescore(image, b)
        if self.broadcast is not False:
            try:
                with ablate_channels(layer, name, channels, self.value):
                    scores = context.rescore(image, b, n)
                self.broadcast = True
                return scores
            except (InputError, TargetError, RuntimeError) as error:
                if self.broadcast:
                    raise
                self.broadcast = False
                logger.debug("gradcam: Ablation-CAM feeds %d image copies per pass (%s)", n, error)
        with ablate_channels(layer, name, channels, self.value):
            return context.rescore(image.expand(n, *image.shape[1:]), b)

    def channel_scores(self, context: MapContext) -> tuple[torch.Tensor, torch.Tensor]:
        """``y_c`` (B, k) and ``y_c^k`` (B, K, k), ``batch_size`` ablated rows per forward pass."""
        batch, channels = context.activations.shape[:2]
        order = torch.arange(-1, channels)  # -1: the unablated score
        intact, ablated = [], []
        for b in range(batch):
            chunks = [order[s : s + self.batch_size] for s in range(0, channels + 1, self.batch_size)]
            rows = torch.cat([self._scores(context, b, chunk) for chunk in chunks]).float()
            intact.append(rows[0])
            ablated.append(rows[1:])
        return torch.stack(intact), torch.stack(ablated)

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        score, ablated = self.channel_scores(context)  # (B, k), (B, K, k)
        scale = torch.where(score != 0, score.abs(), 1).unsqueeze(1)
        return context.sign * ((score.unsqueeze(1) - ablated) / scale).transpose(1, 2)
