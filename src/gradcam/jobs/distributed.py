"""Kept for compatibility: :mod:`gradcam.batch.distributed`."""

from ..batch.distributed import all_gather, barrier, distributed_rank, rank_device

__all__ = ["all_gather", "barrier", "distributed_rank", "rank_device"]
