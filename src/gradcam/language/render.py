"""Pictures of caption and answer explanations, built from gradcam.imaging.draw (PIL only here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..imaging.draw import gradient_image, overlay, panel
from ..imaging.geometry import Geometry
from .explain import AnswerExplanation, CaptionExplanation


def _on_original(heatmap: torch.Tensor, geometry: Geometry | None, image: Image.Image) -> torch.Tensor:
    """An input-frame (H, W) map on the original image's pixels (via the preprocessing geometry)."""
    if geometry is not None:
        return geometry.to_original(heatmap.detach().float().cpu())
    if tuple(heatmap.shape) != (image.height, image.width):
        resized = torch.nn.functional.interpolate(
            heatmap.detach().float().cpu()[None, None], size=(image.height, image.width), mode="bilinear"
        )
        return resized[0, 0]
    return heatmap.detach().float().cpu()


def stack_rows(rows: Sequence[Image.Image], pad: int = 4) -> Image.Image:
    """Rows (panels) one above the other on white, left-aligned."""
    width = max(row.width for row in rows)
    canvas = Image.new("RGB", (width, sum(row.height for row in rows) + pad * (len(rows) - 1)), "white")
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height + pad
    return canvas


def caption_figure(
    image: Image.Image,
    explanation: CaptionExplanation,
    geometry: Geometry | None = None,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile: int = 160,
) -> Image.Image:
    """Top row: the image, then one Grad-CAM overlay per word; bottom row: Guided Grad-CAM per word.

    Titles give the word and ``log P(w_t | image, w_<t)``.
    """
    titles = [f"{w} ({float(lp):.2f})" for w, lp in zip(explanation.words, explanation.log_probs)]
    overlays = [overlay(image, _on_original(m, geometry, image), alpha, colormap) for m in explanation.gradcam]
    rows = [panel([image, *overlays], ["input", *titles], tile_height=tile)]
    if explanation.guided_gradcam is not None:
        guided = [gradient_image(g) for g in explanation.guided_gradcam]
        blank = Image.new("RGB", image.size, "white")
        rows.append(panel([blank, *guided], ["Guided Grad-CAM", *explanation.words], tile_height=tile))
    return stack_rows(rows)


def answer_figure(
    image: Image.Image,
    explanations: Sequence[AnswerExplanation],
    geometry: Geometry | None = None,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile: int = 224,
) -> Image.Image:
    """The image, then for each explanation its Grad-CAM overlay and Guided Grad-CAM (one row)."""
    tiles, titles = [image], ["input"]
    for e in explanations:
        label = f"{'not ' if e.counterfactual else ''}{e.answer} ({e.probability:.2f})"
        tiles.append(overlay(image, _on_original(e.gradcam, geometry, image), alpha, colormap))
        titles.append(("counterfactual: " if e.counterfactual else "Grad-CAM: ") + label)
        if e.guided_gradcam is not None:
            tiles.append(gradient_image(e.guided_gradcam))
            titles.append("Guided Grad-CAM: " + label)
    return panel(tiles, titles, tile_height=tile)
