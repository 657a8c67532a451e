"""Task targets from command-line options (``gradcam explain --task ...``): :data:`TASKS` and
:func:`target_from_options`, the option parsing that the library's :mod:`gradcam.targets` leaves out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import TargetError
from ..targets import ClassScore, DetectionScore, EmbeddingSimilarity, OutputSelector, SegmentationScore, TaskTarget

TASKS: dict[str, str] = {
    "class": "a class logit (the paper's y^c)",
    "probability": "a class's softmax probability",
    "log-probability": "a class's log-softmax",
    "sigmoid": "a class's sigmoid probability (multi-label heads)",
    "segmentation": "a class's logits summed over a mask (default: the pixels predicted as that class)",
    "detection": "one detection's score, chosen by index or matched to a box (+ box_weight x IoU)",
    "similarity": "cosine similarity of the image embedding with a reference embedding",
}


def load_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    path = Path(value)
    if not path.is_file():
        raise TargetError(f"{name} file not found: {path}")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path))
    if path.suffix in (".pt", ".pth"):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, torch.Tensor):
            raise TargetError(f"{name} file {path} holds a {type(loaded).__name__}, not a tensor")
        return loaded
    raise TargetError(f"{name} must be a .npy or .pt file; got {path.name}")


def parse_box(box: Any) -> Any:
    if isinstance(box, str):
        try:
            values = [float(v) for v in box.replace(" ", ",").split(",") if v]
        except ValueError:
            raise TargetError(f"box must be 'x0,y0,x1,y1'; got {box!r}") from None
        if len(values) != 4:
            raise TargetError(f"box must be 'x0,y0,x1,y1' (4 numbers); got {box!r}")
        return values
    return box


def target_from_options(
    task: str,
    *,
    category: int | None = None,
    box: str | Sequence[float] | torch.Tensor | None = None,
    detection: int | None = None,
    label: int | None = None,
    iou_threshold: float = 0.5,
    box_weight: float = 0.0,
    mask: str | Path | torch.Tensor | None = None,
    embedding: str | Path | torch.Tensor | None = None,
    select: OutputSelector = None,
) -> TaskTarget:
    """A target from command-line-like options (``gradcam explain --task ...``).

    ``task`` is one of :data:`TASKS`. ``category``: the class (top-1 when None for the class tasks;
    required for segmentation). ``box``: 'x0,y0,x1,y1' or 4 numbers in the input's pixels.
    ``mask`` / ``embedding``: a tensor or a .npy / .pt file. Returns the target to pass as
    ``cam(x, target)``.
    """
    if task in ("class", "probability", "log-probability", "sigmoid"):
        kind = {"class": "logit", "log-probability": "log_probability"}.get(task, task)
        return ClassScore(category, kind=kind, select=select)
    if task == "segmentation":
        if category is None:
            raise TargetError("--task segmentation needs a class (--class INDEX)")
        return SegmentationScore(category, None if mask is None else load_tensor(mask, "mask"), select=select)
    if task == "detection":
        return DetectionScore(
            detection,
            None if box is None else parse_box(box),
            label=label,
            iou_threshold=iou_threshold,
            box_weight=box_weight,
            select=select,
        )
    if task == "similarity":
        if embedding is None:
            raise TargetError("--task similarity needs a reference embedding (--embedding FILE.npy|.pt)")
        reference = load_tensor(embedding, "embedding").float()
        return EmbeddingSimilarity(reference.squeeze(0) if reference.dim() == 2 and len(reference) == 1 else reference,
                                   select=select)  # fmt: skip
    raise TargetError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
