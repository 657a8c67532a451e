"""The batch loop: decode, explain, hand each batch to the writers, commit, write the manifest."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..explanation import Explanation
from ..imaging.geometry import (
    normalize_pixels,
)
from ..imaging.io import (
    display_path,
    is_inside,
    remove_temp_files,
    write_json_atomic,
)
from ..models import LoadedModel
from . import outputs
from .distributed import _merge_ranks, barrier, distributed_rank, rank_device
from .explainers import _explain_group, _Explainers, _per_map, as_detector
from .inputs import (
    ImageFiles,
    _source_fields,
    common_root,
    decoded_batches,
    finished_record,
    output_folder,
    same_size_groups,
)
from .outputs import _commit, _raw_rows, _shares, _writer_count
from .settings import ExplainSettings, JobSummary
from .targets import ItemTargets, TaskRunner

#: The most decoding processes a job starts by default on an accelerator.
MAX_DECODING_WORKERS = 16


def default_pipeline(device: torch.device, files: int) -> tuple[int, int]:
    """``(decoding workers, writer threads)`` for ``files`` images on ``device`` when not given.

    On the CPU the model's own threads already use every core: decoding stays in this process (0:
    threads between model steps) and the writers are one thread per torch thread (0). On an accelerator
    the host decodes in DataLoader worker processes, every core but 3 (the main process and 2 writer
    threads; at least 1, at most 16 and files - 1).
    """
    if device.type == "cpu":
        return 0, 0
    cores = os.cpu_count() or 1
    return min(max(1, cores - 3), MAX_DECODING_WORKERS, max(0, files - 1)), 2


def explain_files(
    paths: Sequence[Path],
    loaded: LoadedModel,
    settings: ExplainSettings,
    out_dir: Path,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    workers: int = 0,
    writers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str, bool], None] | None = None,
) -> JobSummary:
    """Explain every file in ``paths`` and write the outputs under ``out_dir`` (see :mod:`gradcam.batch`).

    Decoding runs in ``workers`` DataLoader processes, overlapping the model (on a GPU), or with
    ``workers=0`` in ``torch.get_num_threads()`` threads between model steps (on a CPU, where the
    model uses every core); drawing/encoding runs in ``writers`` threads (0: one per torch thread),
    beside the model on an accelerator and between model steps on a CPU (a batch's writes finish,
    while the next batch decodes, before that batch's explanation call). Under
    ``torchrun`` each rank takes a disjoint shard (``pending[rank::world]``) and rank 0 writes the
    merged manifest. Non-class tasks look at the model's output once per batch (no gradients) to build
    the target and the predictions. Every input ends in ``items`` (done now or before) or ``failures``;
    ``report(line, is_error)`` gets one line per input.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    rank, world = distributed_rank()
    device = rank_device(torch.device(device), rank, world)
    root = common_root(paths) if paths else Path(".")
    model = as_detector(loaded.model).to(device)
    explainers = _Explainers(model, settings.layer or loaded.default_layer, settings.methods)
    runner = None if settings.task.name == "class" else TaskRunner(settings.task, loaded, model, settings.show_top)
    job = _Job(out_dir, root, report or (lambda line, is_error: None))
    pending, inside = job.partition(paths, functools.partial(settings.key, loaded.name), overwrite)
    shard = pending[rank::world]
    files = ImageFiles(shard, loaded.preprocess, keep_original=settings.draws)
    loader = decoded_batches(files, batch_size, workers, torch.get_num_threads(), device.type == "cuda")
    job.start(len(shard), progress and rank == 0, writers)
    if rank == 0:
        for path in inside:
            job.fail(path, f"{display_path(path)} is inside the output folder {display_path(out_dir)}: outputs "
                           "are not explained again; move it out or choose another output folder")  # fmt: skip
    # On a CPU device the model's threads use every core, and a writer beside them competes for a core
    # and for the GIL that every op of the forward takes: there a batch's writes finish before the next
    # model step, while the next batch decodes (docs/benchmarks.md, 2026-12-02).
    writes_between_steps = device.type == "cpu"
    try:
        for batch in loader:
            for index, error in batch["failures"]:
                job.fail(shard[index], error)
            for positions, group_x in same_size_groups(batch) if batch["indices"] else []:
                if writes_between_steps:
                    job.wait_for_writes()
                x = normalize_pixels(group_x.to(device, non_blocking=True), loaded.preprocess)
                geometries = [batch["geometries"][p] for p in positions]
                results, kept, failures, items = _explain_group(
                    x, geometries, explainers, runner, settings, loaded.labels
                )
                for position, error in failures:
                    path = shard[batch["indices"][positions[position]]]
                    job.fail(path, f"{display_path(path)}: {error}")
                if kept:
                    rows = [positions[position] for position in kept]
                    key = settings.key(loaded.name, explainers.layer)
                    job.submit(_item_writes(batch, rows, shard, results, items, settings, key, explainers.layer,
                                            job))  # fmt: skip
            job.drain(keep=2 * batch_size)  # bounded: at most two batches of drawing behind
        job.drain(keep=0)
    finally:
        loader.close()  # stops the decoding threads (and restores the thread setting) even on an error
        job.close()  # finished items get their item.json even when the job stops early
    summary = job.summary
    layer = explainers.layer or next((r.get("layer") for r in job.records.values()), None)
    if world > 1:
        summary = _merge_ranks(summary, job.records)
    summary.items = [job.records[str(p)] for p in paths if str(p) in job.records]
    summary.layer = layer
    if rank == 0:
        _write_manifest(out_dir, loaded.name, settings, summary)
    barrier()
    summary.seconds = time.perf_counter() - start
    return summary


def _item_writes(
    batch: dict[str, Any], rows: list[int], shard: Sequence[Path], results: dict[str, Explanation],
    items: list[ItemTargets], settings: ExplainSettings, key: dict[str, Any], layer: str | None, job: _Job,
) -> list[tuple[Path, tuple[Any, ...]]]:  # fmt: skip
    """``(input, _write_outputs' arguments)`` for the explained ``rows`` of ``batch`` (their targets
    ``items``): their maps on original pixels and raw maps, and the record that becomes item.json."""
    multi = {name: e.multi_target for name, e in results.items()}
    scores = {name: _per_map(e.scores, multi[name]).tolist() for name, e in results.items()}
    geometries = [batch["geometries"][at] for at in rows]
    on_originals = {
        name: outputs.maps_to_originals(_per_map(e.heatmap, multi[name]), geometries)
        if settings.on_original_pixels else None
        for name, e in results.items()
    }  # fmt: skip
    raws = {
        name: _raw_rows(_per_map(e.raw, multi[name])) if "raw" in settings.outputs else None
        for name, e in results.items()
    }
    writes = []
    for row, (at, targets) in enumerate(zip(rows, items)):
        path, geometry = shard[batch["indices"][at]], batch["geometries"][at]
        maps = {name: None if values is None else values[row] for name, values in on_originals.items()}
        item_raws = {name: None if values is None else values[row] for name, values in raws.items()}
        pixels = batch["originals"][at]  # None when nothing is drawn
        original = Image.fromarray(pixels.numpy()) if pixels is not None else None
        record = {
            **_source_fields(path),
            "source": batch["identities"][at],
            "size": list(geometry.original_size),
            "geometry": geometry.to_json(),
            "predictions": targets.predictions,
            "classes": targets.classes,
            "layer": layer,
            "settings": key,
            "task": settings.task.describe(),
            "targets": targets.ids,
        }
        item_scores = {name: values[row] for name, values in scores.items()}
        writes.append((path, (job.item_dir(path), record, original, maps, item_raws, item_scores, targets, settings)))
    return writes


class _Job:
    """One job's bookkeeping: the records and counts, the writer threads and the commit thread, the
    items handed to them and not yet taken back, and the progress bar."""

    def __init__(self, out_dir: Path, root: Path, report: Callable[[str, bool], None]) -> None:
        self.out_dir, self.root, self.report = out_dir, root, report
        self.summary = JobSummary()
        self.records: dict[str, dict[str, Any]] = {}
        self.in_flight: list[tuple[Path, Future, int]] = []  # (input, its batch's commit, its place in it)
        self.writing: list[Future] = []  # the writer tasks submitted since the last model step
        self.bar: Any = None
        self.pool: ThreadPoolExecutor | None = None
        self.commits: ThreadPoolExecutor | None = None

    def item_dir(self, path: Path) -> Path:
        return self.out_dir / output_folder(path, self.root)

    def partition(
        self, paths: Sequence[Path], key: Callable[[str | None], dict[str, Any]], overwrite: bool
    ) -> tuple[list[Path], list[Path]]:
        """``(inputs to explain, inputs inside the output folder)``; the others are finished
        (:func:`finished_record`), counted as skipped, and their folders rid of a killed run's temp files."""
        outputs_folder = self.out_dir.resolve()
        pending, inside = [], []
        for path in paths:
            if is_inside(path, outputs_folder):
                inside.append(path)
                continue
            record = None if overwrite else finished_record(self.item_dir(path), path, key)
            if record is None:
                pending.append(path)
            else:
                remove_temp_files(self.item_dir(path))  # e.g. of a killed --overwrite run
                self.records[str(path)] = record
                self.summary.skipped += 1
        return pending, inside

    def start(self, total: int, progress: bool, writers: int) -> None:
        self.bar = _progress(total, progress)
        self.pool, self.writer_count = outputs._writer_pool(writers), _writer_count(writers)
        self.commits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradcam-commit")

    def submit(self, writes: list[tuple[Path, tuple[Any, ...]]]) -> None:
        """Hand one group's items to the writers (a task per writer) and their commit to the commit thread."""
        assert self.pool is not None and self.commits is not None
        arguments = [write for _, write in writes]
        tasks = [self.pool.submit(outputs._write_items, share) for share in _shares(arguments, self.writer_count)]
        self.writing.extend(tasks)
        commit = self.commits.submit(_commit, [write[0] for write in arguments], tasks)
        self.in_flight.extend((path, commit, place) for place, (path, _) in enumerate(writes))

    def wait_for_writes(self) -> None:
        wait(self.writing)  # a failed task raises through its batch's commit, in drain
        self.writing.clear()

    def drain(self, keep: int) -> None:
        """Take back the oldest items until at most ``keep`` are in flight: records, reports, counts."""
        while len(self.in_flight) > keep:
            path, commit, place = self.in_flight.pop(0)
            record = commit.result()[place]
            if "error" in record:
                self.fail(path, record["error"])
                continue
            self.records[str(path)] = record
            self.summary.done += 1
            shown = ", ".join(
                f"{p['index']} {p['label']} {p.get('probability', p.get('score', 0.0)):.3f}"
                for p in record["predictions"][:3]
            )
            self.report(f"{display_path(path)}: {shown}", False)
            self.bar.update(1)

    def fail(self, path: Path, error: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append({**_source_fields(path), "error": error})
        self.report(f"skipped: {error}", True)
        self.bar.update(1)

    def close(self) -> None:
        """Wait for the writer and commit threads and end them (also after an error)."""
        for executor in (self.pool, self.commits):
            if executor is not None:
                executor.shutdown(wait=True)
        if self.bar is not None:
            self.bar.close()


def _write_manifest(out_dir: Path, model: str, settings: ExplainSettings, summary: JobSummary) -> None:
    """``OUT/manifest.json`` (after removing the temp files a killed run left beside it)."""
    manifest = {
        "model": model,
        "layer": summary.layer,
        "methods": list(settings.methods),
        "task": settings.task.name,
        "items": summary.items,
        "failed": summary.failures,
    }
    remove_temp_files(out_dir)
    write_json_atomic(out_dir / "manifest.json", manifest)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", disable=not enabled or total == 0, leave=False)
