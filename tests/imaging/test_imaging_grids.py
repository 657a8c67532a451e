"""Notebook display: Explanation.show / _repr_png_ and compare_methods lay out the right maps in the right cells."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import gradcam
from conftest import GapNet, GapNetND
from gradcam.imaging import PreprocessConfig, apply_colormap, caption_height, compare_methods, overlay, preprocess

PAD = 4


def cell(picture: Image.Image, row: int, column: int, tile: tuple[int, int]) -> np.ndarray:
    """Pixels of tile (row, column) of a grid whose tiles are all ``tile`` (W, H) and titled."""
    width, height = tile
    row_height = height + caption_height(PAD) + 2 * PAD
    x = PAD + column * (width + PAD)
    y = row * row_height + PAD + caption_height(PAD)
    return np.asarray(picture)[y : y + height, x : x + width]


@pytest.fixture
def photos_and_inputs():
    torch.manual_seed(0)
    model = GapNet().eval()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)) for _ in range(2)]
    config = PreprocessConfig(input_size=16, resize_size=20, mean=(0.5,) * 3, std=(0.5,) * 3)
    pairs = [preprocess(image, config) for image in images]
    x = torch.stack([p[0] for p in pairs])
    return model, images, [p[1] for p in pairs], x


def test_show_puts_each_images_overlay_for_each_class_in_its_cell(photos_and_inputs) -> None:
    model, images, geometries, x = photos_and_inputs
    e = gradcam.GradCAM(model, "body")(x, torch.tensor([[0, 3], [2, 4]]))
    picture = e.show(images, geometries, labels=[f"c{i}" for i in range(5)], alpha=0.5, tile_height=24)
    for b in range(2):
        for j in range(2):
            expected = np.asarray(overlay(images[b], e.heatmap[b, j], 0.5, geometry=geometries[b]))
            assert np.array_equal(cell(picture, b, j, (32, 24)), expected), (b, j)


def test_repr_png_is_the_coloured_maps(photos_and_inputs) -> None:
    model, _, _, x = photos_and_inputs
    e = gradcam.GradCAM(model, "body")(x, 1)
    shown = Image.open(io.BytesIO(e._repr_png_()))
    assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(e.show()))
    for b in range(2):  # each 16 x 16 map scaled to the default 160-pixel tiles
        expected = apply_colormap(e.heatmap[b]).resize((160, 160), Image.Resampling.BILINEAR)
        assert np.array_equal(cell(shown.convert("RGB"), b, 0, (160, 160)), np.asarray(expected))


def test_compare_methods_gives_each_method_its_columns(photos_and_inputs) -> None:
    model, images, geometries, x = photos_and_inputs
    explanations = {name: gradcam.create_explainer(name, model, "body")(x, gradcam.TopK(2))
                    for name in ("gradcam", "layercam", "scorecam")}  # fmt: skip
    picture = compare_methods(explanations, images, geometries, tile_height=24)
    for b in range(2):
        for m, e in enumerate(explanations.values()):
            for j in range(2):
                expected = np.asarray(overlay(images[b], e.heatmap[b, j], geometry=geometries[b]))
                assert np.array_equal(cell(picture, b, 2 * m + j, (32, 24)), expected), (b, m, j)


def test_show_refuses_what_it_cannot_draw(photos_and_inputs) -> None:
    model, images, geometries, x = photos_and_inputs
    e = gradcam.GradCAM(model, "body")(x, 0)
    with pytest.raises(ValueError, match=r"images: got 1 for a batch of 2 images"):
        e.show(images[:1], geometries)
    video = gradcam.GradCAM(GapNetND(3).eval(), "body")(torch.randn(1, 3, 4, 6, 6), 0)
    with pytest.raises(ValueError, match=r"draw videos and volumes with gradcam\.imaging\.frame_strip"):
        video.show()


def test_input_space_maps_are_shown_as_gradient_images(photos_and_inputs) -> None:
    from gradcam.imaging import gradient_image

    model, _, _, x = photos_and_inputs
    for e in (gradcam.GuidedBackprop(model)(x, 2), gradcam.GuidedGradCAM(model, "body")(x, 2)):
        picture = e.show(tile_height=16)
        for b in range(2):
            assert np.array_equal(cell(picture, b, 0, (16, 16)), np.asarray(gradient_image(e.heatmap[b]))), e.method


def test_a_map_that_is_identically_zero_is_labelled(photos_and_inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradcam.imaging import grids

    model, _, _, x = photos_and_inputs
    with torch.no_grad():  # class 0's head weights all positive: after the ReLU (A >= 0) the counterfactual
        model.fc.weight[0] = torch.arange(1.0, 7.0)  # map ReLU(-sum_k alpha_k A_k) is 0 everywhere
    cam = gradcam.GradCAM(model, "act")
    e, against = cam(x, 0), cam(x, 0, counterfactual=True)
    assert torch.count_nonzero(against.heatmap) == 0 and torch.count_nonzero(e.heatmap[0]) > 0
    shown: list = []
    monkeypatch.setattr(grids, "grid", lambda rows, titles, tile_height: shown.append(titles))
    against.show()
    compare_methods({"gradcam": e, "counterfactual": against})
    score = [float(s) for s in against.scores]
    assert shown[0] == [[f"against class 0 ({score[b]:.3g}) (map is zero)"] for b in range(2)]
    assert [row[0].endswith(")") and "zero" not in row[0] for row in shown[1]] == [True, True]
    assert [row[1].endswith(" (map is zero)") for row in shown[1]] == [True, True]
