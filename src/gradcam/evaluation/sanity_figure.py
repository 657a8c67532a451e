"""The figure of the sanity checks: each method's mean similarity to its trained-model map, layer by layer.

One panel per (similarity, mode): SSIM and absolute-value rank correlation on the rows, cascading and independent
randomisation on the columns; x: the randomised layer, top (logits) first, as in Adebayo et al. 2018, Fig. 2;
the dotted line is the verdict's threshold, which the mean of a curve's SSIM must not exceed. Matplotlib when
installed, otherwise PIL.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..imaging.curves import CURVE_COLOURS
from .results import EvaluationResult
from .sanity import THRESHOLD

logger = logging.getLogger("gradcam")

ROWS = (("ssim", "SSIM"), ("spearman_abs", "rank corr. (abs)"))


#: ``{method: {mode: {layer: {similarity: value}}}}``, as ``EvaluationResult.sanity`` and ``sanity.json`` hold them
SanityCurves = Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]


def plot_sanity(result: EvaluationResult) -> Image.Image:
    """The MPRT curves of every method of ``result.sanity`` (see the module docstring)."""
    return sanity_figure(result.sanity, {m.name: m.title for m in result.methods})


def sanity_figure(curves: SanityCurves, titles: Mapping[str, str] | None = None, backend: str = "auto") -> Image.Image:
    """The MPRT curves of the methods in ``curves`` (a run's ``sanity.json``, or a selection of its methods),
    labelled with ``titles`` (default: the names). ``backend``: ``"matplotlib"``, ``"pil"`` or ``"auto"``
    (matplotlib when installed)."""
    if backend not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"backend must be 'auto', 'matplotlib' or 'pil', got {backend!r}")
    series = [((titles or {}).get(name, name), method) for name, method in curves.items()]
    modes = list(dict.fromkeys(mode for method in curves.values() for mode in method))
    if backend != "pil":
        try:
            return _plot_matplotlib(modes, series)
        except ImportError:
            if backend == "matplotlib":
                raise
            logger.info("gradcam: matplotlib is not installed; drawing the sanity curves with PIL")
    return _plot_pil(modes, series)


def _colour(index: int) -> tuple[int, int, int]:
    return CURVE_COLOURS[index % len(CURVE_COLOURS)]


def _plot_matplotlib(modes: list[str], series: list[tuple[str, Any]]) -> Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(modes), 7.5), dpi=100)
    FigureCanvasAgg(figure)
    for row, (key, label) in enumerate(ROWS):
        for column, mode in enumerate(modes):
            axes = figure.add_subplot(len(ROWS), len(modes), row * len(modes) + column + 1)
            layers: list[str] = []
            for j, (title, curves) in enumerate(series):
                curve = curves.get(mode, {})
                layers = layers or list(curve)
                style = "--" if title.startswith("Baseline") else "-"
                colour = tuple(c / 255 for c in _colour(j))
                axes.plot(range(len(curve)), [v[key] for v in curve.values()], style, color=colour, label=title)
            axes.axhline(THRESHOLD, color="black", linestyle=":", linewidth=1)
            axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
            axes.set_ylim(-1.05 if key != "ssim" else -0.05, 1.05)
            axes.set_ylabel(label)
            axes.set_title(f"{mode} randomisation")
            axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=6, loc="lower left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _plot_pil(modes: list[str], series: list[tuple[str, Any]], panel: int = 420, height: int = 300) -> Image.Image:
    canvas = Image.new("RGB", (panel * len(modes), height * len(ROWS)), "white")
    pen, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for row, (key, label) in enumerate(ROWS):
        for column, mode in enumerate(modes):
            left, top = column * panel + 40, row * height + 25
            right, bottom = left + panel - 60, top + height - 60
            low = -0.05 if key == "ssim" else -1.05
            y = lambda v, low=low, top=top, bottom=bottom: bottom - (v - low) / (1.05 - low) * (bottom - top)  # noqa: E731
            pen.rectangle((left, top, right, bottom), outline=(0, 0, 0))
            pen.text((left, top - 15), f"{label}, {mode} randomisation", fill=(0, 0, 0), font=font)
            pen.line([(left, y(THRESHOLD)), (right, y(THRESHOLD))], fill=(128, 128, 128))
            for j, (title, curves) in enumerate(series):
                values = [v[key] for v in curves.get(mode, {}).values()]
                step = (right - left) / max(len(values) - 1, 1)
                points = [(left + i * step, y(v)) for i, v in enumerate(values) if not math.isnan(v)]
                if len(points) > 1:
                    pen.line(points, fill=_colour(j), width=2)
                if row == 0 and column == 0:
                    pen.text((left + 6, top + 4 + 11 * j), title, fill=_colour(j), font=font)
    return canvas
