"""Explain many image files: decode in parallel, explain in batches, write overlays atomically, resume.

For every readable image it writes, in ``OUT/<relative path>/``, per method and explained class:
an overlay PNG at the image's original resolution, the map as ``.npy`` (float32, original
resolution), a panel like the paper's figures, and ``item.json`` last (the item is done once it
exists). ``OUT/manifest.json`` lists every item. A bad file is reported and skipped; a rerun skips
finished items unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..explanation import Explanation
from ..imaging import draw
from ..imaging.geometry import Geometry, PreprocessConfig, preprocess
from ..imaging.io import ImageReadError, load_image, save_npy_atomic, save_png_atomic, write_json_atomic
from ..methods import METHODS, create_explainer
from ..methods.base import Explainer
from ..models import LoadedModel
from ..targets import TopK

logger = logging.getLogger("gradcam")

TITLES = {
    "gradcam": "Grad-CAM",
    "counterfactual": "Counterfactual",
    "cam": "CAM",
    "guided-backprop": "Guided Backprop",
    "guided-gradcam": "Guided Grad-CAM",
}
PANEL_TILE_HEIGHT = 384


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain and how to draw it."""

    methods: tuple[str, ...] = ("gradcam", "guided-backprop", "guided-gradcam", "counterfactual")
    targets: tuple[int, ...] | None = None  # the same classes for every image; None = top-k predicted
    top_k: int = 1
    show_top: int = 5
    alpha: float = 0.5
    colormap: str = "jet"
    layer: str | None = None

    def key(self, model_name: str, layer: str | None) -> dict[str, Any]:
        """What an existing output must have been made with to be reused by a rerun (JSON-normalised)."""
        return json.loads(json.dumps({"model": model_name, "layer": layer, **asdict(self)}))


@dataclass
class JobSummary:
    """Counts and records of one run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    layer: str | None = None


class ImageFiles(Dataset):
    """Decodes and preprocesses one file per item; a bad file becomes an error record, not an exception."""

    def __init__(self, paths: Sequence[Path], config: PreprocessConfig) -> None:
        self.paths = list(paths)
        self.config = config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = load_image(self.paths[index])
            tensor, geometry = preprocess(image, self.config)
        except ImageReadError as error:
            return {"index": index, "error": str(error)}
        except (OSError, ValueError) as error:  # e.g. decompression-bomb limits, odd modes
            return {"index": index, "error": f"cannot read image '{self.paths[index]}': {error}"}
        return {
            "index": index,
            "tensor": tensor,
            "original": torch.from_numpy(np.array(image, dtype=np.uint8)),
            "geometry": geometry,
            "error": None,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items; keep the failures aside."""
    good = [item for item in items if item["error"] is None]
    return {
        "indices": [item["index"] for item in good],
        "x": torch.stack([item["tensor"] for item in good]) if good else None,
        "originals": [item["original"] for item in good],
        "geometries": [item["geometry"] for item in good],
        "failures": [(item["index"], item["error"]) for item in items if item["error"] is not None],
    }


