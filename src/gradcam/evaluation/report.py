"""Tables, CSV/JSON files and figures for an :class:`~.runner.EvaluationResult`.

Figures: the mean deletion and insertion curves of every method (matplotlib when installed, otherwise
drawn with PIL); for every method its best and worst box with the map, the ground-truth box (green)
and the predicted box (red); and ``methods.png``, every method's map of the same images side by side
(one row per image and class). Maps are drawn with :mod:`gradcam.imaging.draw`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..imaging import draw
from ..imaging.curves import CurvePanel, CurveSeries, curves_image, draw_panel
from ..imaging.geometry import Geometry
from ..imaging.grids import ZERO_MAP_NOTE
from ..imaging.io import save_png_atomic, write_bytes_atomic, write_json_atomic
from .results import EvaluationResult, Example, FigureRow
from .sanity import THRESHOLD
from .sanity_figure import plot_sanity

logger = logging.getLogger("gradcam")

#: Column key -> (header, number format). Arrows say which direction is better.
COLUMNS: dict[str, tuple[str, str]] = {
    "top1_loc_error": ("Top-1 loc. err % ↓", "{:.1f}"),
    "topk_loc_error": ("Top-{k} loc. err % ↓", "{:.1f}"),
    "top1_cls_error": ("Top-1 cls. err % ↓", "{:.1f}"),
    "topk_cls_error": ("Top-{k} cls. err % ↓", "{:.1f}"),
    "box_accuracy": ("Box acc. % ↑", "{:.1f}"),
    "box_accuracy_two_object": ("Box acc. 2-obj % ↑", "{:.1f}"),
    "max_box_accuracy": ("MaxBoxAcc % ↑", "{:.1f}"),
    "best_threshold": ("at threshold", "{:.2f}"),
    "mean_iou": ("Mean IoU ↑", "{:.3f}"),
    "pointing": ("Pointing % ↑", "{:.1f}"),
    "pointing_two_object": ("Pointing 2-obj % ↑", "{:.1f}"),
    "points_at_other": ("At other obj. % ↓", "{:.1f}"),
    "energy": ("Energy in box % ↑", "{:.1f}"),
    "in_out_ratio": ("In/out ratio ↑", "{:.2f}"),
    "deletion_auc": ("Deletion AUC ↓", "{:.3f}"),
    "insertion_auc": ("Insertion AUC ↑", "{:.3f}"),
    "average_drop": ("Avg. drop % ↓", "{:.1f}"),
    "increase_in_confidence": ("Increase % ↑", "{:.1f}"),
    "rank_correlation": ("Rank corr. occlusion ↑", "{:.3f}"),
    "road_morf": ("ROAD MoRF ↓", "{:.3f}"),
    "road_lerf": ("ROAD LeRF ↑", "{:.3f}"),
    "road_gap": ("ROAD LeRF−MoRF ↑", "{:.3f}"),
    "max_sensitivity": ("Max-sens. ↓", "{:.3f}"),
    "avg_sensitivity": ("Avg-sens. ↓", "{:.3f}"),
    "sparseness": ("Sparseness ↑", "{:.3f}"),
    "entropy": ("Entropy ↓", "{:.2f}"),
    "cost": ("Cost (forward passes) ↓", "{:.1f}"),
    "mprt_ssim": ("MPRT SSIM (curve mean) ↓", "{:.3f}"),
    "mprt_spearman": ("MPRT abs. rank corr. (curve mean) ↓", "{:.3f}"),
    "random_logit_ssim": ("Random-logit SSIM ↓", "{:.3f}"),
    "sanity": ("Sanity", "{}"),
}
#: Cell text that flags a method in the table (a failed sanity check).
FLAGS = {"FAIL": "**FAIL**", "partial": "*partial*"}

TASK_COLUMNS = {
    "localization": ("top1_loc_error", "topk_loc_error", "top1_cls_error", "box_accuracy", "max_box_accuracy"),
    "pointing": ("pointing", "pointing_two_object", "points_at_other", "energy", "in_out_ratio"),
    "faithfulness": ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence", "rank_correlation"),
    "sanity": ("mprt_ssim", "mprt_spearman", "random_logit_ssim", "sanity"),
}
#: Faithfulness's further columns: ROAD, robustness, complexity (each shown when it ran).
TASK_COLUMNS["faithfulness"] += ("road_morf", "road_lerf", "road_gap", "max_sensitivity", "avg_sensitivity")
TASK_COLUMNS["faithfulness"] += ("sparseness", "entropy")
HEADLINE_TASKS = ("localization", "pointing", "faithfulness")
HEADLINE_COLUMNS = (
    "box_accuracy",
    "max_box_accuracy",
    "best_threshold",
    "box_accuracy_two_object",
    "pointing",
    "pointing_two_object",
    "points_at_other",
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "road_gap",
    "max_sensitivity",
    "sparseness",
    "cost",
)
#: Height of each tile of ``methods.png`` (images are scaled to it, aspect kept).
METHODS_TILE_HEIGHT = 160


def columns_for(tasks: Sequence[str], present: set[str]) -> list[str]:
    """The table's columns for a run of ``tasks`` whose rows hold the keys ``present``: the headline set when
    localization, pointing and faithfulness all ran (else each of their own), then the other tasks' columns
    (sanity), then the cost; only columns with a value in some row. Unknown tasks (a newer summary.json) add
    nothing."""
    headline = all(task in tasks for task in HEADLINE_TASKS)
    columns = list(HEADLINE_COLUMNS) if headline else [c for t in tasks if t in HEADLINE_TASKS for c in TASK_COLUMNS[t]]
    columns += [c for t in tasks if t not in HEADLINE_TASKS for c in TASK_COLUMNS.get(t, ())]
    columns.append("cost")
    return [c for c in dict.fromkeys(columns) if c in present and c in COLUMNS]


def table_columns(result: EvaluationResult) -> list[str]:
    """The columns for this run (:func:`columns_for`)."""
    return columns_for(result.settings.tasks, {key for m in result.methods for key in m.summary})


def format_cell(column: str, value: Any) -> str:
    """A table cell: ``value`` in the column's format (:data:`COLUMNS`), flags marked, "–" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = COLUMNS[column][1].format(value)
    return FLAGS.get(text, text)


