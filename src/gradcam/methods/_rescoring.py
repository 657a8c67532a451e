"""Scoring modified copies of one image without gradients (Score-CAM, Ablation-CAM).

The engine's ``MapContext.rescore`` returns the explained scores of N modified copies of image b.
Score-CAM also needs the class *probability* (softmax over the model's classes), and
Ablation-CAM's fast path feeds ONE copy of the image whose layer output the hook turns into N
ablated rows; :func:`make_rescorer` covers both (``probabilities=True``, ``rows=N``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..targets import OutputSelector, ResolvedTarget, Target, resolve_target
from .base import run_model

Rescorer = Callable[..., torch.Tensor]


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
    model: torch.nn.Module,
    x: torch.Tensor,
    target: Target,
    resolved: ResolvedTarget,
    forward_kwargs: Mapping[str, Any] | None,
    selector: OutputSelector = None,
    *,
    probabilities: bool = False,
) -> Rescorer:
    """``rescore(inputs, b, rows=None) -> (rows, k)``: image b's target scores for modified inputs.

    ``inputs`` (N, C, H, W) are variants of image b; the output is expected to have ``rows`` rows
    (default N). Class-index targets read the same classes as the explained call, as logits or,
    with ``probabilities``, as ``softmax(logits)[c]`` over the model's classes; callable targets
    are applied to the new output (their scalar is used as is).
    """
    batch = x.shape[0]

    def rescore(inputs: torch.Tensor, b: int, rows: int | None = None) -> torch.Tensor:
        n = inputs.shape[0] if rows is None else rows
        kwargs = kwargs_for_image(forward_kwargs, b, batch, inputs.shape[0])
        with torch.no_grad():
            output = run_model(model, inputs, kwargs)
            if resolved.classes is None:
                return resolve_target(target, output, n, selector).scores
            classes = resolved.classes[b : b + 1].expand(n, -1)
            scores = resolve_target(classes, output, n, selector)
            if not probabilities:
                return scores.scores
            return torch.softmax(scores.logits.float(), dim=1).gather(1, classes)

    return rescore
