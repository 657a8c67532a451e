"""The images shown in the figures: the every-method figure's rows and each source's best and worst box."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..imaging.geometry import Geometry
from .datasets import AnnotatedImage
from .localization import boxes_to_original
from .metric_set import MetricSet
from .regions import map_to_box
from .results import EvaluationSettings, Example, FigureRow
from .sources import MapSource


def own_copy(view: torch.Tensor) -> torch.Tensor:
    """A float CPU copy with its own storage (a pickled view would carry the whole batch's maps)."""
    return view.detach().to("cpu", torch.float32, copy=True).contiguous()


def figure_selection(items: Sequence[AnnotatedImage], count: int) -> list[int]:
    """Indices of the figure's images: the first ``ceil(count / 2)`` holding one class and the first
    ``floor(count / 2)`` holding several, topped up with the next images when one kind runs short."""
    several = [i for i, item in enumerate(items) if len({c for c, _ in item.objects}) > 1]
    taken = set(several[: count // 2])
    singles = [i for i in range(len(items)) if i not in taken and i not in several]
    chosen = taken | set(singles[: count - len(taken)])
    rest = [i for i in range(len(items)) if i not in chosen]
    return sorted(chosen | set(rest[: max(0, count - len(chosen))]))


def figure_rows(
    chosen: set[int],
    first: int,
    batch: Sequence[AnnotatedImage],
    geometries: Sequence[Geometry],
    truths: Sequence[Sequence[tuple[int, Any]]],
    targets: torch.Tensor,
) -> list[FigureRow]:
    """The figure's rows in this batch: per chosen image (``chosen``: indices in the run), each explained
    ground-truth class (else the first explained class), maps to be filled in source by source."""
    rows = []
    for b, item in enumerate(batch):
        if first + b not in chosen or targets.shape[1] == 0:
            continue
        present = list(dict.fromkeys(int(c) for c, _ in truths[b]))
        explained = set(targets[b].tolist())
        classes = [c for c in present if c in explained] or [int(targets[b, 0])]
        rows += [FigureRow(first + b, item.name, c, len(present) > 1, geometries[b], {}) for c in classes]
    return rows


_BETTER: dict[str, Callable[[float, float], bool]] = {"best": lambda a, b: a > b, "worst": lambda a, b: a < b}


def _beats(kept: dict[str, Example], kind: str, iou: float) -> bool:
    """Whether an IoU of ``iou`` replaces the kept ``kind`` ('best' / 'worst') example (ties keep the
    earlier image, so merging in batch order picks what one process would)."""
    current = kept.get(kind)
    return current is None or _BETTER[kind](iou, current.iou)


def keep_if_better(kept: dict[str, Example], kind: str, example: Example) -> bool:
    """Keep ``example`` as ``kind`` unless the kept one is at least as good (:func:`_beats`)."""
    if not _beats(kept, kind, example.iou):
        return False
    kept[kind] = example
    return True


def keep_examples(
    source: MapSource,
    maps: torch.Tensor,
    classes: torch.Tensor,
    truths: Sequence[Sequence[tuple[int, Any]]],
    geometries: Sequence[Geometry],
    batch: Sequence[AnnotatedImage],
    first: int,
    m: MetricSet,
    settings: EvaluationSettings,
    examples: dict[str, dict[str, Example]],
) -> None:
    """Keep the best and worst box (by IoU) of this source so far, for the figures."""
    records = m.boxes.records[-int((classes >= 0).sum()) :]
    kept = examples[source.name]
    for record in records:
        for kind in _BETTER:
            if not _beats(kept, kind, record["iou"]):  # checked first: the box is only drawn for a keeper
                continue
            b, cls = record["image"], record["class"]
            j = [int(c) for c in classes[b].tolist()].index(cls)
            box = boxes_to_original(
                map_to_box(maps[b, j], settings.threshold, settings.connectivity)[None], geometries[b]
            )
            kept[kind] = Example(
                name=batch[b].name,
                index=first + b,
                geometry=geometries[b],
                heatmap=own_copy(maps[b, j]),
                box=box[0].tolist(),
                truths=[list(bx) for c, bx in truths[b] if c == cls],
                cls=cls,
                iou=record["iou"],
            )
