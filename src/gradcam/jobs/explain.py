"""Kept for compatibility: the batch job lives in :mod:`gradcam.batch` and is re-exported here.

:func:`_layer_name` (a requested layer's name in the model the job runs) stays here, where the
automatic layer choice's change put it; :mod:`gradcam.batch.explainers` imports it.
"""

from __future__ import annotations

import logging

from torch import nn

from ..batch.distributed import all_gather, barrier, distributed_rank, rank_device
from ..batch.explainers import _explain_group, _Explainers, _per_map, as_detector
from ..batch.inputs import (
    ImageFiles,
    collate,
    common_root,
    crop_image,
    decoded_batches,
    finished_record,
    output_folder,
    prepare_image,
    same_size_groups,
)
from ..batch.loop import MAX_DECODING_WORKERS, default_pipeline, explain_files
from ..batch.outputs import (
    BOX_COLOR,
    CONTOUR_COLOR,
    PANEL_TILE_HEIGHT,
    heatmap_from_raw,
    maps_to_originals,
)
from ..batch.settings import (
    CLASS_TASKS,
    DEFAULT_OUTPUTS,
    DEFAULT_TASK,
    DRAWN_OUTPUTS,
    JPEG_QUALITY,
    OUTPUT_KINDS,
    PICTURE_FORMATS,
    ExplainSettings,
    JobSummary,
    TaskOptions,
    valid_outputs,
)
from ..batch.targets import ItemTargets, TaskRunner, class_name, mask_to_input, region_to_original

logger = logging.getLogger("gradcam")

__all__ = [
    "BOX_COLOR",
    "CLASS_TASKS",
    "CONTOUR_COLOR",
    "DEFAULT_OUTPUTS",
    "DEFAULT_TASK",
    "DRAWN_OUTPUTS",
    "JPEG_QUALITY",
    "MAX_DECODING_WORKERS",
    "OUTPUT_KINDS",
    "PANEL_TILE_HEIGHT",
    "PICTURE_FORMATS",
    "ExplainSettings",
    "ImageFiles",
    "ItemTargets",
    "JobSummary",
    "TaskOptions",
    "TaskRunner",
    "_Explainers",
    "_explain_group",
    "_per_map",
    "all_gather",
    "as_detector",
    "barrier",
    "class_name",
    "collate",
    "common_root",
    "crop_image",
    "decoded_batches",
    "default_pipeline",
    "distributed_rank",
    "explain_files",
    "finished_record",
    "heatmap_from_raw",
    "maps_to_originals",
    "mask_to_input",
    "output_folder",
    "prepare_image",
    "rank_device",
    "region_to_original",
    "same_size_groups",
    "valid_outputs",
]  # fmt: skip


def _layer_name(model: nn.Module, requested: str | None) -> str | None:
    """The layer to explain: the request (detector layers may omit the adapter's ``detector.``
    prefix), or None: the explainers' automatic choice, :func:`gradcam.layers.auto_layer` (the same
    function as the API's and ``gradcam layers``': token blocks re-indexed to their grid, a detector's
    backbone cut to the image, a dense model's backbone)."""
    from ..targets import DetectorAdapter

    if requested is not None and isinstance(model, DetectorAdapter) and not requested.startswith("detector."):
        names = {name for name, _ in model.detector.named_modules()}
        if requested in names:
            return f"detector.{requested}"
    return requested
