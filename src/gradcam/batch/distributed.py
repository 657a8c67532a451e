"""What a job needs under ``torchrun`` (torch.distributed): its rank, its device, and the others' results.

Shared by ``gradcam explain`` (:mod:`.explain`) and ``gradcam evaluate``
(:mod:`gradcam.evaluation.runner`): each rank works on a disjoint shard, and the ranks' results are
exchanged with :func:`all_gather` so that rank 0 can write one merged output.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .settings import JobSummary


def distributed_rank() -> tuple[int, int]:
    """``(rank, world size)`` under ``torchrun`` / ``torch.distributed``; ``(0, 1)`` otherwise.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here if needed: NCCL when
    CUDA is available, gloo otherwise.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: torch.device, rank: int, world: int) -> torch.device:
    """One GPU per rank (``cuda:rank % count``) when several ranks share an unindexed ``cuda`` device."""
    if world > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", rank % torch.cuda.device_count())
    return device


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _merge_ranks(summary: JobSummary, records: dict[str, dict[str, Any]]) -> JobSummary:
    """Gather every rank's records and counts (all ranks end with the union)."""
    gathered = all_gather((records, summary.done, summary.failed, summary.failures))
    merged = JobSummary(skipped=summary.skipped)
    for rank_records, done, failed, failures in gathered:
        records.update(rank_records)
        merged.done += done
        merged.failed += failed
        merged.failures += failures
    return merged
