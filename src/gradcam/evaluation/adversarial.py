"""Adversarial images in pixel space: FGSM and PGD under an L-infinity budget.

Both attacks work on pixels ``p`` in [0, 1] (the image as the network sees it after resizing and
cropping, before normalisation) and normalise inside the forward, ``logits = model((p - mean) / std)``
with the model's :attr:`~gradcam.models.LoadedModel.preprocess` mean and std, so ``epsilon`` is in
pixel units: ``4 / 255`` moves every pixel by at most four 8-bit levels. The loss is the cross-entropy
``L(p, c) = -log softmax(logits(p))_c`` summed over the batch (each image's gradient is its own); with
``labels`` a (B, classes) boolean mask of a set ``S`` of classes (several objects in an image, or several
acceptable answers) it is ``L(p, S) = -log sum_{c in S} softmax(logits(p))_c``, which is the
cross-entropy when ``S`` holds one class; an untargeted attack then moves the probability off the set.

- FGSM (Goodfellow et al., ICLR 2015): ``p' = clip_[0,1](p + epsilon * sign(grad_p L(p, c)))`` for the
  true class ``c`` (untargeted: the loss goes up); targeted to class ``t``: ``p - epsilon * sign(grad_p
  L(p, t))`` (the target's loss goes down).
- PGD (Madry et al., ICLR 2018): from ``p_0 = p`` (or ``p + U(-epsilon, epsilon)`` with
  ``random_start``), ``steps`` steps ``p_{i+1} = Proj(p_i + step_size * s * sign(grad_p L(p_i, .)))``,
  ``s = +1`` untargeted / ``-1`` targeted, where ``Proj`` clips to the ball ``|p' - p|_inf <= epsilon``
  and then to [0, 1]. The default ``step_size`` is Madry et al.'s ``2.5 * epsilon / steps``. With
  ``steps=1``, ``step_size=epsilon`` and no random start PGD is FGSM, bit for bit.

The model is left as found: it runs in eval mode under :func:`gradcam.capture.model_guard` (training
flags restored after) and the gradient is taken with ``torch.autograd.grad`` with respect to the
pixels only, so no parameter's ``.grad`` or ``requires_grad`` is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import model_guard
from ..errors import GradCAMError

ATTACKS = ("fgsm", "pgd")

__all__ = ["ATTACKS", "AttackError", "attack", "fgsm", "loss_gradient", "pgd", "pixel_logits"]


class AttackError(GradCAMError):
    """An attack's argument (pixels, labels, epsilon, steps, step size, mean / std) cannot be used."""