def output_folder(path: Path, root: Path) -> str:
    """A stable, collision-free folder name for ``path`` relative to ``root`` (``a/b.jpg`` -> ``a/b_jpg``)."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    return str(relative.with_name(relative.name.replace(".", "_")))


def common_root(paths: Sequence[Path]) -> Path:
    """The deepest folder containing every path."""
    parents = [p.parent.parts for p in paths]
    shared = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        shared.append(parts[0])
    return Path(*shared) if shared else Path("/")


def class_name(index: int, labels: Sequence[str] | None) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else f"class {index}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:40] or "x"


def _saliency_2d(map_: torch.Tensor) -> torch.Tensor:
    """A (H, W) map in [0, 1] from a class map (H, W) or an input gradient (C, H, W): max |g| over C."""
    if map_.dim() == 3:
        map_ = map_.abs().amax(dim=0)
        peak = map_.max()
        map_ = map_ / peak if peak > 0 else map_
    return map_


class _Explainers:
    """The method objects for one job, created once (the layer is resolved on the first batch)."""

    def __init__(self, loaded: LoadedModel, settings: ExplainSettings) -> None:
        unknown = [m for m in settings.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
        layer = settings.layer or loaded.default_layer
        self.by_name: dict[str, Explainer] = {
            name: create_explainer(name, loaded.model, layer) for name in settings.methods
        }

    @property
    def layer(self) -> str | None:
        for explainer in self.by_name.values():
            name = getattr(explainer, "layer_name", None)
            if name is not None:
                return name
        return None

    def run(
        self, x: torch.Tensor, settings: ExplainSettings
    ) -> tuple[dict[str, Explanation], torch.Tensor, torch.Tensor]:
        """All methods on one batch; the first call chooses the classes, the others reuse them."""
        first_target: Any = (
            torch.tensor(settings.targets, device=x.device).expand(x.shape[0], -1)
            if settings.targets
            else TopK(settings.top_k)
        )
        results: dict[str, Explanation] = {}
        classes = logits = None
        for name, explainer in self.by_name.items():
            target = first_target if classes is None else classes
            results[name] = explainer(x, target, **METHODS[name].call_options)
            if classes is None:
                classes, logits = results[name].classes, results[name].logits
        return results, classes, logits


def _write_item(
    item_dir: Path,
    original: Image.Image,
    maps: dict[str, torch.Tensor],
    classes: list[int],
    scores: dict[str, list[float]],
    labels: Sequence[str] | None,
    settings: ExplainSettings,
) -> list[dict[str, Any]]:
    """Draw and write one image's outputs; ``maps[method]`` is (k, H0, W0) or (k, C, H0, W0) on the CPU."""
    outputs = []
    tile_height = min(original.height, PANEL_TILE_HEIGHT)
    for j, class_index in enumerate(classes):
        label = class_name(class_index, labels)
        tiles, titles = [original], ["Original"]
        for name, method_maps in maps.items():
            on_original = method_maps[j]
            stem = f"{name}_{class_index}_{_slug(label)}"
            if on_original.dim() == 3:
                picture = draw.gradient_image(on_original)
            else:
                picture = draw.overlay(original, on_original.numpy(), settings.alpha, settings.colormap)
            overlay_path = save_png_atomic(item_dir / f"{stem}.png", picture)
            heatmap_path = save_npy_atomic(item_dir / f"{stem}.npy", _saliency_2d(on_original).numpy())
            tiles.append(picture)
            titles.append(f"{TITLES.get(name, name)}: {label}")
            outputs.append(
                {
                    "method": name,
                    "target": class_index,
                    "label": label,
                    "score": scores[name][j],
                    "overlay": str(overlay_path),
                    "heatmap": str(heatmap_path),
                }
            )
        panel_path = save_png_atomic(
            item_dir / f"panel_{class_index}_{_slug(label)}.png", draw.panel(tiles, titles, tile_height=tile_height)
        )
        for output in outputs[-len(maps) :]:
            output["panel"] = str(panel_path)
    return outputs


def _finish_item(
    item_dir: Path, record: dict[str, Any], original: Image.Image, maps: dict[str, torch.Tensor],
    scores: dict[str, list[float]], labels: Sequence[str] | None, settings: ExplainSettings,
) -> dict[str, Any]:  # fmt: skip
    """Writer-thread task: every output file, then ``item.json`` last (the item is done once it exists)."""
    record["outputs"] = _write_item(item_dir, original, maps, record["classes"], scores, labels, settings)
    write_json_atomic(item_dir / "item.json", record)
    return record


