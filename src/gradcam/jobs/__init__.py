"""Batch jobs over image files; kept for compatibility: the job lives in :mod:`gradcam.batch`."""

from .explain import ExplainSettings, JobSummary, explain_files, heatmap_from_raw

__all__ = ["ExplainSettings", "JobSummary", "explain_files", "heatmap_from_raw"]
