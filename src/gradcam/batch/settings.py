"""What a batch job explains and writes: the task, the output kinds, the settings and the job's summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CLASS_TASKS = ("class", "probability", "log-probability", "sigmoid")


#: The task a loaded model's output calls for when ``--task`` is not given.
DEFAULT_TASK = {"classification": "class", "detection": "detection", "segmentation": "segmentation",
                "embedding": "similarity"}  # fmt: skip


@dataclass(frozen=True)
class TaskOptions:
    """Which scalar to explain (see :data:`gradcam.cli.targets.TASKS`) and its parameters.

    ``name``: ``class`` (logit; classes from ``ExplainSettings.targets`` / ``top_k``), ``probability``,
    ``log-probability``, ``sigmoid``, ``segmentation`` (``category`` required; region: ``mask``, an
    (H0, W0) ``.npy`` in original pixels, or the pixels predicted as ``category``), ``detection``
    (``detection`` index, default 0, or the detection best matching ``box`` (x0, y0, x1, y1 in
    original pixels) with IoU >= ``iou_threshold``; y = score + ``box_weight`` · IoU), ``similarity``
    (``embedding`` file (D,) or (k, D), or ``texts`` embedded by the model's text encoder).
    """

    name: str = "class"
    category: int | None = None
    box: tuple[float, float, float, float] | None = None
    detection: int | None = None
    iou_threshold: float = 0.5
    box_weight: float = 0.0
    mask: str | None = None
    embedding: str | None = None
    texts: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The task's name and the parameters that differ from the defaults (for the manifest)."""
        defaults = TaskOptions()
        given = {k: v for k, v in asdict(self).items() if k != "name" and v != getattr(defaults, k)}
        return json.loads(json.dumps({"name": self.name, **given}))


#: The files that can be written per image and class: the overlay picture, the heatmap ``.npy`` (float32
#: on original pixels), the panel picture, the raw map ``_raw.npy`` (:attr:`Explanation.raw`, float32
#: at the layer's resolution for class-activation methods, the input gradient for gradient methods).
OUTPUT_KINDS = ("overlay", "heatmap", "panel", "raw")


#: The outputs drawn on the original image (so they need its full-size pixels).
DRAWN_OUTPUTS = frozenset({"overlay", "panel"})


#: What is written when no outputs are named.
DEFAULT_OUTPUTS = ("overlay", "heatmap", "panel")


#: How overlays and panels are stored: PNG (lossless, the default) or JPEG at quality 95 (smaller and
#: faster to encode; docs/benchmarks.md).
PICTURE_FORMATS = ("png", "jpg")


JPEG_QUALITY = 95


def valid_outputs(kinds: Sequence[str]) -> bool:
    """Whether ``kinds`` is a non-empty selection from :data:`OUTPUT_KINDS`."""
    return bool(kinds) and all(kind in OUTPUT_KINDS for kind in kinds)


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain, how to draw it, and which of :data:`OUTPUT_KINDS` to write."""

    methods: tuple[str, ...] = ("gradcam", "guided-backprop", "guided-gradcam", "counterfactual")
    targets: tuple[int, ...] | None = None  # the same classes for every image; None = top-k predicted
    top_k: int = 1
    show_top: int = 5
    alpha: float = 0.5
    colormap: str = "jet"
    layer: str | None = None
    task: TaskOptions = field(default_factory=TaskOptions)
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    picture_format: str = "png"

    def __post_init__(self) -> None:
        if not valid_outputs(self.outputs):
            raise ValueError(f"outputs must be a non-empty subset of {', '.join(OUTPUT_KINDS)}; got {self.outputs}")
        if self.picture_format not in PICTURE_FORMATS:
            raise ValueError(f"picture_format must be one of {', '.join(PICTURE_FORMATS)}; got {self.picture_format!r}")

    @property
    def draws(self) -> bool:
        """Whether any output is a picture (overlay or panel), so the original image is needed."""
        return bool(DRAWN_OUTPUTS & set(self.outputs))

    @property
    def on_original_pixels(self) -> bool:
        """Whether any output needs the maps resampled to the original image (heatmap, overlay, panel)."""
        return self.draws or "heatmap" in self.outputs

    def key(self, model_name: str, layer: str | None) -> dict[str, Any]:
        """What an existing output must have been made with to be reused by a rerun (JSON-normalised).

        The default task and outputs are left out, so outputs of versions without them stay reusable."""
        data = asdict(self)
        if self.task == TaskOptions():
            data.pop("task")
        if set(self.outputs) == set(DEFAULT_OUTPUTS):
            data.pop("outputs")
        if self.picture_format == "png":
            data.pop("picture_format")
        return json.loads(json.dumps({"model": model_name, "layer": layer, **data}))


@dataclass
class JobSummary:
    """Counts and records of one run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    layer: str | None = None
