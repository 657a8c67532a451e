"""Drawing maps of videos, volumes and signals: a strip of frame overlays, and a line plot with its map beneath.

A video's or volume's map is ``(T, H, W)`` (``Explanation.heatmap[b]`` of a ``(B, C, T, H, W)`` input); a
signal's is ``(L,)`` (of a ``(B, C, L)`` input). numpy / PIL only, like :mod:`gradcam.imaging.draw`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .draw import ArrayLike, Color, apply_colormap, overlay

__all__ = ["frame_strip", "signal_plot"]


def _numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _frame_image(frame: np.ndarray) -> Image.Image:
    """An (H, W) gray or (H, W, 3) RGB frame with values in [0, 1] (floats) or [0, 255] (uint8) as RGB."""
    if frame.dtype != np.uint8:
        frame = np.clip(np.floor(np.nan_to_num(frame) * 255 + 0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(frame, "L" if frame.ndim == 2 else "RGB").convert("RGB")


def frame_strip(
    frames: ArrayLike,
    heatmap: ArrayLike,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    step: int = 1,
    gap: int = 2,
    background: Color = (255, 255, 255),
) -> Image.Image:
    """Frames ``0, step, 2 step, ...`` of a video or the slices of a volume, each with its map overlaid, side by side.

    ``frames``: (T, H, W) gray or (T, H, W, 3) RGB, uint8 in [0, 255] or floats in [0, 1]; ``heatmap``:
    (T, H, W) in [0, 1] at the frames' resolution. Frame ``t`` of the strip is ``overlay(frame_t,
    heatmap_t, alpha, colormap)`` at x offset ``i * (W + gap)``.
    """
    pixels, maps = np.asarray(frames.detach().cpu() if isinstance(frames, torch.Tensor) else frames), _numpy(heatmap)
    if pixels.ndim not in (3, 4) or (pixels.ndim == 4 and pixels.shape[-1] != 3):
        raise ValueError(f"frames must have shape (T, H, W) or (T, H, W, 3); got {pixels.shape}")
    if maps.shape != pixels.shape[:3]:
        raise ValueError(
            f"heatmap shape {maps.shape} does not match the frames' (T, H, W) {pixels.shape[:3]}; upsample the map "
            "to the input (Explanation.heatmap already is)"
        )
    if step < 1 or gap < 0:
        raise ValueError(f"step must be >= 1 and gap >= 0; got step={step}, gap={gap}")
    chosen = range(0, pixels.shape[0], step)
    height, width = pixels.shape[1:3]
    strip = Image.new("RGB", (len(chosen) * width + (len(chosen) - 1) * gap, height), background)
    for i, t in enumerate(chosen):
        strip.paste(overlay(_frame_image(pixels[t]), maps[t], alpha, colormap), (i * (width + gap), 0))
    return strip


def signal_plot(
    signal: ArrayLike,
    heatmap: ArrayLike,
    *,
    width: int | None = None,
    height: int = 120,
    band: int = 16,
    colormap: str = "jet",
    colors: tuple[Color, ...] = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)),
    background: Color = (255, 255, 255),
) -> Image.Image:
    """A line plot of a signal's channels with its map as a coloured band beneath.

    ``signal``: (L,) or (C, L); ``heatmap``: (L,) in [0, 1]. Sample ``i`` is drawn at x =
    ``floor(i * (width - 1) / (L - 1) + 1/2)``; values are scaled to the plot's height by the signal's own
    min and max (top row = max, row ``height - 1`` = min; a constant signal is drawn mid-height). The
    band's column x shows the map at the sample nearest to x (ties to the later sample).
    """
    values, weights = _numpy(signal), _numpy(heatmap)
    values = values[None] if values.ndim == 1 else values
    if values.ndim != 2 or weights.ndim != 1 or weights.shape[0] != values.shape[1] or values.shape[1] < 2:
        raise ValueError(
            f"signal must be (L,) or (C, L) with L >= 2 and heatmap (L,); got {values.shape} and {weights.shape}"
        )
    length = values.shape[1]
    width = length if width is None else width
    if width < 2 or height < 2 or band < 1:
        raise ValueError(f"width and height must be >= 2 and band >= 1; got {width}, {height}, {band}")
    image = Image.new("RGB", (width, height + band), background)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    span = high - low
    xs = np.floor(np.arange(length) * (width - 1) / (length - 1) + 0.5)
    draw = ImageDraw.Draw(image)
    for c, row in enumerate(values):
        ys = np.full(length, (height - 1) / 2) if span == 0 else (high - row) / span * (height - 1)
        points = list(zip(xs.tolist(), np.floor(ys + 0.5).tolist()))
        draw.line(points, fill=colors[c % len(colors)], width=1)
    nearest = np.floor(np.arange(width) * (length - 1) / (width - 1) + 0.5).astype(int)
    strip = apply_colormap(np.repeat(weights[nearest][None], band, axis=0), colormap)
    image.paste(strip, (0, height))
    return image
