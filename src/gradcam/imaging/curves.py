"""Deletion / insertion curves (RISE, Petsiuk et al., BMVC 2018) drawn for notebooks and reports.

:func:`plot_curves` takes what :func:`gradcam.evaluation.perturbation_curves` returns (``(curves (B, n),
fractions (n,))``), a mean curve of :meth:`gradcam.evaluation.DeletionInsertion.mean_curve`, a (B, n) tensor or
a ``{name: curve}`` mapping, and draws it with matplotlib when matplotlib is installed (the ``plot`` extra;
it returns the ``Axes``) or with PIL otherwise (it returns an image). Both renderers draw a list of
:class:`CurvePanel`; ``gradcam evaluate``'s ``curves.png`` uses them too.

PIL layout (used by the tests): panel ``i`` of ``k`` occupies the horizontal strip
``[i * width / k, (i + 1) * width / k)``; its plot frame (black, 1 px) spans ``x`` from ``strip + 50`` to
``strip + width / k - 20`` and ``y`` from 30 to ``height - 50``; a value ``v`` at fraction ``f`` is drawn at
``(left + f * (right - left), bottom - v / top_value * (bottom - top))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["CURVE_COLOURS", "CurvePanel", "CurveSeries", "curves_image", "draw_panel", "plot_curves"]

#: Line colours, in order (matplotlib's ``tab10``).
CURVE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


@dataclass(frozen=True)
class CurveSeries:
    """One curve: ``values[i]`` is the score after ``fractions[i]`` of the pixels were changed."""

    label: str
    fractions: list[float]
    values: list[float]
    dashed: bool = False


@dataclass(frozen=True)
class CurvePanel:
    """One plot: a title, the x-axis label and its curves."""

    title: str
    xlabel: str
    series: list[CurveSeries] = field(default_factory=list)


def _as_list(values: Any, what: str) -> list[float]:
    if values is None:
        raise ValueError(f"{what} is None (DeletionInsertion.mean_curve gives None before any update)")
    tensor = torch.as_tensor(values).detach().double().cpu()
    if tensor.dim() != 1:
        raise ValueError(f"{what} must be one curve (n,), got shape {tuple(tensor.shape)}")
    return tensor.tolist()


def curve_series(curves: Any, fractions: Any = None, labels: Sequence[str] | None = None) -> list[CurveSeries]:
    """The curves of ``curves`` as :class:`CurveSeries`.

    ``curves``: a ``(curves, fractions)`` pair (``perturbation_curves``' output), a ``(n,)`` or ``(B, n)``
    tensor / array / list, or a mapping ``name -> (n,) curve``. ``fractions`` (n,) defaults to the pair's,
    else to ``n`` evenly spaced values from 0 to 1. ``labels`` names the rows (default: their index).
    """
    if isinstance(curves, tuple) and len(curves) == 2 and fractions is None:
        curves, fractions = curves
    if isinstance(curves, Mapping):
        named = [(str(name), _as_list(curve, f"curves[{name!r}]")) for name, curve in curves.items()]
    else:
        if curves is None:
            raise ValueError("curves is None (DeletionInsertion.mean_curve gives None before any update)")
        tensor = torch.as_tensor(curves).detach().double().cpu()
        if tensor.dim() not in (1, 2):
            raise ValueError(f"curves must be (n,) or (B, n), got shape {tuple(tensor.shape)}")
        rows = tensor.reshape(-1, tensor.shape[-1]).tolist()
        names = list(labels) if labels is not None else [str(i) for i in range(len(rows))]
        if len(names) != len(rows):
            raise ValueError(f"labels: got {len(names)} for {len(rows)} curves")
        named = list(zip(names, rows))
    if not named or not named[0][1]:
        raise ValueError("curves is empty")
    series = []
    for name, values in named:
        xs = (
            _as_list(fractions, "fractions")
            if fractions is not None
            else [i / max(len(values) - 1, 1) for i in range(len(values))]
        )
        if len(xs) != len(values):
            raise ValueError(f"fractions has {len(xs)} entries but curve {name!r} has {len(values)}")
        series.append(CurveSeries(name, xs, values))
    return series


def draw_panel(ax: Any, panel: CurvePanel, ylabel: str, legend: bool = True) -> None:
    """Draw ``panel`` into the matplotlib ``ax`` (a line per curve, baselines dashed, x from 0 to 1)."""
    for j, series in enumerate(panel.series):
        colour = tuple(c / 255 for c in CURVE_COLOURS[j % len(CURVE_COLOURS)])
        ax.plot(series.fractions, series.values, "--" if series.dashed else "-", color=colour,
                label=series.label, linewidth=1.5)  # fmt: skip
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(ylabel)
    if panel.title:
        ax.set_title(panel.title)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")


def curves_image(
    panels: Sequence[CurvePanel], top_value: float | None = None, width: int | None = None, height: int = 420
) -> Image.Image:
    """``panels`` side by side, drawn with PIL (the layout is in the module's docstring). The y axis runs
    from 0 to ``top_value`` (default: the largest value, 1.0 when every value is at most 1)."""
    width = width or 500 * len(panels)
    canvas = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if top_value is None:
        top_value = max([1e-9] + [v for p in panels for s in p.series for v in s.values])
        top_value = 1.0 if top_value <= 1.0 else top_value
    strip = width // len(panels)
    for index, panel in enumerate(panels):
        left, right, top, bottom = index * strip + 50, (index + 1) * strip - 20, 30, height - 50
        pen.rectangle((left, top, right, bottom), outline=(0, 0, 0))
        pen.text(((left + right) // 2 - 25, 10), panel.title, fill=(0, 0, 0), font=font)
        pen.text((left, bottom + 8), "0", fill=(0, 0, 0), font=font)
        pen.text((right - 6, bottom + 8), "1", fill=(0, 0, 0), font=font)
        pen.text((left, bottom + 24), panel.xlabel, fill=(0, 0, 0), font=font)
        pen.text((left - 40, top), f"{top_value:.2g}", fill=(0, 0, 0), font=font)
        for j, series in enumerate(panel.series):
            colour = CURVE_COLOURS[j % len(CURVE_COLOURS)]
            points = [
                (left + f * (right - left), bottom - v / top_value * (bottom - top))
                for f, v in zip(series.fractions, series.values)
            ]
            pen.line(points, fill=colour, width=2)
            pen.text((left + 8, top + 6 + 12 * j), series.label, fill=colour, font=font)
    return canvas


def plot_curves(
    curves: Any,
    fractions: Any = None,
    *,
    ax: Any = None,
    labels: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "fraction of pixels changed",
    ylabel: str = "score of the explained class",
    backend: str = "auto",
) -> Any:
    """Plot deletion or insertion curves (see :func:`curve_series` for what ``curves`` may be).

    ``backend``: ``"matplotlib"`` draws into ``ax`` (default: a new ``pyplot`` figure) and returns the
    ``Axes``; ``"pil"`` returns a ``PIL.Image``; ``"auto"`` (default) is matplotlib when it is installed.
    """
    if backend not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"backend must be 'auto', 'matplotlib' or 'pil', got {backend!r}")
    panel = CurvePanel(title, xlabel, curve_series(curves, fractions, labels))
    if backend != "pil":
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            if backend == "matplotlib" or ax is not None:
                raise ImportError("plot_curves: matplotlib is not installed (pip install 'gradcam[plot]')") from None
        else:
            if ax is None:
                _, ax = plt.subplots(figsize=(5, 4))
            draw_panel(ax, panel, ylabel, legend=len(panel.series) > 1)
            return ax
    if ax is not None:
        raise ValueError("ax is a matplotlib Axes: it cannot be used with backend='pil'")
    return curves_image([panel])
