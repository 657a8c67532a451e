"""Drawing the maps of videos / volumes (a strip of frame overlays) and of signals (a plot with its map beneath)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.imaging import colormap, frame_strip, overlay, signal_plot


def test_frame_strip_is_each_frames_overlay_side_by_side() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    heat = torch.rand(5, 6, 7, generator=torch.Generator().manual_seed(0))
    strip = frame_strip(frames, heat, alpha=0.4, step=2, gap=3)
    assert strip.size == (3 * 7 + 2 * 3, 6)  # frames 0, 2, 4
    pixels = np.asarray(strip)
    for i, t in enumerate((0, 2, 4)):
        expected = np.asarray(overlay(Image.fromarray(frames[t]), heat[t], 0.4))
        assert np.array_equal(pixels[:, i * 10 : i * 10 + 7], expected)
    assert (pixels[:, 7:10] == 255).all()  # the gaps keep the background


def test_frame_strip_of_a_gray_float_volume() -> None:
    volume = torch.linspace(0, 1, 2 * 3 * 4).reshape(2, 3, 4)
    heat = torch.zeros(2, 3, 4)
    strip = np.asarray(frame_strip(volume, heat, alpha=0.0))
    gray = np.floor(volume.numpy().astype(np.float64) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(strip[:, :4, 0], gray[0]) and np.array_equal(strip[:, 6:, 1], gray[1])


def test_frame_strip_refuses_a_map_of_another_size() -> None:
    expected = r"heatmap shape \(2, 3, 3\) does not match the frames. \(T, H, W\) \(2, 3, 4\)"
    with pytest.raises(ValueError, match=expected):
        frame_strip(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 3)))


def test_signal_plot_draws_the_line_at_the_scaled_rows_and_the_map_beneath() -> None:
    signal = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0])  # min 0 -> bottom row, max 2 -> top row
    heat = torch.tensor([0.0, 0.25, 1.0, 0.25, 0.0])
    image = signal_plot(signal, heat, width=9, height=11, band=4)
    pixels = np.asarray(image)
    assert image.size == (9, 15)
    blue = (31, 119, 180)
    # samples at x = 0, 2, 4, 6, 8; rows (2 - v) / 2 * 10 = 10, 5, 0, 5, 10
    for x, y in [(0, 10), (2, 5), (4, 0), (6, 5), (8, 10)]:
        assert tuple(pixels[y, x]) == blue, (x, y)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    lut = colormap("jet")
    nearest = [0, 1, 1, 2, 2, 3, 3, 4, 4]  # floor(x * 4 / 8 + 1/2)
    for x, i in enumerate(nearest):
        index = int(np.floor(float(heat[i]) * 255 + 0.5))
        assert (pixels[11:, x] == lut[index]).all(), x


def test_signal_plot_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match=r"signal must be \(L,\) or \(C, L\) with L >= 2 and heatmap \(L,\)"):
        signal_plot(np.zeros((2, 8)), np.zeros(7))
