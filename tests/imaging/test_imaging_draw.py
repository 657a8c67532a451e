"""Tests for gradcam.imaging.draw: colormaps, overlays, gradient images, panels, boxes, contours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.imaging.draw import (
    apply_colormap,
    available_colormaps,
    caption_height,
    colormap,
    draw_box,
    draw_contour,
    gradient_image,
    mask_outline,
    overlay,
    panel,
)


def test_jet_at_known_points() -> None:
    lut = colormap("jet").astype(int)
    assert lut.shape == (256, 3)
    assert lut[0].tolist() == [0, 0, 128]  # blue = 0.5 * 255 = 127.5, rounded half up
    assert lut[255].tolist() == [128, 0, 0]  # red = 0.5 at x = 1
    # x = 128/255: red = (x - 0.35) / 0.31 -> 125.0, green = 1, blue = 1 - (x - 0.34) / 0.31 -> 121.8
    assert np.abs(lut[128] - (124, 255, 121)).max() <= 1
    # x = 96/255: red = (96 - 0.35 * 255) / 0.31 = 21.77, green = 1, blue = 255 - (96 - 0.34 * 255) / 0.31 = 225
    assert lut[96].tolist() == [22, 255, 225]


def test_gray_and_unknown_colormaps() -> None:
    assert colormap("gray")[200].tolist() == [200, 200, 200]
    assert set(available_colormaps()) >= {"jet", "turbo", "viridis", "inferno", "gray"}
    with pytest.raises(ValueError, match="available: .*jet"):
        colormap("rainbow-unicorn")


@pytest.mark.parametrize("name", ["jet", "turbo", "viridis", "inferno", "gray"])
def test_colormaps_match_matplotlib(name: str) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    reference = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0
    ours = colormap(name).astype(float)
    assert np.abs(ours - np.rint(reference)).max() <= 1.0  # within one 8-bit step of the rounded table


def test_known_turbo_and_viridis_ends() -> None:
    assert colormap("viridis")[0].tolist() == [68, 1, 84]
    assert colormap("viridis")[255].tolist() == [253, 231, 37]
    assert colormap("turbo")[0].tolist() == [48, 18, 59]


def test_apply_colormap_quantises_clips_and_zeroes_nan() -> None:
    heatmap = torch.tensor([[0.0, 1.0, float("nan")], [-3.0, 7.0, 0.5 / 255]])
    pixels = np.asarray(apply_colormap(heatmap, "gray"))[..., 0]
    assert pixels.tolist() == [[0, 255, 0], [0, 255, 1]]  # 0.5/255 * 255 = 0.5 -> rounds up to 1
    jet = np.asarray(apply_colormap(np.array([[0.5]]), "jet"))
    assert jet[0, 0].tolist() == colormap("jet")[128].tolist()


def test_overlay_pixel_arithmetic() -> None:
    image = Image.new("RGB", (3, 2), (100, 50, 200))
    heatmap = np.zeros((2, 3))
    heatmap[1, 2] = 1.0
    out = np.asarray(overlay(image, heatmap, alpha=0.25, colormap="jet")).astype(int)
    # Pixel (x=2, y=1) is jet(1) = (128, 0, 0): 0.75 * (100, 50, 200) + 0.25 * (128, 0, 0) = (107, 37.5, 150).
    assert out[1, 2].tolist() == [107, 38, 150]
    # Pixel (0, 0) is jet(0) = (0, 0, 128): (75, 37.5, 182).
    assert out[0, 0].tolist() == [75, 38, 182]
    assert np.asarray(overlay(image, heatmap, alpha=0.0))[0, 0].tolist() == [100, 50, 200]


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.37, 0.5, 1.0])
@pytest.mark.parametrize("name", ["jet", "turbo", "gray"])
def test_overlay_table_equals_the_float64_formula(alpha: float, name: str) -> None:
    """The look-up-table blend is exactly ``floor((1 - a) * image + a * colour + 0.5)`` computed in float64,
    on every (base value, heatmap index) pair and on NaN / out-of-range heatmap values."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(256)[:, None]  # every base value meets every heatmap index in channel 0
    heatmap = np.tile(np.arange(256) / 255.0, (256, 1))
    heatmap[0, :5] = [np.nan, 2.0, -1.0, np.inf, -np.inf]
    out = np.asarray(overlay(Image.fromarray(pixels), heatmap, alpha=alpha, colormap=name)).astype(np.int64)
    indices = np.floor(np.clip(np.nan_to_num(heatmap, nan=0.0, posinf=1.0, neginf=0.0), 0, 1) * 255 + 0.5)
    colour = colormap(name)[indices.astype(int)].astype(np.float64)
    expected = np.clip(np.floor((1 - alpha) * pixels.astype(np.float64) + alpha * colour + 0.5), 0, 255)
    assert np.array_equal(out, expected.astype(np.int64))


def test_overlay_validates_size_and_alpha() -> None:
    image = Image.new("RGB", (4, 3))
    with pytest.raises(ValueError, match="5x3.*4x3"):
        overlay(image, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((3, 4)), alpha=1.5)


