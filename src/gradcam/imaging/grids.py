"""Grids of explanations for notebooks and reports: rows = images, columns = classes or methods.

``Explanation.show()`` and ``Explanation._repr_png_`` (inline display in Jupyter) use
:func:`explanation_grid`; :func:`compare_methods` lays several methods' maps of the same images side by side.
Each tile is the map's overlay on the original image when the image is given (mapped back through its
:class:`Geometry`), else the coloured map itself; each title says the class (label) and the explained score,
and ends with :data:`ZERO_MAP_NOTE` when the map is identically zero (it draws as a blank tile).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from PIL import Image

from .draw import apply_colormap, gradient_image, overlay, panel
from .geometry import Geometry

if TYPE_CHECKING:
    from ..explanation import Explanation

__all__ = ["ZERO_MAP_NOTE", "compare_methods", "explanation_grid", "grid"]

#: Appended to the title of a tile whose map is identically zero (e.g. a counterfactual map where no
#: channel lowers the score), so the blank tile is not taken for a drawing error.
ZERO_MAP_NOTE = " (map is zero)"


def grid(
    rows: Sequence[Sequence[Image.Image]],
    titles: Sequence[Sequence[str]] | None = None,
    tile_height: int = 160,
    pad: int = 4,
) -> Image.Image:
    """Rows of tiles, each row a :func:`~gradcam.imaging.draw.panel` (tiles scaled to ``tile_height``,
    titles above), stacked top to bottom on white and aligned left."""
    if not rows or any(not row for row in rows):
        raise ValueError("grid needs at least one row and one tile per row")
    if titles is not None and [len(t) for t in titles] != [len(r) for r in rows]:
        raise ValueError("titles must have one entry per tile of each row")
    panels = [panel(row, None if titles is None else titles[i], tile_height, pad) for i, row in enumerate(rows)]
    canvas = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for strip in panels:
        canvas.paste(strip, (0, y))
        y += strip.height
    return canvas


def _per_image(value, batch: int, what: str) -> list:
    """``value`` as a list of ``batch`` entries: None, one entry for a single image, or a sequence of B."""
    if value is None:
        return [None] * batch
    if isinstance(value, (Image.Image, Geometry)):
        value = [value]
    value = list(value)
    if len(value) != batch:
        raise ValueError(f"{what}: got {len(value)} for a batch of {batch} images")
    return value


def _tile(
    explanation: Explanation,
    b: int,
    j: int | None,
    image: Image.Image | None,
    geometry: Geometry | None,
    alpha: float,
    colormap: str,
) -> Image.Image:
    """Map j of image b (j None: single-target explanations) as an overlay or a coloured map."""
    heatmap = explanation.heatmap[b] if j is None else explanation.heatmap[b, j]
    heatmap = heatmap.detach().float().cpu()
    # input-space maps (no layer, or Guided Grad-CAM's map with a C axis more than its raw map) are
    # (C, H, W) gradients, shown in the network's frame
    if explanation.layer is None or explanation.heatmap.dim() == explanation.raw.dim() + 1:
        return gradient_image(heatmap)
    if heatmap.dim() != 2:
        raise ValueError(
            f"show() draws image maps; this map has shape {tuple(heatmap.shape)}: draw videos and volumes with "
            "gradcam.imaging.frame_strip and signals with gradcam.imaging.signal_plot"
        )
    if image is None:
        return apply_colormap(heatmap, colormap)
    return overlay(image, heatmap, alpha, colormap, geometry=geometry)


def _title(explanation: Explanation, b: int, j: int | None, labels: Sequence[str] | None, prefix: str = "") -> str:
    index = (b,) if j is None else (b, j)
    score = float(explanation.scores[index])
    if explanation.classes is None:
        name = "target"
    else:
        c = int(explanation.classes[index])
        name = labels[c] if labels is not None and 0 <= c < len(labels) else f"class {c}"
    against = "against " if explanation.counterfactual else ""
    heatmap = explanation.heatmap[index]
    zero = ZERO_MAP_NOTE if not bool(heatmap.detach().ne(0).any()) else ""
    return f"{prefix}{against}{name} ({score:.3g}){zero}"


def explanation_grid(
    explanation: Explanation,
    images: Image.Image | Sequence[Image.Image] | None = None,
    geometries: Geometry | Sequence[Geometry] | None = None,
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile_height: int = 160,
) -> Image.Image:
    """One row per image, one column per explained target (k maps per image: k columns).

    ``images``: the original images (one, or B) to overlay the maps on; ``geometries``: the :class:`Geometry`
    of each (from ``preprocess`` / ``Geometry.from_transforms``), so network-frame maps land on the original
    pixels. Titles: the class label (``labels``) or index, and the explained score ``y``.
    """
    batch = explanation.scores.shape[0]
    images, geometries = _per_image(images, batch, "images"), _per_image(geometries, batch, "geometries")
    columns = [None] if not explanation.multi_target else list(range(explanation.scores.shape[1]))
    rows, titles = [], []
    for b in range(batch):
        rows.append([_tile(explanation, b, j, images[b], geometries[b], alpha, colormap) for j in columns])
        titles.append([_title(explanation, b, j, labels) for j in columns])
    return grid(rows, titles, tile_height)


def compare_methods(
    explanations: Mapping[str, Explanation],
    images: Image.Image | Sequence[Image.Image] | None = None,
    geometries: Geometry | Sequence[Geometry] | None = None,
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile_height: int = 160,
) -> Image.Image:
    """Several methods' maps of the same images side by side: a row per image and, per method, a column per
    explained target (``{"gradcam": e1, "scorecam": e2}``: titles start with the method's name)."""
    if not explanations:
        raise ValueError("compare_methods needs at least one explanation")
    batches = {name: e.scores.shape[0] for name, e in explanations.items()}
    if len(set(batches.values())) != 1:
        raise ValueError(f"the explanations cover different batches: {batches}")
    batch = next(iter(batches.values()))
    images, geometries = _per_image(images, batch, "images"), _per_image(geometries, batch, "geometries")
    rows, titles = [], []
    for b in range(batch):
        row, row_titles = [], []
        for name, e in explanations.items():
            for j in [None] if not e.multi_target else range(e.scores.shape[1]):
                row.append(_tile(e, b, j, images[b], geometries[b], alpha, colormap))
                row_titles.append(_title(e, b, j, labels, prefix=f"{name}: "))
        rows.append(row)
        titles.append(row_titles)
    return grid(rows, titles, tile_height)


def png_bytes(picture: Image.Image) -> bytes:
    """``picture`` encoded as PNG (what Jupyter's ``_repr_png_`` returns)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
