"""Batch jobs over image files (the work behind ``gradcam explain``).

For every readable image a job writes, in ``OUT/<escaped relative path>/``, per method and explained
target: an overlay at the image's original resolution (PNG, or JPEG with ``picture_format="jpg"``),
the map as ``.npy`` (float32, original resolution), a panel, on request the method's raw map
(``_raw.npy``), and ``item.json`` last. Modules: :mod:`.settings` (what to explain and write),
:mod:`.inputs` (decoding, batches, folder names, resume), :mod:`.targets` (per-item task targets),
:mod:`.explainers` (the methods of one job), :mod:`.outputs` (maps on original pixels, drawing,
atomic writes in writer threads), :mod:`.loop` (the job), :mod:`.distributed` (torchrun).
"""

from .loop import default_pipeline, explain_files
from .outputs import heatmap_from_raw
from .settings import ExplainSettings, JobSummary, TaskOptions

__all__ = ["ExplainSettings", "JobSummary", "TaskOptions", "default_pipeline", "explain_files", "heatmap_from_raw"]
