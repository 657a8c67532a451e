"""Partial results of a run, one file per batch, reused by a rerun with the same settings and images.

Each batch gives a :class:`BatchPart`: fresh metric objects that saw only that batch, its per-image rows,
figure maps and timings. Parts are written atomically (temp file + rename) and merged in batch order
(:func:`.merge.combine`), so a resumed run gives exactly the numbers of one uninterrupted process.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..imaging.io import write_bytes_atomic
from ..models import LoadedModel
from .metric_set import MetricSet
from .results import EvaluationSettings, Example, FigureRow, Timing

PART_VERSION = 2  # bump when BatchPart changes: older partial files are then recomputed


@dataclass
class BatchPart:
    """What one batch contributed to the run; picklable, CPU only (see the module docstring)."""

    first: int  # index of the batch's first image
    names: list[str]  # the batch's image names
    key: str  # the run's settings (:func:`run_key`): a part is reused only by a run with the same key
    k: int
    hits: dict[str, int]
    metrics: dict[str, MetricSet]
    rows: dict[tuple[int, str], dict[str, Any]]
    examples: dict[str, dict[str, Example]]  # new best / worst of the evaluating process, per source
    figure: list[FigureRow]
    timings: dict[str, Timing]
    failures: dict[str, str]  # sources that raised on this batch
    version: int = PART_VERSION


def run_key(loaded: LoadedModel, settings: EvaluationSettings, layer: Any, sources: Sequence[str]) -> str:
    """What a partial result must have been made with to be reused (JSON text): the model's name and a
    fingerprint of its weights (``sum_p sum |p|`` and the parameter count), the layer, the sources and the
    settings. Images are matched by name, batch by batch (:meth:`PartStore.load`)."""
    layer_name = layer if isinstance(layer, str) or layer is None else type(layer).__name__
    with torch.no_grad():
        parameters = list(loaded.model.parameters())
        total = float(sum(p.detach().cpu().double().abs().sum() for p in parameters))
        weights = [sum(p.numel() for p in parameters), total]
    data = {"model": loaded.name, "weights": weights, "layer": layer_name, "sources": list(sources),
            "settings": asdict(settings)}  # fmt: skip
    return json.dumps(data, sort_keys=True, default=str)


class PartStore:
    """Partial results of one run in ``folder``: ``batch-<first>.pkl``, written atomically (temp + rename).

    The files are pickles this library wrote; only point ``folder`` at output folders you trust.
    """

    def __init__(self, folder: str | os.PathLike[str], key: str) -> None:
        self.folder = Path(folder)
        self.key = key

    def path(self, first: int) -> Path:
        return self.folder / f"batch-{first:08d}.pkl"

    def load(self, first: int, names: Sequence[str]) -> BatchPart | None:
        """The stored part of the batch starting at ``first`` if it was made with this key and these images."""
        try:
            part = pickle.loads(self.path(first).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
            return None
        if not isinstance(part, BatchPart) or part.version != PART_VERSION:
            return None
        return part if part.key == self.key and part.first == first and part.names == list(names) else None

    def save(self, part: BatchPart) -> Path:
        return write_bytes_atomic(self.path(part.first), pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
