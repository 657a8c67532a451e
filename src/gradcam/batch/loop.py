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

from ..imaging.geometry import (
    Geometry,
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
from .targets import TaskRunner

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
    """Explain every file in ``paths`` and write the outputs under ``out_dir`` (see module docstring).

    Decoding runs in ``workers`` DataLoader processes, overlapping the model (on a GPU), or with
    ``workers=0`` in ``torch.get_num_threads()`` threads between model steps (on a CPU, where the
    model uses every core); drawing/encoding runs in ``writers`` threads (0: one per torch thread),
    beside the model on an accelerator and between model steps on a CPU (a batch's writes finish,
    while the next batch decodes, before that batch's explanation call). Under
    ``torchrun`` each rank takes a disjoint shard (``pending[rank::world]``) and rank 0 writes the
    merged manifest. Non-class tasks look at the model's output once per batch (no gradients) to build
    the target and the predictions.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    device = torch.device(device)
    rank, world = distributed_rank()
    device = rank_device(device, rank, world)
    report = report or (lambda line, is_error: None)
    summary = JobSummary()
    root = common_root(paths) if paths else Path(".")
    model = as_detector(loaded.model).to(device)
    explainers = _Explainers(model, settings.layer or loaded.default_layer, settings.methods)
    task = settings.task
    runner = None if task.name == "class" else TaskRunner(task, loaded, model, settings.show_top)
    pending: list[Path] = []
    records: dict[str, dict[str, Any]] = {}
    outputs_folder = out_dir.resolve()
    inside: list[Path] = []
    for path in paths:
        if is_inside(path, outputs_folder):
            inside.append(path)
            continue
        record = None
        if not overwrite:
            key = functools.partial(settings.key, loaded.name)
            record = finished_record(out_dir / output_folder(path, root), path, key)
        if record is not None:
            records[str(path)] = record
            summary.skipped += 1
            continue
        pending.append(path)
    shard = pending[rank::world]

    files = ImageFiles(shard, loaded.preprocess, keep_original=settings.draws)
    loader = decoded_batches(files, batch_size, workers, torch.get_num_threads(), device.type == "cuda")
    bar = _progress(len(shard), progress and rank == 0)
    in_flight: list[tuple[Path, Future, int]] = []  # (input, its batch's commit, its place in the batch)

    def drain(keep: int) -> None:
        while len(in_flight) > keep:
            path, commit, place = in_flight.pop(0)
            record = commit.result()[place]
            if "error" in record:
                fail(path, record["error"])
                continue
            records[str(path)] = record
            summary.done += 1
            shown = ", ".join(
                f"{p['index']} {p['label']} {p.get('probability', p.get('score', 0.0)):.3f}"
                for p in record["predictions"][:3]
            )
            report(f"{display_path(path)}: {shown}", False)
            bar.update(1)

    def fail(path: Path, error: str) -> None:
        summary.failed += 1
        summary.failures.append({**_source_fields(path), "error": error})
        report(f"skipped: {error}", True)
        bar.update(1)

    if rank == 0:
        for path in inside:
            fail(path, f"{display_path(path)} is inside the output folder {display_path(out_dir)}: outputs are "
                       "not explained again; move it out or choose another output folder")  # fmt: skip

    pool, writer_count = outputs._writer_pool(writers), _writer_count(writers)
    commits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradcam-commit")
    # On a CPU device the model's threads use every core, and a writer beside them competes for a core
    # and for the GIL that every op of the forward takes: there a batch's writes finish before the next
    # model step, while the next batch decodes (benchmarks/folder_ab.py, 2 cores: neutral on Lite0,
    # +2-6 % images/s on ResNet-50).
    writes_between_steps = device.type == "cpu"
    writing: list[Future] = []  # the writer tasks submitted since the last model step
    try:
        for batch in loader:
            for index, error in batch["failures"]:
                fail(shard[index], error)
            if not batch["indices"]:
                continue
            for positions, group_x in same_size_groups(batch):
                if writes_between_steps:
                    wait(writing)  # a failed task raises through its batch's commit, in drain
                    writing.clear()
                x = normalize_pixels(group_x.to(device, non_blocking=True), loaded.preprocess)
                geometries = [batch["geometries"][p] for p in positions]
                results, kept, failures, items = _explain_group(
                    x, geometries, explainers, runner, settings, loaded.labels
                )
                for position, error in failures:
                    path = shard[batch["indices"][positions[position]]]
                    fail(path, f"{display_path(path)}: {error}")
                if not kept:
                    continue
                key = settings.key(loaded.name, explainers.layer)
                multi = {name: e.multi_target for name, e in results.items()}
                scores = {name: _per_map(e.scores, multi[name]).tolist() for name, e in results.items()}
                kept_geometries = [batch["geometries"][positions[p]] for p in kept]
                writes: list[tuple[Any, ...]] = []  # this group's items: _write_outputs' arguments
                inputs: list[Path] = []
                on_originals = {
                    name: outputs.maps_to_originals(_per_map(e.heatmap, multi[name]), kept_geometries)
                    if settings.on_original_pixels else None
                    for name, e in results.items()
                }  # fmt: skip
                raws = {
                    name: _raw_rows(_per_map(e.raw, multi[name])) if "raw" in settings.outputs else None
                    for name, e in results.items()
                }
                for row, (position, targets) in enumerate(zip(kept, items)):
                    at = positions[position]
                    path = shard[batch["indices"][at]]
                    geometry: Geometry = batch["geometries"][at]
                    maps = {name: None if rows is None else rows[row] for name, rows in on_originals.items()}
                    item_raws = {name: None if rows is None else rows[row] for name, rows in raws.items()}
                    pixels = batch["originals"][at]  # None when nothing is drawn
                    original = Image.fromarray(pixels.numpy()) if pixels is not None else None
                    record = {
                        **_source_fields(path),
                        "source": batch["identities"][at],
                        "size": list(geometry.original_size),
                        "geometry": geometry.to_json(),
                        "predictions": targets.predictions,
                        "classes": targets.classes,
                        "layer": explainers.layer,
                        "settings": key,
                        "task": task.describe(),
                        "targets": targets.ids,
                    }
                    item_scores = {name: values[row] for name, values in scores.items()}
                    item_dir = out_dir / output_folder(path, root)
                    writes.append((item_dir, record, original, maps, item_raws, item_scores, targets, settings))
                    inputs.append(path)
                tasks = [pool.submit(outputs._write_items, share) for share in _shares(writes, writer_count)]
                writing.extend(tasks)
                commit = commits.submit(_commit, [item[0] for item in writes], tasks)
                in_flight.extend((path, commit, place) for place, path in enumerate(inputs))
            drain(keep=2 * batch_size)  # bounded: at most two batches of drawing behind
        drain(keep=0)
    finally:
        loader.close()  # stops the decoding threads (and restores the thread setting) even on an error
        pool.shutdown(wait=True)
        commits.shutdown(wait=True)  # finished items get their item.json even when the job stops early
        bar.close()
    layer = explainers.layer or next((r.get("layer") for r in records.values()), None)
    if world > 1:
        summary = _merge_ranks(summary, records)
    summary.items = [records[str(p)] for p in paths if str(p) in records]
    summary.layer = layer
    if rank == 0:
        manifest = {
            "model": loaded.name,
            "layer": summary.layer,
            "methods": list(settings.methods),
            "task": task.name,
            "items": summary.items,
            "failed": summary.failures,
        }
        remove_temp_files(out_dir)
        write_json_atomic(out_dir / "manifest.json", manifest)
    barrier()
    summary.seconds = time.perf_counter() - start
    return summary


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", disable=not enabled or total == 0, leave=False)
