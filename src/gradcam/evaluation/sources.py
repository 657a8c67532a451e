"""Where evaluated maps come from: every registered method and trivial baselines.

A :class:`MapSource` turns a batch and a (B, k) class tensor into (B, k, H, W) non-negative maps in
the input frame. Registered methods are read from :data:`gradcam.methods.METHODS` at call time, so a
newly registered method is evaluated (and appears in the tables) without any change here.

A method name may end in a smoothing, ``NAME+aug-smooth``, ``NAME+noise-smooth`` or ``NAME+eigen-smooth``
(:mod:`gradcam.smoothing`, with its defaults): the registered method wrapped, so that the compositions are
ranked beside the methods. ``--method gradcam+aug-smooth`` on the command line.

Baselines, which never look at the model:

- ``center``: 1 inside a centred box covering the middle half of each side, 0 elsewhere (the "centre"
  baseline of Zhang et al. 2016); its localization box is that box, its point the image centre.
- ``whole-image``: a constant map; its box is the whole image, its point the centre.
- ``random``: uniform noise on a coarse grid (14 x 14, like a CAM), bilinearly upsampled; seeded by
  ``(seed, first)``, the index of the batch's first image, so a batch gets the same noise whichever
  process (rank, rerun) evaluates it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GradCAMError
from ..methods import METHODS, create_explainer
from ..methods.base import Explainer
from ..smoothing import AugSmooth, EigenSmooth, NoiseSmooth
from .regions import saliency_2d

BASELINES = ("center", "whole-image", "random")

BASELINE_TITLES = {
    "center": "Baseline: centre box",
    "whole-image": "Baseline: whole image",
    "random": "Baseline: random map",
}


@dataclass
class MapSource:
    """Something that makes maps for (B, k) classes: a method or a baseline."""

    name: str
    is_baseline: ClassVar[bool] = False

    @property
    def title(self) -> str:
        return title(self.name)

    @property
    def layer(self) -> str | None:
        return None

    def maps(self, x: torch.Tensor, classes: torch.Tensor, first: int = 0) -> torch.Tensor:
        """(B, k, H, W) maps of ``classes`` for the batch ``x``, whose first image is image ``first`` of the run."""
        raise NotImplementedError


@dataclass
class MethodSource(MapSource):
    """A registered method with its call options."""

    explainer: Explainer | None = None
    call_options: dict[str, Any] | None = None

    @property
    def layer(self) -> str | None:
        return getattr(self.explainer, "layer_name", None)

    def maps(self, x: torch.Tensor, classes: torch.Tensor, first: int = 0) -> torch.Tensor:
        explanation = self.explainer(x, classes, **(self.call_options or {}))
        heatmap = explanation.heatmap
        if heatmap.dim() == 4 and heatmap.shape[:2] != classes.shape:  # a method that ignored the k axis
            raise ValueError(f"method {self.name!r} returned maps of shape {tuple(heatmap.shape)} for (B, k) targets")
        return saliency_2d(heatmap, channels=heatmap.dim() == 5)


@dataclass
class BaselineSource(MapSource):
    """A trivial map that ignores the model and the class."""

    seed: int = 0
    grid: int = 14
    fraction: float = 0.5
    is_baseline: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.name not in BASELINES:
            raise ValueError(f"unknown baseline {self.name!r}; available: {', '.join(BASELINES)}")

    def maps(self, x: torch.Tensor, classes: torch.Tensor, first: int = 0) -> torch.Tensor:
        batch, k = classes.shape
        height, width = x.shape[-2:]
        if self.name == "whole-image":
            return torch.ones(batch, k, height, width, device=x.device)
        if self.name == "center":
            out = torch.zeros(batch, k, height, width, device=x.device)
            top, left = round(height * (1 - self.fraction) / 2), round(width * (1 - self.fraction) / 2)
            out[..., top : height - top, left : width - left] = 1.0
            return out
        generator = torch.Generator().manual_seed((self.seed << 32) + first)
        noise = torch.rand(batch * k, 1, self.grid, self.grid, generator=generator).to(x.device)
        maps = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
        return maps.view(batch, k, height, width)


#: Smoothing suffixes of a method name: (title, wrapper of an explainer), see :mod:`gradcam.smoothing`.
SMOOTHINGS: dict[str, tuple[str, Callable[[Explainer], Explainer]]] = {
    "aug-smooth": ("test-time augmentation", AugSmooth),
    "noise-smooth": ("noise smoothing", NoiseSmooth),
    "eigen-smooth": ("eigen smoothing", EigenSmooth),
}


def split_name(name: str) -> tuple[str, str | None]:
    """``(registered method, smoothing suffix or None)`` of an evaluated method's name; ValueError when the
    method is not registered ("gradcam++" is a method, "gradcam+++aug-smooth" its test-time augmentation)."""
    base, plus, suffix = name.rpartition("+")
    if plus and suffix in SMOOTHINGS and base in METHODS:
        return base, suffix
    if name in METHODS:
        return name, None
    raise ValueError(
        f"unknown method {name!r}; available: {', '.join(METHODS)}, each optionally followed by "
        f"{', '.join('+' + s for s in SMOOTHINGS)}"
    )


def is_method_name(name: str) -> bool:
    try:
        split_name(name)
    except ValueError:
        return False
    return True


def method_source(name: str, model: nn.Module, layer: Any = None) -> MethodSource:
    """The :class:`MethodSource` of a registered method, or of one wrapped in a smoothing (see above)."""
    base, smoothing = split_name(name)
    spec = METHODS[base]
    explainer = create_explainer(base, model, layer if spec.uses_layer else None)
    if smoothing is not None:
        explainer = SMOOTHINGS[smoothing][1](explainer)
    return MethodSource(name, explainer, dict(spec.call_options))


def title(name: str) -> str:
    """A display name: the registered method's title (with its smoothing), a baseline's, else the name itself."""
    if name in BASELINE_TITLES:
        return BASELINE_TITLES[name]
    try:
        base, smoothing = split_name(name)
    except ValueError:
        return name
    return METHODS[base].title + ("" if smoothing is None else f" + {SMOOTHINGS[smoothing][0]}")


def default_methods() -> list[str]:
    """Every registered method, read from the registry now (so newly registered methods are included)."""
    return list(METHODS)


def make_sources(
    model: nn.Module,
    methods: list[str] | None = None,
    baselines: list[str] | tuple[str, ...] = BASELINES,
    layer: Any = None,
    seed: int = 0,
) -> tuple[list[MapSource], dict[str, str]]:
    """Build the sources to evaluate; methods that cannot be built for ``model`` are returned as
    ``{name: reason}`` instead of raising (CAM on a head that is not GAP + linear, say)."""
    methods = default_methods() if methods is None else list(methods)
    unknown = [m for m in methods if not is_method_name(m)]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; available: {', '.join(METHODS)}, each optionally followed by "
            f"{', '.join('+' + s for s in SMOOTHINGS)}"
        )
    sources: list[MapSource] = []
    failures: dict[str, str] = {}
    for name in methods:
        try:
            sources.append(method_source(name, model, layer))
        except (GradCAMError, ValueError, TypeError, RuntimeError) as error:
            failures[name] = f"{type(error).__name__}: {error}"
    sources.extend(BaselineSource(name, seed=seed) for name in baselines)
    return sources, failures
