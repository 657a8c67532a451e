"""Turning the ``target=`` argument into one differentiable scalar per map.

``target`` may be:

- ``None``: the top-1 predicted class of each image;
- an ``int``: the same class for every image;
- a sequence or 1-D integer tensor of B class indices (one per image);
- a ``(B, k)`` integer tensor: k classes per image, all explained from one forward pass;
- a callable ``output -> (B,)`` tensor of scalars (or ``(B, k)`` for k scalars per image);
- ``TopK(k)``: each image's k highest-scoring classes, chosen and explained from the same forward pass.
- a list of B callables, one per image, each ``row -> scalar`` on that image's row of the output
  (pytorch-grad-cam's ``targets=[ClassifierOutputTarget(c), ...]``; see :class:`PerImageTargets`).

Class-index targets read the scores from the model output, selected by ``output=`` when the model
returns a tuple, a dict or a Hugging Face ``ModelOutput``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from ..errors import TargetError

OutputSelector = Union[str, int, Callable[[Any], torch.Tensor], None]
Target = Union[int, Sequence[int], torch.Tensor, Callable[[Any], torch.Tensor], "TopK", None]

LOGIT_KEYS: tuple[str, ...] = ("logits",)


def select_output(
    output: Any, selector: OutputSelector = None, keys: Sequence[str] = LOGIT_KEYS, what: str = "model output"
) -> torch.Tensor:
    """The tensor a target reads inside a model output; every target and explainer selects through here.

    ``selector`` is a key (dicts and ``ModelOutput``), an index (tuples and lists) or a callable
    ``output -> tensor``. With no selector a tensor is used as is; otherwise the first of ``keys`` the
    output holds as a tensor, as an entry (dicts, ``ModelOutput``) or an attribute (``logits`` by default;
    ``out`` for torchvision segmentation, ``image_embeds`` / ``pooler_output`` for embeddings).
    ``what`` names the output in the error.
    """
    if callable(selector):
        selected = selector(output)
    elif selector is not None:
        try:
            selected = output[selector]
        except (KeyError, IndexError, TypeError):
            raise TargetError(f"output={selector!r} is not in the {what}; {_describe(output)}") from None
    elif isinstance(output, torch.Tensor):
        return output
    else:
        selected = _first_key(output, keys)
        if selected is None:
            raise TargetError(
                f"the {what} has none of {list(keys)}: it is {_describe(output)}; pass output=KEY, output=INDEX "
                "or output=callable (select= for a task target) to choose the tensor, or a callable target"
            )
    if not isinstance(selected, torch.Tensor):
        raise TargetError(f"output selector gave {type(selected).__name__}, expected a tensor")
    return selected


def _first_key(output: Any, keys: Sequence[str]) -> torch.Tensor | None:
    """The first of ``keys`` that ``output`` holds as a tensor (an entry of a mapping, else an attribute)."""
    for key in keys:
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output.keys())}"
    if isinstance(output, (tuple, list)):
        kinds = ", ".join(
            f"[{i}] {tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__}" for i, o in enumerate(output)
        )
        return f"a {type(output).__name__} of {len(output)} items ({kinds})"
    return f"a {type(output).__name__}"


@dataclass(frozen=True)
class TopK:
    """Target: each image's ``k`` highest-scoring classes (maps have a k axis, best class first)."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise TargetError(f"TopK(k) needs an integer k >= 1; got {self.k!r}")


