"""What ``gradcam evaluate`` is asked for and what it returns: settings, per-source results, timings."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..imaging.geometry import Geometry
from .localization import SWEEP
from .sources import BASELINES

TASKS = ("localization", "pointing", "faithfulness", "sanity")
#: What :class:`EvaluationSettings` runs by default; ``sanity`` (:mod:`.sanity`, one explanation per layer and
#: image) is asked for by name or by ``gradcam evaluate all``.
CORE_TASKS = TASKS[:3]


@dataclass(frozen=True)
class EvaluationSettings:
    """What to measure and how (defaults: the published protocols)."""

    tasks: tuple[str, ...] = CORE_TASKS
    methods: tuple[str, ...] | None = None  # None: every registered method + the input gradient
    baselines: tuple[str, ...] = BASELINES
    layer: str | None = None
    threshold: float = 0.15  # localization: fraction of the map's max
    iou: float = 0.5
    connectivity: int = 8
    top_k: int = 5
    sweep: tuple[float, ...] = SWEEP  # MaxBoxAcc over these thresholds (Choe et al. 2020); () to skip
    tolerance: float = 15.0  # pointing, original-image pixels
    step: int | None = None  # deletion/insertion pixels per step (None: one image row)
    deletion_baseline: str = "zero"
    insertion_baseline: str = "blur"
    score: str = "probability"
    occlusion: bool = False
    patch: int = 32
    stride: int = 16
    fill: float = 0.0
    batch_size: int = 16
    curve_batch_size: int = 128
    faithfulness_images: int | None = None  # faithfulness on the first N images only (None: all)
    # with the faithfulness task, on the first N of its images (None: all of them): ROAD, Max/Avg-Sensitivity,
    # off by default here (each costs many solves / explanations per image), on in ``gradcam evaluate``
    road: bool = False
    road_percentages: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    road_noise: float = 0.01
    road_images: int | None = 8
    robustness_samples: int = 0  # 0: no robustness
    robustness_radius: float = 0.2  # Uniform(-r, r) noise in the model's input space
    robustness_images: int | None = 8
    seed: int = 0
    figure_images: int = 4  # images in the every-method figure: half with one class, half with several
    sanity_images: int = 4  # sanity checks on the first N images (each costs layers + 3 explanations per mode)
    # cascading randomisation gives the verdict; ("cascading", "independent") adds Adebayo's independent test
    sanity_modes: tuple[str, ...] = ("cascading",)

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}; got {self.tasks}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.figure_images < 0:
            raise ValueError(f"figure_images must be >= 0; got {self.figure_images}")
        if self.robustness_samples < 0 or not self.robustness_radius > 0:
            raise ValueError(
                f"robustness_samples must be >= 0 and robustness_radius > 0; got {self.robustness_samples}, "
                f"{self.robustness_radius}"
            )
        if self.sanity_images < 1:
            raise ValueError(f"sanity_images must be >= 1; got {self.sanity_images}")
        if "sanity" in self.tasks and "cascading" not in self.sanity_modes:
            raise ValueError(f"sanity_modes must include 'cascading' (the verdict's test); got {self.sanity_modes}")


@dataclass
class Example:
    """One map kept for the best/worst-case figures (``image`` is loaded when the run is summarised)."""

    name: str
    index: int  # of the image in the run
    geometry: Geometry
    heatmap: torch.Tensor  # (H, W) in the input frame, CPU
    box: list[float]  # predicted, original pixels
    truths: list[list[float]]  # ground-truth boxes of the class, original pixels
    cls: int
    iou: float
    image: Image.Image | None = None


@dataclass
class FigureRow:
    """One row of the every-method figure: an image, one class, and every source's map of that class."""

    index: int  # of the image in the run
    name: str
    cls: int
    several: bool  # the image holds objects of several classes
    geometry: Geometry
    maps: dict[str, torch.Tensor]  # source name -> (H, W) map in the input frame, CPU
    image: Image.Image | None = None


@dataclass(frozen=True)
class Timing:
    """One batch's timing of one source: its whole call and a plain forward pass just before it."""

    forward: float  # seconds, ``model(x)`` under ``torch.inference_mode()``
    call: float  # seconds, ``source.maps(x, targets)`` (explanation, upsampling, normalisation)
    warm: bool  # False for the first batch a process evaluates (the warm-up)


@dataclass
class MethodResult:
    """One method's (or baseline's) summary over the whole run."""

    name: str
    title: str
    is_baseline: bool
    layer: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class EvaluationResult:
    """Everything one run measured."""

    model: str
    settings: EvaluationSettings
    methods: list[MethodResult]
    per_image: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]]
    examples: dict[str, dict[str, Example]]
    classification: dict[str, Any]
    images: int
    seconds: float
    labels: list[str] | None = None
    figure: list[FigureRow] = field(default_factory=list)
    evaluated_images: int = 0  # by this run (all ranks); the rest came from partial results
    reused_images: int = 0
    world: int = 1
    sanity: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)  # MPRT curves by source

    def row(self, name: str) -> MethodResult:
        for result in self.methods:
            if result.name == name:
                return result
        raise KeyError(name)


def cost(timings: Sequence[Timing]) -> dict[str, float]:
    """``cost = median_b(call_b / forward_b)`` over the warm batches (all batches when none is warm), with
    ``cost_seconds`` the median call time per batch and ``cost_batches`` the number of batches used."""
    used = [t for t in timings if t.warm] or list(timings)
    if not used:
        return {}
    return {
        "cost": statistics.median(t.call / max(t.forward, 1e-9) for t in used),
        "cost_seconds": statistics.median(t.call for t in used),
        "cost_batches": len(used),
    }
