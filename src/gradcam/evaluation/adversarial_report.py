"""Tables and the figure of :func:`.robustness.adversarial_robustness`.

The figure follows the Grad-CAM paper's adversarial figure: one row per image, showing the original
image, the adversarial image, the map of the original (true) class on the adversarial image and the map
of the adversarial class, each map overlaid on the adversarial image.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from PIL import Image

from ..imaging.draw import overlay
from ..imaging.grids import grid
from ..imaging.io import save_png_atomic, write_bytes_atomic, write_json_atomic
from .adversarial_experiment import AdversarialResult
from .report import csv_text
from .sources import title

__all__ = ["COLUMNS", "adversarial_figure", "format_adversarial_table", "write_adversarial_report"]

# column key -> (header of the Markdown table, number format)
COLUMNS = {
    "method": ("method", ""),
    "epsilon_255": ("eps (/255)", "g"),
    "success": ("success %", ".1f"),
    "true_pointing": ("true: pointing %", ".1f"),
    "true_iou": ("true: IoU", ".3f"),
    "true_energy": ("true: energy %", ".1f"),
    "true_empty": ("true: empty maps", "d"),
    "rank_corr": ("true: rank corr.", ".3f"),
    "adv_pointing": ("adv: pointing %", ".1f"),
    "adv_energy": ("adv: energy %", ".1f"),
}


def _cell(value: Any, spec: str) -> str:
    if isinstance(value, str):
        return title(value)
    return "–" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def format_adversarial_table(result: AdversarialResult) -> str:
    """The summary rows as a Markdown table (``–``: no image to measure, e.g. no successful attack)."""
    lines = ["| " + " | ".join(header for header, _ in COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for row in result.rows:
        lines.append("| " + " | ".join(_cell(row[key], spec) for key, (_, spec) in COLUMNS.items()) + " |")
    return "\n".join(lines)


def adversarial_figure(
    result: AdversarialResult, method: str | None = None, epsilon: float | None = None, tile_height: int = 128
) -> Image.Image:
    """Rows of original | adversarial | map of the original class | map of the adversarial class, for
    ``method`` (default: the first) at ``epsilon`` (pixel units; default: the largest)."""
    keys = list(result.examples)
    if not keys or not any(result.examples.values()):
        raise ValueError("the result holds no example images (examples=0)")
    method = keys[0][0] if method is None else method
    epsilon = max(e for m, e in keys if m == method) if epsilon is None else epsilon
    examples = result.examples.get((method, epsilon))
    if not examples:
        raise ValueError(f"no examples for method {method!r} at epsilon {epsilon}; have {keys}")
    rows, titles = [], []
    name = title(method)
    for example in examples:
        clean = Image.fromarray(example.clean.permute(1, 2, 0).numpy(), "RGB")
        adversarial = Image.fromarray(example.adversarial.permute(1, 2, 0).numpy(), "RGB")
        true_label, adversarial_label = result.label(example.true_class), result.label(example.adversarial_class)
        rows.append(
            [clean, adversarial, overlay(adversarial, example.true_map), overlay(adversarial, example.adversarial_map)]
        )
        titles.append([f"original: {true_label}", f"adversarial: {adversarial_label}", f"{name}: {true_label}",
                       f"{name}: {adversarial_label}"])  # fmt: skip
    return grid(rows, titles, tile_height=tile_height)


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN (nothing to measure) as null: JSON has no NaN."""
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows]


def write_adversarial_report(
    result: AdversarialResult, out: str | os.PathLike[str], plots: bool = True
) -> dict[str, Path]:
    """Write ``table.md``, ``summary.csv``, ``summary.json`` (settings + rows), ``per_image.csv`` and, with
    ``plots``, ``adversarial.png`` (:func:`adversarial_figure` at the largest epsilon) into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "table.md": write_bytes_atomic(folder / "table.md", (format_adversarial_table(result) + "\n").encode()),
        "summary.csv": write_bytes_atomic(folder / "summary.csv", csv_text(result.rows).encode("utf-8")),
        "per_image.csv": write_bytes_atomic(folder / "per_image.csv", csv_text(result.per_image).encode("utf-8")),
        "summary.json": write_json_atomic(
            folder / "summary.json",
            {"model": result.model, "settings": result.settings, "rows": _json_safe(result.rows)},
        ),
    }
    if plots and any(result.examples.values()):
        written["adversarial.png"] = save_png_atomic(folder / "adversarial.png", adversarial_figure(result))
    return written
