"""Smoothing as composition: wrappers around a method, not options of every method.

- :class:`AugSmooth` (pytorch-grad-cam's ``aug_smooth``) and :class:`NoiseSmooth` (SmoothGrad-style) only
  change the INPUT and average the resulting maps, so they wrap any explainer instance, layer method
  or not (a :class:`~gradcam.methods.fusion.MultiLayerCAM`, another wrapper, ...): one implementation each,
  and no method grows options it does not own.
- :class:`EigenSmooth` (pytorch-grad-cam's ``eigen_smooth``) changes how ONE method forms its map
  from its per-channel terms (:meth:`~gradcam.methods.base.LayerMethod.channel_terms`): it wraps a
  layer method and runs it as its eigen-smoothed class
  (:func:`~gradcam.methods.eigencam.eigen_smoothed`, also usable directly as a class, e.g.
  ``MultiLayerCAM(model, method=eigen_smoothed(GradCAM))``).

The averaging wrappers resolve the explained classes once, on the unmodified batch, and explain those
classes in every variant (a top-1 target does not change class from one flip or noise draw to the
next); callable targets are applied to each variant's output as they are. ``raw`` is the mean of the
variants' heatmaps after each is mapped back onto the input's grid (each variant counts the same, as
in pytorch-grad-cam), ``heatmap`` its min-max normalisation (input-space attributions, (B, C, H, W),
are averaged and left signed: ``NoiseSmooth(InputGradient(model))`` is SmoothGrad); ``weights`` is None.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .capture import model_guard
from .errors import MethodError
from .explanation import Explanation
from .methods._noise import check_noise, input_noise
from .methods.base import Explainer, LayerMethod, check_input, finish, normalize, run_model, upsample, usable_input
from .methods.eigencam import eigen_smoothed
from .targets import Target, resolve_target

__all__ = ["AugSmooth", "EigenSmooth", "NoiseSmooth", "eigen_smoothed"]

logger = logging.getLogger("gradcam")


def resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Maps (..., *S) resampled to (..., *size) by :func:`~gradcam.methods.base.upsample` (linear / bilinear /
    trilinear, ``align_corners=False``), whatever leads the position axes."""
    rank = len(size)
    if tuple(maps.shape[-rank:]) == tuple(size):
        return maps
    flat = maps.reshape(-1, 1, *maps.shape[-rank:])
    return upsample(flat, tuple(size)).reshape(*maps.shape[:-rank], *size)