def test_gradient_image_of_zeros_is_uniform_gray() -> None:
    pixels = np.asarray(gradient_image(torch.zeros(3, 4, 5)))
    assert pixels.shape == (4, 5, 3)
    assert np.unique(pixels).tolist() == [128]


def test_gradient_image_normalisation() -> None:
    grad = np.zeros((1, 1, 4))
    grad[0, 0] = [-1.0, 1.0, -1.0, 1.0]  # mean 0, population std 1 -> 0.5 -/+ 0.1
    pixels = np.asarray(gradient_image(grad))[0, :, 0]
    assert pixels.tolist() == [102, 153, 102, 153]  # round(0.4 * 255) = 102, round(0.6 * 255) = 153
    huge = np.asarray(gradient_image(torch.tensor([[[0.0] * 99 + [1e6]]])))[0, :, 0]
    # mean 1e4, std 99498.7: zeros -> 0.5 - 0.01005 -> 124.94 -> 125; outlier clipped to 255
    assert huge[-1] == 255 and huge[0] == 125


def test_panel_layout_and_scaling() -> None:
    tiles = [
        Image.new("RGB", (20, 10), "red"),
        Image.new("RGB", (30, 30), "blue"),
        Image.new("L", (5, 10), 0),
    ]
    pad = 4
    plain = panel(tiles, tile_height=20, pad=pad)
    # Scaled widths at height 20: 40, 20, 10 -> width = 70 + pad * 4; height = 20 + 2 * pad.
    assert plain.size == (40 + 20 + 10 + 4 * pad, 20 + 2 * pad)
    assert plain.getpixel((0, 0)) == (255, 255, 255)
    assert plain.getpixel((pad + 5, pad + 5)) == (255, 0, 0)
    assert plain.getpixel((pad + 40 + pad + 5, pad + 5)) == (0, 0, 255)
    assert plain.getpixel((pad + 40, pad + 5)) == (255, 255, 255)  # gap between tiles

    titled = panel(tiles, titles=["image", "cam", "a very long title indeed"], pad=pad)
    caption = caption_height(pad)
    assert titled.size == (60 + 30 + 15 + 4 * pad, 30 + caption + 2 * pad)  # default height = tallest (30)
    strip = np.asarray(titled)[pad : pad + caption, pad : pad + 60]
    assert (strip < 128).any()  # some dark text pixels were drawn in the first caption
    with pytest.raises(ValueError, match="2 titles for 3 tiles"):
        panel(tiles, titles=["a", "b"])


def test_draw_box_outline_pixels_and_copy() -> None:
    image = Image.new("RGB", (20, 20), (0, 0, 0))
    boxed = draw_box(image, (2, 3, 12, 15), color=(0, 255, 0), width=2)
    pixels = np.asarray(boxed)
    assert image.getpixel((2, 3)) == (0, 0, 0)  # original untouched
    assert pixels[3, 2].tolist() == [0, 255, 0] and pixels[14, 11].tolist() == [0, 255, 0]
    assert pixels[4, 3].tolist() == [0, 255, 0]  # second ring of a width-2 outline
    assert pixels[8, 7].tolist() == [0, 0, 0]  # interior
    assert pixels[15, 12].tolist() == [0, 0, 0]  # right/bottom are exclusive
    labelled = np.asarray(draw_box(image, (2, 15, 12, 19), label="cat"))
    assert (labelled[:15, 2:] == (0, 255, 0)).all(axis=-1).sum() > 20  # label strip above the box


def test_mask_outline_and_contour() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:5, 2:6] = True
    outline = mask_outline(mask)
    assert outline.sum() == 12  # 4x4 square: 16 pixels - 4 interior
    assert not outline[2:4, 3:5].any() and outline[1, 2] and outline[4, 5]
    image = Image.new("RGB", (7, 6), (10, 10, 10))
    drawn = np.asarray(draw_contour(image, torch.from_numpy(mask), color=(255, 0, 0)))
    assert (drawn[outline] == (255, 0, 0)).all()
    assert (drawn[~outline] == (10, 10, 10)).all()
    with pytest.raises(ValueError, match="7x6"):
        draw_contour(Image.new("RGB", (5, 5)), mask, color=(1, 2, 3))


def test_overlay_maps_a_network_frame_map_back_through_its_geometry() -> None:
    from gradcam.imaging import PreprocessConfig, preprocess

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))
    config = PreprocessConfig(input_size=32, resize_size=40)
    _, geometry = preprocess(image, config)
    small = torch.rand(7, 7, generator=torch.Generator().manual_seed(0))  # a layer-resolution map
    by_hand = overlay(image, geometry.to_original(small), 0.6)
    assert np.array_equal(np.asarray(overlay(image, small, 0.6, geometry=geometry)), np.asarray(by_hand))
    with pytest.raises(ValueError, match=r"for a map in the network's frame pass geometry="):
        overlay(image, small, 0.6)
    with pytest.raises(ValueError, match=r"geometry is of a 64x48 image but the image is 20x10"):
        overlay(image.resize((20, 10)), small, geometry=geometry)