class PerImageTargets:
    """One callable per image, each given only its image's row of the output: ``y_b = t_b(out[b])``.

    This is pytorch-grad-cam's target convention (``ClassifierOutputTarget(c)(row) = row[c]``,
    ``SemanticSegmentationTarget(c, m)(row) = sum(row[c] * m)``), so its ``targets=[...]`` lists work
    unchanged. The rows come from the selected output (``output=``), a plain tensor, or the ``logits``
    / ``out`` entry of a dict or ``ModelOutput``. Each callable must return one scalar.
    """

    def __init__(self, targets: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.targets = tuple(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def for_image(self, index: int, copies: int) -> PerImageTargets:
        """Image ``index``'s target for ``copies`` modified copies of that image (perturbation methods)."""
        return PerImageTargets([self.targets[index]] * copies)

    def rows(self, output: Any) -> torch.Tensor:
        return select_output(output, keys=("logits", "out"))

    def __call__(self, output: Any) -> torch.Tensor:
        rows = self.rows(output)
        if rows.shape[0] != len(self.targets):
            raise TargetError(
                f"{len(self.targets)} per-image targets for a batch of {rows.shape[0]} images; give one callable "
                "per image (pytorch-grad-cam's targets=[ClassifierOutputTarget(c) for c in classes])"
            )
        scores = []
        for b, target in enumerate(self.targets):
            score = target(rows[b])
            if not isinstance(score, torch.Tensor) or score.numel() != 1:
                shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
                raise TargetError(f"per-image target {b} ({target!r}) must return one scalar from its row; got {shape}")
            scores.append(score.reshape(()))
        return torch.stack(scores)

    def __repr__(self) -> str:
        return f"PerImageTargets({list(self.targets)!r})"


def per_image_targets(target: Any) -> Any:
    """``target`` as a :class:`PerImageTargets` when it is a non-empty list or tuple of callables; else unchanged."""
    if (
        isinstance(target, (list, tuple))
        and target
        and all(callable(t) and not isinstance(t, (torch.Tensor, TopK)) for t in target)
    ):
        return PerImageTargets(target)
    return target


@dataclass(frozen=True)
class ResolvedTarget:
    """The scalars to explain: ``scores`` (B, k) with their graph, the classes they belong to, and the
    class scores they were read from (``logits``, detached; None for callable targets)."""

    scores: torch.Tensor
    classes: torch.Tensor | None
    multi: bool
    logits: torch.Tensor | None = None


def class_indices(
    target: Target, batch_size: int, device: torch.device, num_classes: int | None = None
) -> torch.Tensor | None:
    """Validate a class-index target and return it as a (B, k) long tensor on ``device`` (None for top-1).

    The range check against ``num_classes`` runs before the move to ``device``, so targets given on the
    CPU cost no device synchronisation.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise TargetError("target must be a class index, a sequence of B indices, a (B, k) tensor or a callable")
    if isinstance(target, int):
        _check_range(torch.tensor([target]), num_classes)
        return torch.full((batch_size, 1), target, dtype=torch.long, device=device)
    try:
        indices = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"target of type {type(target).__name__} is not a class index, a sequence of class "
            "indices, a (B, k) tensor or a callable"
        ) from None
    if indices.is_inference():  # made under torch.inference_mode(): autograd may not save it for backward
        indices = indices.clone()
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise TargetError(f"target class indices must be integers; got dtype {indices.dtype}")
    if indices.dim() == 0:
        _check_range(indices.reshape(1), num_classes)
        return torch.full((batch_size, 1), int(indices), dtype=torch.long, device=device)
    if indices.dim() > 2:
        raise TargetError(f"target must be 1-D (B,) or 2-D (B, k); got shape {tuple(indices.shape)}")
    if indices.shape[0] != batch_size:
        raise TargetError(
            f"target has {indices.shape[0]} entries but the batch has {batch_size} images; "
            "give one class per image (or a (B, k) tensor)"
        )
    if indices.dim() == 2 and indices.shape[1] == 0:
        raise TargetError("target is a (B, 0) tensor: ask for at least one class per image")
    _check_range(indices, num_classes)
    return indices.to(device=device, dtype=torch.long).reshape(batch_size, -1)


def _check_range(indices: torch.Tensor, num_classes: int | None) -> None:
    if num_classes is None:
        return
    bad = (indices < 0) | (indices >= num_classes)
    if bool(bad.any()):
        raise TargetError(
            f"target class {int(indices[bad][0])} is out of range for {num_classes} classes "
            f"(valid: 0..{num_classes - 1})"
        )


def resolve_target(target: Target, output: Any, batch_size: int, selector: OutputSelector = None) -> ResolvedTarget:
    """Compute the scalars y to explain from the model output (with their autograd graph)."""
    target = per_image_targets(target)
    if isinstance(target, PerImageTargets) and len(target) != batch_size:
        raise TargetError(
            f"target lists {len(target)} per-image callables but the batch has {batch_size} images; give one per "
            "image (pytorch-grad-cam's targets=[ClassifierOutputTarget(c) for c in classes])"
        )
    if callable(target) and not isinstance(target, (torch.Tensor, TopK)):
        scores = target(select_output(output, selector) if selector is not None else output)
        if not isinstance(scores, torch.Tensor):
            raise TargetError(f"the target callable returned {type(scores).__name__}, expected a tensor")
        if scores.dim() not in (1, 2) or scores.shape[0] != batch_size:
            raise TargetError(
                f"the target callable must return (B,) or (B, k) scalars with B={batch_size}; "
                f"got shape {tuple(scores.shape)}"
            )
        return ResolvedTarget(scores.reshape(batch_size, -1), None, multi=scores.dim() == 2)
    logits = select_output(output, selector)
    if logits.dim() != 2 or logits.shape[0] != batch_size:
        raise TargetError(
            f"class-index targets need (B, num_classes) scores; the model gives shape "
            f"{tuple(logits.shape)}; pass a callable target for other outputs"
        )
    num_classes = logits.shape[1]
    if isinstance(target, TopK):
        if target.k > num_classes:
            raise TargetError(f"TopK({target.k}) asks for more classes than the model's {num_classes}")
        indices, multi = logits.detach().topk(target.k, dim=1).indices, True
    else:
        indices = class_indices(target, batch_size, logits.device, num_classes)
        multi = indices is not None and isinstance(target, torch.Tensor) and target.dim() == 2
    if indices is None:
        indices = logits.detach().argmax(dim=1, keepdim=True)
    return ResolvedTarget(logits.gather(1, indices), indices, multi, logits.detach())