def table_head(columns: Sequence[str], k: int | str = 5) -> list[str]:
    """A Markdown table's header and alignment lines for ``columns`` (``{k}`` in a header: the top-k)."""
    headers = ["Method"] + [COLUMNS[c][0].replace("{k}", str(k)) for c in columns]
    return ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]


def table_row(title: str, values: Mapping[str, Any], columns: Sequence[str]) -> str:
    """One Markdown table row: ``title`` and ``values`` of ``columns`` (:func:`format_cell`)."""
    return f"| {title} | " + " | ".join(format_cell(column, values.get(column)) for column in columns) + " |"


def format_table(result: EvaluationResult, columns: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per method (baselines last); methods that failed show why."""
    columns = list(columns or table_columns(result))
    k = next((m.summary.get("k") for m in result.methods if m.summary.get("k")), result.settings.top_k)
    lines = table_head(columns, k)
    ordered = [m for m in result.methods if not m.is_baseline and not m.error]
    ordered += [m for m in result.methods if m.is_baseline] + [m for m in result.methods if m.error]
    for method in ordered:
        if method.error:
            lines.append(
                f"| {method.title} | not evaluated: {method.error.splitlines()[0][:80]} |" + " |" * (len(columns) - 1)
            )
            continue
        lines.append(table_row(method.title, method.summary, columns))
    return "\n".join(lines)


def describe(result: EvaluationResult) -> str:
    """One paragraph saying what was measured: model, images, classification accuracy, settings."""
    s = result.settings
    cls = result.classification
    accuracy = ", ".join(f"{key.replace('_', ' ')} {value:.1f} %" for key, value in cls.items() if key != "images")
    parts = [
        f"model {result.model}, {result.images} images ({accuracy}), {result.seconds:.0f} s"
        + (f" on {result.world} processes" if result.world > 1 else "")
        + (f" ({result.reused_images} images' results reused from a previous run)" if result.reused_images else ""),
        f"boxes: threshold {s.threshold:g} of the max, largest {s.connectivity}-connected segment, IoU >= {s.iou:g}",
        f"pointing tolerance {s.tolerance:g} px",
    ]
    if "faithfulness" in s.tasks:
        step = "one row" if s.step is None else f"{s.step} px"
        parts.append(
            f"deletion to '{s.deletion_baseline}', insertion from '{s.insertion_baseline}', step {step}, "
            f"score {s.score}"
        )
        if s.road:
            parts.append(f"ROAD at {', '.join(f'{p:g}' for p in s.road_percentages)} %, noise {s.road_noise:g}")
        if s.robustness_samples:
            parts.append(f"sensitivity: {s.robustness_samples} samples of Uniform(±{s.robustness_radius:g}) noise")
    if "sanity" in s.tasks:
        parts.append(
            f"sanity: {' and '.join(s.sanity_modes)} randomisation of every layer, top down, and a random other "
            f"class, on the first {min(s.sanity_images, result.images)} images; FAIL when the maps keep a mean SSIM "
            f"> {THRESHOLD:g} over the cascading steps, partial when only their mean rank correlation of absolute "
            "values does"
        )
    return "; ".join(parts)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV: the union of their keys as columns, lists and dicts as JSON."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return buffer.getvalue()


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def summary_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    """One flat dict per method: name, title, baseline flag, layer, error, every summary number."""
    return [
        {
            "method": m.name,
            "title": m.title,
            "baseline": m.is_baseline,
            "layer": m.layer,
            "error": m.error,
            **{k: v for k, v in m.summary.items()},
        }
        for m in result.methods
    ]


def write_report(result: EvaluationResult, out: str | os.PathLike[str], plots: bool = True) -> dict[str, Path]:
    """Write ``summary.json``, ``summary.csv``, ``per_image.csv``, ``per_image.json``, ``table.md``,
    ``curves.json``, ``sanity.json`` (MPRT curves) and, with ``plots``, ``curves.png``, ``sanity.png``,
    ``methods.png`` and ``examples/<method>.png``.
    Returns the paths."""
    out = Path(out)
    written: dict[str, Path] = {}
    rows = summary_rows(result)
    settings = asdict(result.settings)
    written["summary.json"] = write_json_atomic(
        out / "summary.json",
        _clean(
            {
                "model": result.model,
                "images": result.images,
                "seconds": round(result.seconds, 1),
                "processes": result.world,
                "reused_images": result.reused_images,
                "classification": result.classification,
                "settings": settings,
                "methods": rows,
            }
        ),
    )
    written["summary.csv"] = write_bytes_atomic(out / "summary.csv", csv_text(rows).encode("utf-8"))
    written["per_image.csv"] = write_bytes_atomic(out / "per_image.csv", csv_text(result.per_image).encode("utf-8"))
    written["per_image.json"] = write_json_atomic(out / "per_image.json", _clean(result.per_image))
    table = format_table(result)
    written["table.md"] = write_bytes_atomic(out / "table.md", (describe(result) + "\n\n" + table + "\n").encode())
    if result.curves:
        written["curves.json"] = write_json_atomic(out / "curves.json", _clean(result.curves))
    if result.sanity:
        written["sanity.json"] = write_json_atomic(out / "sanity.json", _clean(result.sanity))
    if plots:
        if result.sanity:
            written["sanity.png"] = save_png_atomic(out / "sanity.png", plot_sanity(result))
        if result.curves:
            written["curves.png"] = save_png_atomic(out / "curves.png", plot_curves(result))
        if figure_columns(result) and result.figure:
            written["methods.png"] = save_png_atomic(out / "methods.png", methods_figure(result))
        for name, kept in result.examples.items():
            if kept:
                title = next((m.title for m in result.methods if m.name == name), name)
                written[f"examples/{name}.png"] = save_png_atomic(
                    out / "examples" / f"{name}.png", example_panel(kept, title, result.labels)
                )
    return written


# ------------------------------------------------------------------------------------------ figures


def _class_name(index: int, labels: Sequence[str] | None) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else f"class {index}"


def map_on_image(image: Image.Image, geometry: Geometry, heatmap: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """An input-frame (H, W) map in [0, 1] mapped back onto the original image and overlaid (jet)."""
    return draw.overlay(image, geometry.to_original(heatmap.float()).clamp(0, 1).numpy(), alpha)


def figure_columns(result: EvaluationResult) -> list[tuple[str, str]]:
    """``(name, title)`` of the methods drawn in ``methods.png``: every evaluated method, baselines left out."""
    return [(m.name, m.title) for m in result.methods if not m.is_baseline and not m.error]


def _row_title(row: FigureRow, labels: Sequence[str] | None) -> str:
    return f"{row.name.rsplit('/', 1)[-1]}: {_class_name(row.cls, labels)}" + (" (of 2+)" if row.several else "")


def methods_figure(result: EvaluationResult, tile_height: int = METHODS_TILE_HEIGHT) -> Image.Image:
    """Every method's map of the same images: one row per (image, class) of ``result.figure`` holding the
    original and then, per method of :func:`figure_columns`, its map of that class overlaid
    (:func:`map_on_image`), each row a :func:`gradcam.imaging.draw.panel` titled by method (a map that is
    identically zero says so: :data:`~gradcam.imaging.grids.ZERO_MAP_NOTE`); rows are stacked top to
    bottom on white, left-aligned."""
    columns = figure_columns(result)
    rows = []
    for row in result.figure:
        tiles = [row.image] + [map_on_image(row.image, row.geometry, row.maps[name]) for name, _ in columns]
        titles = [_row_title(row, result.labels)] + [
            title + (ZERO_MAP_NOTE if not bool(row.maps[name].ne(0).any()) else "") for name, title in columns
        ]
        rows.append(draw.panel(tiles, titles, tile_height=tile_height))
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    top = 0
    for picture in rows:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas


def example_panel(kept: dict[str, Example], title: str, labels: Sequence[str] | None = None) -> Image.Image:
    """Best and worst case of one method: the map over the image, ground truth green, prediction red."""
    tiles, titles = [], []
    for kind in ("best", "worst"):
        example = kept.get(kind)
        if example is None:
            continue
        picture = map_on_image(example.image, example.geometry, example.heatmap)
        for box in example.truths:
            picture = draw.draw_box(picture, box, (0, 255, 0), 2)
        if all(math.isfinite(v) for v in example.box):
            picture = draw.draw_box(picture, example.box, (255, 0, 0), 2)
        tiles.append(picture)
        titles.append(f"{title} {kind}: {_class_name(example.cls, labels)} IoU {example.iou:.2f}")
    height = min(max(t.height for t in tiles), 384)
    return draw.panel(tiles, titles, tile_height=max(height, 224))


def curve_panels(result: EvaluationResult) -> list[CurvePanel]:
    """The deletion and insertion panels of ``result.curves``: a curve per method, baselines dashed."""
    titles = {m.name: m.title for m in result.methods}
    panels = []
    for mode in ("deletion", "insertion"):
        series = [
            CurveSeries(title, list(curves["fractions"]), list(curves[mode]), title.startswith("Baseline"))
            for title, curves in ((titles.get(name, name), c) for name, c in result.curves.items())
        ]
        xlabel = "fraction of pixels " + ("removed" if mode == "deletion" else "inserted")
        panels.append(CurvePanel(mode.capitalize(), xlabel, series))
    return panels


def plot_curves(result: EvaluationResult) -> Image.Image:
    """Mean deletion and insertion curves per method (matplotlib if installed, else PIL:
    :mod:`gradcam.imaging.curves`)."""
    panels = curve_panels(result)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("gradcam: matplotlib is not installed; drawing the curves with PIL")
        return curves_image(panels, 1.0 if result.settings.score == "probability" else None, 1000)
    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        draw_panel(figure.add_subplot(1, 2, index + 1), panel, f"{result.settings.score} of the explained class",
                   legend=index == 1)  # fmt: skip
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