def distributed_rank() -> tuple[int, int]:
    """``(rank, world size)`` under ``torchrun`` / ``torch.distributed``; ``(0, 1)`` otherwise.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here if needed: NCCL when
    CUDA is available, gloo otherwise.
    """
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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

    Decoding runs in ``workers`` DataLoader processes and drawing/encoding in ``writers`` processes
    (0: one thread), so both overlap the model. Under ``torchrun`` each rank takes a disjoint shard
    (``pending[rank::world]``) and rank 0 writes the merged manifest.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    device = torch.device(device)
    rank, world = distributed_rank()
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    report = report or (lambda line, is_error: None)
    summary = JobSummary()
    root = common_root(paths) if paths else Path(".")
    loaded.model.to(device)
    explainers = _Explainers(loaded, settings)
    pending: list[Path] = []
    records: dict[str, dict[str, Any]] = {}
    for path in paths:
        item_json = out_dir / output_folder(path, root) / "item.json"
        if not overwrite and item_json.is_file():
            try:
                record = json.loads(item_json.read_text())
            except (OSError, json.JSONDecodeError):
                record = None
            if record is not None and record.get("settings") == settings.key(loaded.name, record.get("layer")):
                records[str(path)] = record
                summary.skipped += 1
                continue
        pending.append(path)
    shard = pending[rank::world]

    loader = DataLoader(
        ImageFiles(shard, loaded.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    bar = _progress(len(shard), progress and rank == 0)
    in_flight: list[tuple[Path, Future]] = []

    def drain(keep: int) -> None:
        while len(in_flight) > keep:
            path, future = in_flight.pop(0)
            record = future.result()
            records[str(path)] = record
            summary.done += 1
            shown = ", ".join(f"{p['index']} {p['label']} {p['probability']:.3f}" for p in record["predictions"][:3])
            report(f"{path}: {shown}", False)
            bar.update(1)

    pool = _writer_pool(writers)
    try:
        for batch in loader:
            for index, error in batch["failures"]:
                summary.failed += 1
                summary.failures.append({"input": str(shard[index]), "error": error})
                report(f"skipped: {error}", True)
            bar.update(len(batch["failures"]))
            if batch["x"] is None:
                continue
            x = batch["x"].to(device, non_blocking=True)
            results, classes, logits = explainers.run(x, settings)
            key = settings.key(loaded.name, explainers.layer)
            probabilities = logits.float().softmax(dim=1)
            top = probabilities.topk(min(settings.show_top, probabilities.shape[1]), dim=1)
            top_values, top_indices, class_lists = top.values.tolist(), top.indices.tolist(), classes.tolist()
            scores = {name: e.scores.tolist() for name, e in results.items()}
            for b, index in enumerate(batch["indices"]):
                path = shard[index]
                geometry: Geometry = batch["geometries"][b]
                maps = {name: geometry.to_original(e.heatmap[b].float()).cpu() for name, e in results.items()}
                original = Image.fromarray(batch["originals"][b].numpy())
                record = {
                    "input": str(path),
                    "size": [original.width, original.height],
                    "predictions": [
                        {"index": i, "label": class_name(i, loaded.labels), "probability": p}
                        for p, i in zip(top_values[b], top_indices[b])
                    ],
                    "classes": class_lists[b],
                    "layer": explainers.layer,
                    "settings": key,
                }
                item_scores = {name: values[b] for name, values in scores.items()}
                future = pool.submit(
                    _finish_item, out_dir / output_folder(path, root), record, original, maps, item_scores,
                    loaded.labels, settings,
                )  # fmt: skip
                in_flight.append((path, future))
            drain(keep=2 * batch_size)  # bounded: at most two batches of drawing behind the model
        drain(keep=0)
    finally:
        pool.shutdown(wait=True)
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
            "items": summary.items,
            "failed": summary.failures,
        }
        write_json_atomic(out_dir / "manifest.json", manifest)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    summary.seconds = time.perf_counter() - start
    return summary


def _merge_ranks(summary: JobSummary, records: dict[str, dict[str, Any]]) -> JobSummary:
    """Gather every rank's records and counts (all ranks end with the union)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (records, summary.done, summary.failed, summary.failures))
    merged = JobSummary(skipped=summary.skipped)
    for rank_records, done, failed, failures in gathered:
        records.update(rank_records)
        merged.done += done
        merged.failed += failed
        merged.failures += failures
    return merged


def _writer_pool(writers: int) -> Executor:
    """Processes that draw, encode and write the outputs (PNG encoding holds the GIL for much of its
    time, so threads do not scale); ``writers=0`` draws in one thread of this process."""
    if writers <= 0:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradcam-writer")
    return ProcessPoolExecutor(max_workers=writers, mp_context=multiprocessing.get_context("fork"))


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", disable=not enabled or total == 0, leave=False)
