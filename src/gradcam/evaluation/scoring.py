"""Scoring a metric's target on (modified) images: the explainers' targets -- class indices or a callable
``output -> (B,)`` (:mod:`gradcam.targets`) -- turned into one score per image, in batched forward passes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import nn

from ..capture import model_guard
from ..errors import TargetError
from ..targets import OutputSelector, PerImageTargets, TopK, per_image_targets, select_output

__all__ = ["SCORES", "MetricTarget", "target_scores"]

SCORES = ("probability", "logit")

MetricTarget = Union[int, Sequence[int], torch.Tensor, Callable[[Any], torch.Tensor], Sequence[Callable]]


def _check_target(target: Any, batch: int, device: torch.device) -> torch.Tensor | Callable[[Any], torch.Tensor]:
    """``target`` as B class indices (a long tensor) or a callable ``output -> (B,)`` (a list of B callables
    becomes a :class:`~gradcam.targets.PerImageTargets`)."""
    target = per_image_targets(target)
    if isinstance(target, TopK):
        raise TargetError("metrics need fixed targets: pass the class indices TopK chose (Explanation.classes)")
    if callable(target) and not isinstance(target, torch.Tensor):
        if isinstance(target, PerImageTargets) and len(target) != batch:
            raise TargetError(f"target lists {len(target)} per-image callables for {batch} images; give one per image")
        return target
    try:
        classes = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"target must be class indices or a callable output -> (B,) scores; got {type(target).__name__}"
        ) from None
    if classes.is_floating_point() or classes.dtype == torch.bool:
        raise TargetError(f"target class indices must be integers; got dtype {classes.dtype}")
    classes = classes.long().reshape(-1)
    if classes.numel() != batch:
        raise TargetError(f"target must give one class index per image ({batch}); got {classes.numel()}")
    return classes


def _for_image(target: Any, image: int, copies: int) -> Any:
    """Image ``image``'s target for ``copies`` modified copies of it: its class, or the callable's
    ``for_image(image, copies)`` (per-image masks, boxes, references keep that image's row)."""
    if isinstance(target, torch.Tensor):
        return target[image]
    return target.for_image(image, copies) if hasattr(target, "for_image") else target


def _callable_scores(target: Callable[[Any], torch.Tensor], output: Any, rows: int) -> torch.Tensor:
    scores = target(output)
    if not isinstance(scores, torch.Tensor) or scores.reshape(-1).numel() != rows or scores.dim() > 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TargetError(f"the target callable must give one score per image, ({rows},); got {shape}")
    return scores.reshape(rows)


def target_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    target: MetricTarget,
    *,
    score: str = "probability",
    output: OutputSelector = None,
    batch_size: int = 64,
    image: int | None = None,
) -> torch.Tensor:
    """The score each input gives its target, (N,), float32, in forward passes under ``no_grad`` in eval mode.

    ``target``: a class index, N class indices, a callable ``output -> (N,)`` (a task target such as
    :class:`~gradcam.targets.SegmentationScore`, :class:`~gradcam.targets.DetectionScore`,
    :class:`~gradcam.targets.EmbeddingSimilarity`; applied to the output selected by ``output=`` when given),
    or a list of N per-image callables. Class indices read ``softmax(logits)[c]`` (``score="probability"``)
    or ``logits[c]`` (``"logit"``) in chunks of ``batch_size``; a callable's value is the score as is.

    ``image=b``: every input is a modified copy of image ``b`` of the batch the target was given for
    (what deletion, occlusion and ROAD rescore): class indices use row ``b``, callables ``for_image(b, n)``
    per chunk of n copies. Without ``image`` a callable describes the N inputs together and sees them in
    one forward pass (as the explainer did).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    count = inputs.shape[0]
    target = per_image_targets(target)
    if image is not None and isinstance(target, torch.Tensor) and target.dim() > 0 and target.numel() > 1:
        target = target.reshape(-1)[image]
    if not callable(target) or isinstance(target, torch.Tensor):
        classes = torch.as_tensor(target, device=inputs.device).long().reshape(-1)
        target = classes.expand(count) if classes.numel() == 1 else classes
    elif image is None:
        batch_size = max(count, 1)
    out = torch.empty(count, device=inputs.device)
    with model_guard(model), torch.no_grad():
        for start in range(0, count, batch_size):
            result = model(inputs[start : start + batch_size])
            rows = min(batch_size, count - start)
            if isinstance(target, torch.Tensor):
                logits = select_output(result, output).float()
                if logits.dim() != 2:
                    raise ValueError(
                        f"class-index targets need (N, num_classes) scores; got shape {tuple(logits.shape)} "
                        "(pass a callable target, e.g. a gradcam.targets target, for other outputs)"
                    )
                values = logits.softmax(dim=1) if score == "probability" else logits
                out[start : start + rows] = values.gather(1, target[start : start + rows, None])[:, 0]
                continue
            chosen = select_output(result, output) if output is not None else result
            scorer = target if image is None else _for_image(target, image, rows)
            out[start : start + rows] = _callable_scores(scorer, chosen, rows).float()
    return out
