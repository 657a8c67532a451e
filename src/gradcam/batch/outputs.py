"""A job's outputs: maps on original pixels, drawing, atomic writes in writer threads, item.json last."""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..imaging import draw
from ..imaging.geometry import (
    Geometry,
)
from ..imaging.io import (
    remove_temp_files,
    save_npy_atomic,
    save_png_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from ..methods import METHODS
from ..methods.base import normalize, upsample
from .settings import JPEG_QUALITY, OUTPUT_KINDS, ExplainSettings
from .targets import ItemTargets

PANEL_TILE_HEIGHT = 384


BOX_COLOR = (0, 255, 0)


CONTOUR_COLOR = (255, 255, 255)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:40] or "x"


def _saliency_2d(map_: torch.Tensor) -> torch.Tensor:
    """A (H, W) map in [0, 1] from a class map (H, W) or an input gradient (C, H, W): max |g| over C."""
    if map_.dim() == 3:
        map_ = map_.abs().amax(dim=0)
        peak = map_.max()
        map_ = map_ / peak if peak > 0 else map_
    return map_


def _mark(picture: Image.Image, marks: dict[str, Any]) -> Image.Image:
    """Draw a target's box (detection) or region outline (segmentation) on a tile."""
    thickness = max(2, round(max(picture.size) / 250))
    if marks.get("contour") is not None:
        picture = draw.draw_contour(picture, marks["contour"], CONTOUR_COLOR, width=thickness)
    if marks.get("box") is not None:
        picture = draw.draw_box(picture, marks["box"], BOX_COLOR, width=thickness, label=marks.get("box_label"))
    return picture


def _write_item(
    item_dir: Path,
    original: Image.Image | None,
    maps: dict[str, torch.Tensor | None],
    raws: dict[str, np.ndarray | None],
    targets: ItemTargets,
    scores: dict[str, list[float]],
    settings: ExplainSettings,
) -> list[dict[str, Any]]:
    """Draw and write one image's outputs (those in ``settings.outputs``; a file not written is recorded
    as None; each fsynced); ``maps[method]`` is (k, H0, W0) or (k, C, H0, W0) on the
    CPU, ``raws[method]`` the k raw maps, a float32 array (None when not needed)."""
    outputs = []
    kinds, drawn = set(settings.outputs), settings.draws
    for j, (target_id, label) in enumerate(zip(targets.ids, targets.labels)):
        marks = targets.marks[j] if targets.marks else {}
        tiles, titles = [_mark(original, marks) if marks and drawn else original], ["Original"]
        for name, method_maps in maps.items():
            on_original = None if method_maps is None else method_maps[j]
            stem = f"{name}_{target_id}_{_slug(label)}"
            output = {"method": name, "target": target_id, "label": label, "score": scores[name][j]}
            output.update(targets.extras[j] if targets.extras else {})
            output.update({"overlay": None, "heatmap": None, "panel": None, "raw": None})
            if drawn:
                if on_original.dim() == 3:
                    picture = draw.gradient_image(on_original)
                else:
                    picture = draw.overlay(original, on_original.numpy(), settings.alpha, settings.colormap)
                if marks:
                    picture = _mark(picture, marks)
                tiles.append(picture)
                titles.append(f"{METHODS[name].title if name in METHODS else name}: {label}")
                if "overlay" in kinds:
                    output["overlay"] = str(_save_picture(item_dir / stem, picture, settings.picture_format))
            if "heatmap" in kinds:
                heatmap = _saliency_2d(on_original).numpy()
                output["heatmap"] = str(save_npy_atomic(item_dir / f"{stem}.npy", heatmap))
            if "raw" in kinds:
                output["raw"] = str(save_npy_atomic(item_dir / f"{stem}_raw.npy", raws[name][j]))
            outputs.append(output)
        if "panel" in kinds:
            panel = draw.panel(tiles, titles, tile_height=min(original.height, PANEL_TILE_HEIGHT))
            panel_stem = item_dir / f"panel_{target_id}_{_slug(label)}"
            panel_path = _save_picture(panel_stem, panel, settings.picture_format)
            for output in outputs[-len(maps) :]:
                output["panel"] = str(panel_path)
    return outputs


def _save_picture(stem: Path, picture: Image.Image, picture_format: str) -> Path:
    """Write ``stem.png`` (lossless) or ``stem.jpg`` (quality :data:`JPEG_QUALITY`) atomically."""
    if picture_format == "jpg":
        data = io.BytesIO()
        picture.convert("RGB").save(data, format="JPEG", quality=JPEG_QUALITY)
        return write_bytes_atomic(stem.with_name(stem.name + ".jpg"), data.getvalue())
    return save_png_atomic(stem.with_name(stem.name + ".png"), picture)


