"""Batch jobs over image files (the work behind the CLI's commands)."""

from .explain import ExplainSettings, JobSummary, explain_files, heatmap_from_raw

__all__ = ["ExplainSettings", "JobSummary", "explain_files", "heatmap_from_raw"]