class _MapAverage(Explainer):
    """An explainer averaging ``method``'s heatmaps over variants of the input, each mapped back first."""

    suffix = "smooth"

    def __init__(self, method: Explainer) -> None:
        if not isinstance(method, Explainer):
            raise TypeError(f"method must be an explainer (e.g. gradcam.GradCAM(model)); got {type(method).__name__}")
        super().__init__(method.model, output=method.output, eval_mode=method.eval_mode)
        self.method = method
        self.name = f"{method.name}+{self.suffix}"

    def variants(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
        """(modified input, map from the modified input's grid back to x's) pairs."""
        raise NotImplementedError

    def check_variants(self, clean: torch.Tensor | None, variants: list[torch.Tensor | None]) -> None:
        """Called with the class scores of x and of each variant (None where the output has none)."""

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        x = check_input(x, self.model)
        with model_guard(self.model, self.eval_mode), torch.inference_mode(False), torch.no_grad():
            output = run_model(self.model, usable_input(x), forward_kwargs)
            resolved = resolve_target(target, output, x.shape[0], self.output)
        asked = target if resolved.classes is None else resolved.classes  # (B, k): every variant is multi
        total, count, first, logits = None, 0, None, []
        for inputs, back in self.variants(x):
            e = self.method(inputs, asked, counterfactual=counterfactual, forward_kwargs=forward_kwargs)
            aligned = back((e.heatmap if e.multi_target else e.heatmap.unsqueeze(1)).float())
            total = aligned if total is None else total + aligned
            count, first = count + 1, e if first is None else first
            logits.append(e.logits)
        self.check_variants(resolved.logits, logits)
        raw = total / count
        multi = resolved.multi
        # class-activation maps (B, k, *S) are normalised; input-space attributions (B, k, C, *S) stay signed
        heatmap = normalize(raw, x.dim() - 2) if raw.dim() == x.dim() else raw
        return Explanation(
            heatmap=finish(heatmap, multi),
            raw=finish(raw, multi),
            scores=finish(resolved.scores.detach(), multi),
            method=self.name,
            classes=None if resolved.classes is None else finish(resolved.classes, multi),
            layer=first.layer,
            counterfactual=counterfactual,
            logits=resolved.logits,
        )


def _flip_back(maps: torch.Tensor) -> torch.Tensor:
    return maps.flip(-1)


class AugSmooth(_MapAverage):
    """Test-time augmentation: ``mean_t T_t^-1(map(T_t(x)))`` over horizontal flips, scales and intensities.

    Every combination of ``flips`` (False / True: mirror the last axis), ``scales`` (resize every
    position axis by s, bilinearly, ``align_corners=False``) and ``multipliers`` (x * m) is explained, and
    each heatmap is mapped back through the exact inverse geometry (mirrored back, resized back to x's
    size) before the average. The defaults are pytorch-grad-cam's ``aug_smooth=True`` (ttach's
    ``HorizontalFlip`` x ``Multiply([0.9, 1, 1.1])``, no scaling), whose result this ``raw`` equals;
    ``scales=(0.75, 1.0, 1.25)`` adds multi-scale smoothing (for models that accept other input sizes;
    a token layer's ``reshape`` must then be a callable that handles every grid, not one inferred once).
    Callable targets with spatial state (boxes, masks) are applied to the flipped / resized outputs as
    they are: give class indices, or targets that do not depend on geometry.
    """

    suffix = "aug-smooth"

    def __init__(
        self,
        method: Explainer,
        *,
        flips: Sequence[bool] = (False, True),
        scales: Sequence[float] = (1.0,),
        multipliers: Sequence[float] = (0.9, 1.0, 1.1),
    ) -> None:
        super().__init__(method)
        for label, values in (("flips", flips), ("scales", scales), ("multipliers", multipliers)):
            if len(values) == 0:
                raise ValueError(f"{label} is empty: give at least one value")
        if any(not (isinstance(s, (int, float)) and s > 0) for s in scales):
            raise ValueError(f"scales must be positive numbers; got {tuple(scales)!r}")
        self.flips, self.scales, self.multipliers = tuple(bool(f) for f in flips), tuple(scales), tuple(multipliers)

    def variants(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
        size = tuple(x.shape[2:])
        for flip in self.flips:
            for scale in self.scales:
                scaled = tuple(max(1, round(scale * n)) for n in size)
                resized = resize(x, scaled)
                for multiplier in self.multipliers:
                    inputs = resized.flip(-1) if flip else resized
                    inputs = inputs * multiplier if multiplier != 1 else inputs

                    def back(maps: torch.Tensor, flip: bool = flip) -> torch.Tensor:
                        return resize(maps.flip(-1) if flip else maps, size)

                    yield inputs, back


class NoiseSmooth(_MapAverage):
    """Noise smoothing of any method (SmoothGrad's recipe on maps): ``1/n sum_m map(x + eps_m)``,
    ``eps_m ~ N(0, sigma^2)``.

    ``samples``, ``noise`` (a fraction of each image's value range, SmoothGrad's noise level) /
    ``stdev`` (absolute) and ``seed`` are :class:`~gradcam.SmoothGrad`'s: a seeded CPU generator, so the
    maps are reproducible and the global RNG untouched. This averages MAPS; Smooth Grad-CAM++ as
    published averages the derivatives inside Grad-CAM++ instead (:class:`~gradcam.SmoothGradCAMPlusPlus`).
    """

    suffix = "noise-smooth"

    def __init__(
        self,
        method: Explainer,
        samples: int = 8,
        noise: float = 0.15,
        *,
        stdev: float | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(method)
        check_noise(samples, noise, stdev)
        self.samples, self.noise, self.stdev, self.seed = samples, float(noise), stdev, seed

    def variants(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
        for eps in input_noise(x, self.samples, self.noise, self.stdev, self.seed):
            yield x + eps, _same

    def check_variants(self, clean: torch.Tensor | None, variants: list[torch.Tensor | None]) -> None:
        """A WARNING when, for some image, the model's top-1 class on x stays top-1 in fewer than half of the
        noisy copies: the averaged map then explains what the model makes of the noise, not of the image
        (a model trained without noise, at SmoothGrad's 15 %, can lose its class entirely)."""
        if clean is None or clean.dim() != 2 or any(v is None or v.shape != clean.shape for v in variants):
            return
        top = clean.argmax(dim=1)
        kept = torch.stack([v.argmax(dim=1) == top for v in variants]).float().mean(dim=0)  # (B,)
        lost = (kept < 0.5).nonzero().flatten().tolist()
        if lost:
            level = f"stdev={self.stdev:g}" if self.stdev is not None else f"noise={self.noise:g} of the value range"
            logger.warning(
                "gradcam: noise smoothing (%s): the model's top-1 class survives in only %s of the %d noisy copies "
                "of image(s) %s, so the averaged map explains what the model makes of the noise; lower the noise",
                level,
                ", ".join(f"{float(kept[b]) * len(variants):.0f}" for b in lost[:8]),
                len(variants),
                lost[:8],
            )


def _same(maps: torch.Tensor) -> torch.Tensor:
    return maps


class EigenSmooth(Explainer):
    """Eigen smoothing: the map is the first principal component of the method's channel terms.

    ``L = ReLU((T - mean T) v1)`` instead of ``ReLU(sum_k T_k)``, with ``T_k`` the method's terms
    (``alpha_k A_k``; ``g_k A_k`` for HiResCAM, ...) as a (positions x K) matrix centred over positions
    and ``v1`` its first right singular vector, signed to correlate with the unsmoothed map
    (pytorch-grad-cam's ``eigen_smooth=True``; its sign is the SVD's). ``method`` is a layer-method
    instance; this runs a copy of it (same settings) as ``eigen_smoothed(type(method))``.
    """

    def __init__(self, method: LayerMethod) -> None:
        if not isinstance(method, LayerMethod):
            raise MethodError(
                f"eigen smoothing needs a layer method's channel terms; got {type(method).__name__} (use a "
                "class-activation method such as gradcam.GradCAM)"
            )
        super().__init__(method.model, output=method.output, eval_mode=method.eval_mode)
        self.method = copy.copy(method)
        self.method.__class__ = eigen_smoothed(type(method))
        self.name = self.method.name

    @property
    def layer_name(self) -> str | None:
        return self.method.layer_name

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        return self.method(x, target, counterfactual=counterfactual, forward_kwargs=forward_kwargs)