def _check(pixels: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or not pixels.is_floating_point():
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise AttackError(f"pixels must be a floating-point (B, C, H, W) tensor in [0, 1]; got {shape}")
    if pixels.numel() and not (float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0):
        raise AttackError(
            f"pixels must lie in [0, 1] (the image before normalisation); got values in "
            f"[{float(pixels.min()):.4g}, {float(pixels.max()):.4g}]"
        )
    if not (math.isfinite(epsilon) and 0.0 <= epsilon <= 1.0):
        raise AttackError(f"epsilon must be in [0, 1] (pixel units: 8/255 = {8 / 255:.5f}); got {epsilon}")
    labels = torch.as_tensor(labels, device=pixels.device)
    if labels.dim() == 2 and labels.dtype == torch.bool and labels.shape[0] == pixels.shape[0]:
        if not bool(labels.any(dim=1).all()):
            raise AttackError("labels: every row of a (B, classes) class mask needs at least one class")
        return labels
    if labels.dim() > 1 or labels.numel() != pixels.shape[0] or labels.is_floating_point():
        raise AttackError(
            f"labels must be {pixels.shape[0]} class indices (B,) or a boolean (B, classes) mask; got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    return labels.long().reshape(-1)


def _channel_values(values: Sequence[float] | None, default: float, pixels: torch.Tensor, name: str) -> torch.Tensor:
    channels = pixels.shape[1]
    values = [default] * channels if values is None else [float(v) for v in values]
    if len(values) != channels:
        raise AttackError(f"{name} must have one value per channel ({channels}); got {len(values)}")
    if name == "std" and not all(v > 0 and math.isfinite(v) for v in values):
        raise AttackError(f"std must be positive and finite; got {values}")
    return torch.tensor(values, dtype=pixels.dtype, device=pixels.device).view(1, channels, 1, 1)


def pixel_logits(
    model: nn.Module, pixels: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """``model((pixels - mean) / std)``: the class scores of [0, 1] pixels (no mean / std: the identity)."""
    mean_t = _channel_values(mean, 0.0, pixels, "mean")
    std_t = _channel_values(std, 1.0, pixels, "std")
    logits = model((pixels - mean_t) / std_t)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AttackError(f"the attacks need a classifier giving (B, classes) scores; the model gives {shape}")
    return logits


def loss_gradient(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """``grad_p sum_b L(p_b, labels_b)`` (class indices: the cross-entropy; a (B, classes) boolean mask:
    ``-log`` of the set's probability), the pixels' gradient only (the model is not touched)."""
    with torch.inference_mode(False), torch.enable_grad():
        p = pixels.detach().clone().requires_grad_(True)
        logits = pixel_logits(model, p, mean, std)
        if labels.dim() == 2:
            if labels.shape[1] != logits.shape[1]:
                raise AttackError(f"labels: a class mask needs {logits.shape[1]} columns; got {labels.shape[1]}")
            inside = logits.masked_fill(~labels, -math.inf).logsumexp(dim=1)
            loss = (logits.logsumexp(dim=1) - inside).sum()
        elif labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise AttackError(f"labels must be class indices in [0, {logits.shape[1]}); got {labels.tolist()}")
        else:
            loss = F.cross_entropy(logits, labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, p)
    return gradient


def fgsm(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    *,
    targeted: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """FGSM: ``clip_[0,1](p + s * epsilon * sign(grad_p L(p, labels)))``, ``s = -1`` when ``targeted``
    (``labels`` are then the target classes). Returns the adversarial pixels, detached."""
    labels = _check(pixels, labels, epsilon)
    sign = -1.0 if targeted else 1.0
    with model_guard(model):
        gradient = loss_gradient(model, pixels, labels, mean, std)
    return (pixels.detach() + (sign * epsilon) * gradient.sign()).clamp(0.0, 1.0)


def pgd(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    targeted: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD (L-infinity): ``steps`` signed-gradient steps of ``step_size`` (default ``2.5 epsilon / steps``),
    each projected onto ``|p' - p|_inf <= epsilon`` and [0, 1]; ``random_start`` draws the start uniformly
    in the ball (from ``generator``, on the CPU). ``targeted``: ``labels`` are targets whose loss goes down."""
    labels = _check(pixels, labels, epsilon)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttackError(f"steps must be an integer >= 1; got {steps!r}")
    step = 2.5 * epsilon / steps if step_size is None else float(step_size)
    if not (math.isfinite(step) and step >= 0.0):
        raise AttackError(f"step_size must be a finite number >= 0 (pixel units); got {step_size}")
    sign = -1.0 if targeted else 1.0
    clean = pixels.detach()
    low, high = clean - epsilon, clean + epsilon
    current = clean
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        current = (clean + epsilon * (2 * noise - 1)).clamp(0.0, 1.0)
    with model_guard(model):
        for _ in range(steps):
            gradient = loss_gradient(model, current, labels, mean, std)
            moved = current + (sign * step) * gradient.sign()
            current = torch.minimum(torch.maximum(moved, low), high).clamp(0.0, 1.0)
    return current


def attack(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    kind: str = "pgd",
    **options: object,
) -> torch.Tensor:
    """:func:`fgsm` or :func:`pgd` by name (``kind`` in :data:`ATTACKS`); ``options`` go to it."""
    if kind == "fgsm":
        unknown = set(options) - {"targeted", "mean", "std"}
        if unknown:
            raise AttackError(f"FGSM takes no {', '.join(sorted(unknown))} (a PGD option)")
        return fgsm(model, pixels, labels, epsilon, **options)  # type: ignore[arg-type]
    if kind == "pgd":
        return pgd(model, pixels, labels, epsilon, **options)  # type: ignore[arg-type]
    raise AttackError(f"attack must be one of {', '.join(ATTACKS)}; got {kind!r}")