def _write_outputs(
    item_dir: Path, record: dict[str, Any], original: Image.Image | None, maps: dict[str, torch.Tensor | None],
    raws: dict[str, np.ndarray | None], scores: dict[str, list[float]], targets: ItemTargets,
    settings: ExplainSettings,
) -> dict[str, Any]:  # fmt: skip
    """Writer task: every output file of one item (after removing the temp files a killed run left in
    its folder); ``record`` with their paths and ``"files"``, each output's name and size (item.json
    is the commit's). A failure to draw or encode this item (not to write: an OSError stops the job)
    gives ``{"error": why}`` instead, and the item is reported failed."""
    remove_temp_files(item_dir)
    try:
        outputs = _write_item(item_dir, original, maps, raws, targets, scores, settings)
    except (ValueError, RuntimeError, MemoryError) as error:
        return {"error": f"{record['input']}: cannot draw or encode its outputs: {type(error).__name__}: {error}"}
    record["outputs"] = outputs
    written = [Path(o[kind]) for o in outputs for kind in OUTPUT_KINDS if o[kind] is not None]
    record["files"] = {file.name: file.stat().st_size for file in written}
    return record


def _write_items(items: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Writer task: :func:`_write_outputs` for each item of a share of one batch."""
    return [_write_outputs(*item) for item in items]


def _shares(items: list[Any], count: int) -> list[list[Any]]:
    """``items`` in at most ``count`` consecutive, nearly equal, non-empty shares (in order)."""
    size = max(1, -(-len(items) // max(1, count)))
    return [items[start : start + size] for start in range(0, len(items), size)]


def _commit(item_dirs: list[Path], writes: list[Future]) -> list[dict[str, Any]]:
    """Commit-thread task for one batch: wait for its writer tasks (their records, in the order of
    ``item_dirs``; each output was fsynced), then write each item's ``item.json``, the done marker,
    last: present, its outputs are on the disk. It is not fsynced itself: lost or empty after a power
    cut, the rerun redoes the item."""
    records = [record for write in writes for record in write.result()]  # a writer's error is re-raised here
    for item_dir, record in zip(item_dirs, records, strict=True):
        if "error" not in record:
            write_json_atomic(item_dir / "item.json", record, durable=False)
    return records


_RESAMPLE_ELEMENTS = 1 << 25  # at most 128 MiB of float32 maps on original pixels per resampling call


def maps_to_originals(maps: torch.Tensor, geometries: Sequence[Geometry]) -> list[torch.Tensor]:
    """Row i of ``maps`` (B, ...) on image i's original pixels (:meth:`Geometry.to_original`), float32
    on the CPU; rows that share a geometry (same-size images) are resampled in one call, and a row may
    be a view of its call's result."""
    rows_of: dict[Geometry, list[int]] = {}
    for row, geometry in enumerate(geometries):
        rows_of.setdefault(geometry, []).append(row)
    mapped: list[torch.Tensor] = [maps[0]] * len(geometries)
    for geometry, rows in rows_of.items():
        width, height = geometry.original_size
        per_call = max(1, _RESAMPLE_ELEMENTS // (maps[0, ..., 0, 0].numel() * width * height))
        for start in range(0, len(rows), per_call):
            chunk = rows[start : start + per_call]
            index = torch.tensor(chunk, device=maps.device)
            for row, original in zip(chunk, geometry.to_original(maps.index_select(0, index).float()).cpu()):
                mapped[row] = original
    return mapped


def _raw_rows(maps: torch.Tensor) -> list[np.ndarray]:
    """The rows of ``maps`` as float32 numpy arrays, each its own copy (one device copy for all)."""
    return [row.copy() for row in maps.detach().float().cpu().numpy()]


def heatmap_from_raw(raw: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The heatmap on original pixels (H0, W0) of a class-activation method's raw (u, v) map: what the
    ``heatmap`` output holds, ``to_original(normalize(upsample(raw, input_size)))`` (:class:`Geometry`
    from ``item.json``'s ``"geometry"``: ``Geometry.from_json``)."""
    if raw.dim() != 2:
        raise ValueError(
            f"raw must be one (u, v) class-activation map; got shape {tuple(raw.shape)} (input-gradient methods' "
            "raw maps are the gradients at the input's size: use geometry.to_original on them)"
        )
    width, height = geometry.input_size
    heatmap = normalize(upsample(raw.float()[None, None], (height, width)))
    return geometry.to_original(heatmap)[0, 0]


def _writer_pool(writers: int) -> ThreadPoolExecutor:
    """Threads of this process that draw, encode and write the outputs (:func:`_writer_count` of them):
    zlib, PIL's resampling and file writes release the GIL. Threads end with the job's process, whatever
    ends it; the job shuts them down before it returns or raises."""
    return ThreadPoolExecutor(max_workers=_writer_count(writers), thread_name_prefix="gradcam-writer")


def _writer_count(writers: int) -> int:
    """How many writer threads :func:`_writer_pool` runs: ``writers``, or with 0 one per torch thread."""
    return writers if writers > 0 else max(1, torch.get_num_threads())
