"""Drawing concept maps (Deep Feature Factorization): every concept in its own colour over the photo, with a
legend (numpy / PIL only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .draw import ArrayLike, Color, _fit_text, _round_to_uint8, caption_height

__all__ = ["CONCEPT_COLORS", "concept_overlay", "draw_concepts"]

#: Distinct, saturated colours for concepts 0, 1, 2, ... (repeated past the tenth).
CONCEPT_COLORS: tuple[Color, ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (245, 130, 48), (240, 50, 230), (128, 128, 0), (0, 0, 128),
)  # fmt: skip


def _concept_maps(maps: ArrayLike, image: Image.Image) -> np.ndarray:
    values = maps.detach().cpu().double().numpy() if hasattr(maps, "detach") else np.asarray(maps, dtype=np.float64)
    if values.ndim != 3 or values.shape[0] == 0:
        raise ValueError(f"maps must be (n, H, W) concept maps, n >= 1; got shape {values.shape}")
    if values.shape[1:] != (image.height, image.width):
        raise ValueError(
            f"maps are {values.shape[2]}x{values.shape[1]} (WxH) but the image is {image.width}x{image.height}: "
            "map them to the image first (Geometry.to_original)"
        )
    return np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)


def concept_overlay(
    image: Image.Image, maps: ArrayLike, alpha: float = 0.6, colors: Sequence[Color] | None = None
) -> Image.Image:
    """Colour each pixel by its strongest concept: ``c = argmax_i maps[i]``, ``a = alpha * maps[c]``,
    ``out = round((1 - a) * image + a * colors[c])``.

    ``maps`` (n, H, W) in [0, 1] (clipped) match the image size (W, H); ties go to the lower index, and a pixel
    where every map is 0 keeps the photo's colour. ``colors`` default to :data:`CONCEPT_COLORS`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    values = _concept_maps(maps, image)
    palette = np.asarray([(colors or CONCEPT_COLORS)[i % len(colors or CONCEPT_COLORS)] for i in range(len(values))])
    winner = values.argmax(axis=0)
    weight = alpha * np.take_along_axis(values, winner[None], axis=0)[0][..., None]
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    return Image.fromarray(_round_to_uint8((1.0 - weight) * base + weight * palette[winner]), "RGB")


def draw_concepts(
    image: Image.Image,
    maps: ArrayLike,
    labels: Sequence[str] | None = None,
    alpha: float = 0.6,
    colors: Sequence[Color] | None = None,
    pad: int = 4,
) -> Image.Image:
    """:func:`concept_overlay` with a legend below it: one line per concept, its colour swatch and
    ``labels[i]`` (e.g. ``"concept 0: tiger cat 0.62, tabby 0.21"``; default ``"concept i"``).

    The picture keeps the image's size at the top; the legend adds ``n * caption_height(pad)`` rows.
    """
    values = _concept_maps(maps, image)
    labels = [f"concept {i}" for i in range(len(values))] if labels is None else [str(t) for t in labels]
    if len(labels) != len(values):
        raise ValueError(f"got {len(labels)} labels for {len(values)} concept maps")
    picture = concept_overlay(image, values, alpha, colors)
    line = caption_height(pad)
    canvas = Image.new("RGB", (picture.width, picture.height + line * len(values)), "white")
    canvas.paste(picture, (0, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    swatch = line - 2 * pad
    palette = colors or CONCEPT_COLORS
    for i, text in enumerate(labels):
        top = picture.height + i * line
        draw.rectangle(
            (pad, top + pad, pad + swatch - 1, top + pad + swatch - 1), fill=tuple(palette[i % len(palette)])
        )
        left = 2 * pad + swatch
        draw.text((left, top + pad), _fit_text(draw, text, font, picture.width - left - pad), fill=(0, 0, 0), font=font)
    return canvas
