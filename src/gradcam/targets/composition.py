"""The base of the task targets, their arithmetic, and the per-image values they share.

A task target is a callable ``output -> (B,)`` (one scalar per image) or ``(B, k)`` (k scalars per
image, all explained from one forward pass). ``t1 + t2``, ``t1 - t2``, ``w * t`` and ``-t`` are
:class:`Combined` targets, ``y = sum_i c_i t_i(output)``; :class:`Stack` puts several targets on the
k axis (one map each).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Union

import torch

from ..errors import TargetError

PerImage = Union[int, Sequence[int], torch.Tensor]


def per_image(value: PerImage, batch: int, device: torch.device, name: str) -> tuple[torch.Tensor, bool]:
    """An int, B ints or a (B, k) integer tensor as a (B, k) long tensor, and whether it had a k axis."""
    if isinstance(value, bool):
        raise TargetError(f"{name} must be an int, B ints or a (B, k) integer tensor; got a bool")
    if isinstance(value, int):
        return torch.full((batch, 1), value, dtype=torch.long, device=device), False
    try:
        indices = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"{name} must be an int, B ints or a (B, k) integer tensor; got {type(value).__name__}"
        ) from None
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise TargetError(f"{name} must hold integers; got dtype {indices.dtype}")
    if indices.dim() == 0:
        return torch.full((batch, 1), int(indices), dtype=torch.long, device=device), False
    if indices.dim() > 2 or indices.shape[0] != batch or (indices.dim() == 2 and indices.shape[1] == 0):
        raise TargetError(
            f"{name} must be an int, B={batch} ints or a (B={batch}, k>=1) tensor; got shape {tuple(indices.shape)}"
        )
    return indices.to(device=device, dtype=torch.long).reshape(batch, -1), indices.dim() == 2


def finish(scores: torch.Tensor, multi: bool) -> torch.Tensor:
    """(B, k) scores as given, or (B,) when the target had no k axis (k = 1)."""
    return scores if multi else scores[:, 0]


def check_range(indices: torch.Tensor, size: int, name: str, what: str) -> None:
    """Raise naming ``name`` when an index is outside ``0..size - 1``."""
    bad = (indices < 0) | (indices >= size)
    if bool(bad.any()):
        raise TargetError(f"{name} {int(indices[bad][0])} is out of range for {size} {what} (valid: 0..{size - 1})")


def _image_rows(value: Any, ndim: int, index: int, copies: int) -> Any:
    """A per-image value (one row per image once it has ``ndim`` dims) as ``copies`` rows of image ``index``."""
    if value is None or isinstance(value, (bool, int, float, Mapping)):
        return value
    rows = torch.as_tensor(value)
    if rows.dim() < ndim:
        return value
    if not 0 <= index < rows.shape[0]:
        raise TargetError(f"image index {index} is out of range for a target given for {rows.shape[0]} images")
    return rows[index : index + 1].expand(copies, *rows.shape[1:])


def _scalars(target: Callable[[Any], torch.Tensor], output: Any) -> torch.Tensor:
    scores = target(output)
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (1, 2):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TargetError(f"a combined target must give (B,) or (B, k) scalars; {target!r} gave {shape}")
    return scores


class TaskTarget:
    """Base of the task targets: ``target(output) -> (B,)`` or ``(B, k)`` differentiable scalars.

    Arithmetic builds new targets: ``a + b``, ``a - b``, ``w * a``, ``-a`` (same shapes required);
    :class:`Stack` puts several targets on a k axis.

    :meth:`for_image` gives the same target for N modified copies of one image of the batch (what
    perturbation methods rescore); ``_per_image`` names the attributes that hold one row per image
    once they have that many dims.
    """

    _per_image: ClassVar[dict[str, int]] = {}

    def __call__(self, output: Any) -> torch.Tensor:
        raise NotImplementedError

    def for_image(self, index: int, copies: int) -> TaskTarget:
        """This target for ``copies`` copies of image ``index``: per-image values keep row ``index``."""
        clone = copy.copy(self)
        for attr, ndim in self._per_image.items():
            setattr(clone, attr, _image_rows(getattr(self, attr), ndim, index, copies))
        return clone

    def __add__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        return Combined((self, other), (1.0, 1.0))

    def __radd__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return Combined((self,), (1.0,))  # sum([t1, t2, ...]) starts from 0
        return Combined((other, self), (1.0, 1.0))

    def __sub__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        return Combined((self, other), (1.0, -1.0))

    def __rsub__(self, other: Callable[[Any], torch.Tensor]) -> Combined:
        return Combined((other, self), (1.0, -1.0))

    def __neg__(self) -> Combined:
        return Combined((self,), (-1.0,))

    def __mul__(self, weight: float) -> Combined:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        return Combined((self,), (float(weight),))

    __rmul__ = __mul__


class Combined(TaskTarget):
    """``y = sum_i c_i t_i(output)``: a weighted sum of targets with equal output shapes."""

    def __init__(self, terms: Sequence[Callable[[Any], torch.Tensor]], coefficients: Sequence[float]) -> None:
        if len(terms) != len(coefficients) or not terms:
            raise TargetError("Combined needs as many coefficients as terms, and at least one term")
        for term in terms:
            if not callable(term):
                raise TargetError(f"a combined target term must be callable; got {type(term).__name__}")
        self.terms = tuple(terms)
        self.coefficients = tuple(float(c) for c in coefficients)

    def for_image(self, index: int, copies: int) -> Combined:
        terms = tuple(t.for_image(index, copies) if isinstance(t, TaskTarget) else t for t in self.terms)
        return Combined(terms, self.coefficients)

    def __call__(self, output: Any) -> torch.Tensor:
        total = None
        for term, coefficient in zip(self.terms, self.coefficients):
            scores = _scalars(term, output)
            if total is not None and scores.shape != total.shape:
                raise TargetError(
                    f"combined targets must give equal shapes; got {tuple(total.shape)} and {tuple(scores.shape)}"
                )
            total = coefficient * scores if total is None else total + coefficient * scores
        return total

    def __repr__(self) -> str:
        return " + ".join(f"{c:g}*{t!r}" for t, c in zip(self.terms, self.coefficients))


class Stack(TaskTarget):
    """k targets side by side: ``(B, k)`` scalars, one map each from one forward pass."""

    def __init__(self, *targets: Callable[[Any], torch.Tensor]) -> None:
        if not targets:
            raise TargetError("Stack needs at least one target")
        self.targets = targets

    def for_image(self, index: int, copies: int) -> Stack:
        return Stack(*(t.for_image(index, copies) if isinstance(t, TaskTarget) else t for t in self.targets))

    def __call__(self, output: Any) -> torch.Tensor:
        columns = [_scalars(t, output) for t in self.targets]
        return torch.cat([c if c.dim() == 2 else c[:, None] for c in columns], dim=1)

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.targets))})"
