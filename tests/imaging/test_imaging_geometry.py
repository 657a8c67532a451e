"""Tests for gradcam.imaging.geometry: preprocessing within one level of torchvision's, and the inverse geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.imaging.geometry import (
    Geometry,
    PreprocessConfig,
    center_crop_box,
    compute_geometry,
    image_pixels,
    preprocess,
    preprocess_batch,
    resized_crop,
    resized_size_for,
)
from tolerances import assert_close

transforms = pytest.importorskip("torchvision.transforms")

INTERPOLATIONS = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "nearest": transforms.InterpolationMode.NEAREST,
}


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _torchvision_pipeline(config: PreprocessConfig) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(config.resize_size, interpolation=INTERPOLATIONS[config.interpolation]),
            transforms.CenterCrop(config.input_size),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(
    ("width", "height", "resize", "crop"),
    [
        (400, 300, 256, 224),
        (300, 400, 256, 224),
        (97, 131, 64, 57),
        (333, 100, 40, 33),
        (50, 50, 32, 32),
        (61, 45, 20, 25),
    ],  # last one: crop larger than the resized short side -> zero padding
)
def test_matches_torchvision(width: int, height: int, resize: int, crop: int, interpolation: str) -> None:
    config = PreprocessConfig(input_size=crop, resize_size=resize, interpolation=interpolation)
    image = _random_image(width, height, seed=width * height)
    ours, geometry = preprocess(image, config)
    expected = _torchvision_pipeline(config)(image)
    assert ours.dtype == torch.float32
    assert ours.shape == expected.shape
    # torch's antialiased uint8 resampling: PIL's filters, rounded its own way (a value may be one
    # 8-bit level off, rarely); nearest goes through PIL and is exact, and so is the zero padding.
    levels = ((ours - expected) * torch.tensor(config.std).view(-1, 1, 1) * 255).abs()
    assert levels.max() <= 1 + 1e-3
    assert (levels > 0.5).float().mean() <= 0.02
    if interpolation == "nearest":
        # the same 8-bit values normalised, (v / 255 - mean) / std in some order: terms of size (1 + mean) / std
        magnitude = max((1 + m) / s for m, s in zip(config.mean, config.std))
        assert_close(ours, expected, terms=2, magnitude=magnitude, depth=2)
    assert geometry.original_size == (width, height)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("width", "height"), [(640, 480), (480, 640), (3000, 2000), (150, 120), (256, 300)])
def test_resized_crop_is_pil_resize_and_crop_within_one_level(width: int, height: int, interpolation: str) -> None:
    image = _random_image(width, height, seed=width + height)  # noise: any shifted or widened window shows
    config = PreprocessConfig(interpolation=interpolation)
    geometry = compute_geometry(image.size, config)
    pil = np.asarray(image.resize(geometry.resized_size, config.pil_resample).crop(geometry.crop_box)).astype(int)
    ours = resized_crop(image_pixels(image), geometry, interpolation).permute(1, 2, 0).numpy().astype(int)
    assert ours.shape == pil.shape
    assert np.abs(ours - pil).max() <= 1
    assert (ours != pil).mean() < 0.02


def test_resized_crop_pads_an_overhanging_crop_with_zeros() -> None:
    image = _random_image(20, 27, seed=3)
    geometry = Geometry(original_size=(20, 27), resized_size=(20, 27), crop_box=(-2, 1, 23, 26), input_size=(25, 25))
    ours = resized_crop(image_pixels(image), geometry, "bilinear").permute(1, 2, 0).numpy()
    pixels = np.asarray(image)
    assert (ours[:, :2] == 0).all() and (ours[:, 22:] == 0).all()
    np.testing.assert_array_equal(ours[:, 2:22], pixels[1:26])


def test_resize_and_crop_rounding_like_torchvision() -> None:
    assert resized_size_for((400, 300), 256) == (341, 256)  # int(256 * 400 / 300) = int(341.33)
    assert resized_size_for((299, 300), 256) == (256, 256)  # int(256 * 300 / 299) = int(256.86)
    assert center_crop_box((341, 256), (224, 224)) == (58, 16, 282, 240)  # round(58.5) = 58 (half to even)
    assert center_crop_box((343, 256), (224, 224)) == (60, 16, 284, 240)  # round(59.5) = 60
    assert center_crop_box((20, 27), (25, 25)) == (-2, 1, 23, 26)  # padded: (25 - 20) // 2 = 2 on the left


GEOMETRY_400x300 = compute_geometry((400, 300), PreprocessConfig())


def test_geometry_of_400x300() -> None:
    assert GEOMETRY_400x300 == Geometry(
        original_size=(400, 300), resized_size=(341, 256), crop_box=(58, 16, 282, 240), input_size=(224, 224)
    )


def test_one_hot_at_input_resolution_lands_at_analytic_original_pixel() -> None:
    x_in, y_in = 100, 50
    one_hot = torch.zeros(224, 224)
    one_hot[y_in, x_in] = 1.0
    mapped = GEOMETRY_400x300.to_original(one_hot)
    assert mapped.shape == (300, 400)
    # Pixel centre (100.5, 50.5) -> resized (158.5, 66.5) -> original (158.5 * 400/341, 66.5 * 300/256).
    x_expected = (x_in + 0.5 + 58) * 400 / 341 - 0.5
    y_expected = (y_in + 0.5 + 16) * 300 / 256 - 0.5
    row, col = divmod(int(mapped.argmax()), 400)
    assert abs(col - x_expected) <= 1 and abs(row - y_expected) <= 1
    assert pytest.approx((x_expected, y_expected), abs=0.05) == (185.4, 77.4)


def test_coarse_7x7_cell_lands_at_its_centre() -> None:
    cell = torch.zeros(2, 3, 7, 7, dtype=torch.float64)  # arbitrary leading dims and float64
    cell[1, 2, 2, 3] = 1.0  # row 2, column 3
    mapped = GEOMETRY_400x300.to_original(cell)
    assert mapped.shape == (2, 3, 300, 400) and mapped.dtype == torch.float64
    assert float(mapped[0].abs().max()) == 0.0 and float(mapped[1, :2].abs().max()) == 0.0
    # Cell centre in the input frame: (3.5 * 32, 2.5 * 32) = (112, 80).
    x_expected, y_expected = GEOMETRY_400x300.point_to_original(112, 80)
    row, col = divmod(int(mapped[1, 2].argmax()), 400)
    assert abs(col + 0.5 - x_expected) <= 1 and abs(row + 0.5 - y_expected) <= 1


def test_outside_the_crop_maps_to_zero_and_inside_keeps_constant() -> None:
    mapped = GEOMETRY_400x300.to_original(torch.ones(7, 7))
    left, top, right, bottom = GEOMETRY_400x300.box_to_original((0, 0, 224, 224))
    assert (left, top, right, bottom) == pytest.approx(
        (58 * 400 / 341, 16 * 300 / 256, 282 * 400 / 341, 240 * 300 / 256)
    )
    # Strictly outside the crop (more than one original pixel away) everything is exactly 0.
    assert float(mapped[:, : int(left) - 1].abs().max()) == 0.0
    assert float(mapped[:, int(right) + 2 :].abs().max()) == 0.0
    assert float(mapped[: int(top) - 1].abs().max()) == 0.0
    assert float(mapped[int(bottom) + 2 :].abs().max()) == 0.0
    # Well inside, a constant map stays exactly constant.
    assert torch.allclose(
        mapped[int(top) + 2 : int(bottom) - 2, int(left) + 2 : int(right) - 2], torch.tensor(1.0)
    )


def test_identity_geometry_is_identity() -> None:
    geometry = Geometry(original_size=(5, 4), resized_size=(5, 4), crop_box=(0, 0, 5, 4), input_size=(5, 4))
    maps = torch.rand(3, 4, 5)
    assert torch.equal(geometry.to_original(maps), maps)


def test_boxes_round_trip_and_points_are_affine() -> None:
    geometry = compute_geometry((640, 480), PreprocessConfig(input_size=224, resize_size=256))
    box = (10.0, 20.5, 100.25, 223.0)
    original = geometry.box_to_original(box)
    assert geometry.box_from_original(original) == pytest.approx(box)
    assert geometry.box_to_original(geometry.box_from_original((1, 2, 3, 4))) == pytest.approx((1, 2, 3, 4))
    # 640x480 -> 341x256 (truncated), crop left = round(58.5) = 58; per-axis scales 640/341 and 480/256.
    assert geometry.point_to_original(0, 0) == pytest.approx((58 * 640 / 341, 16 * 1.875))
    assert geometry.point_to_original(224, 224) == pytest.approx((282 * 640 / 341, 240 * 1.875))
    assert geometry.point_from_original(320, 240) == pytest.approx((320 * 341 / 640 - 58, 240 / 1.875 - 16))


def test_geometry_dict_round_trip() -> None:
    assert Geometry.from_dict(GEOMETRY_400x300.to_dict()) == GEOMETRY_400x300


def test_preprocess_batch_stacks_and_keeps_per_image_geometry() -> None:
    config = PreprocessConfig(input_size=16, resize_size=20)
    images = [_random_image(30, 20, 1), _random_image(20, 40, 2).convert("L")]
    batch, geometries = preprocess_batch(images, config)
    assert batch.shape == (2, 3, 16, 16)
    assert [g.resized_size for g in geometries] == [(30, 20), (20, 40)]
    single, _ = preprocess(images[1], config)
    assert torch.equal(batch[1], single)


def test_unknown_interpolation_is_rejected() -> None:
    with pytest.raises(ValueError, match="lanczos"):
        preprocess(
            _random_image(8, 8), PreprocessConfig(input_size=4, resize_size=4, interpolation="lanczos")
        )


def test_crop_pct() -> None:
    assert PreprocessConfig(input_size=224, resize_size=256).crop_pct == pytest.approx(0.875)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_preprocess_takes_pixels_or_a_pil_image_alike(interpolation: str) -> None:
    image = _random_image(320, 200, seed=5)
    config = PreprocessConfig(interpolation=interpolation)
    from_pil, geometry = preprocess(image, config)
    from_pixels, same = preprocess(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous(), config)
    assert same == geometry
    assert torch.equal(from_pil, from_pixels)  # channels-last or contiguous pixels: the same kernel values


def test_preprocess_refuses_pixels_that_are_not_uint8_rgb() -> None:
    with pytest.raises(ValueError, match=r"uint8 \(3, H, W\)"):
        preprocess(torch.zeros(3, 8, 8), PreprocessConfig())
    with pytest.raises(ValueError, match=r"uint8 \(3, H, W\)"):
        preprocess(torch.zeros(8, 8, 3, dtype=torch.uint8), PreprocessConfig())


def test_geometry_json_round_trip_and_clear_errors() -> None:
    import json as json_module

    from gradcam.imaging.geometry import Geometry, PreprocessConfig, compute_geometry

    geometry = compute_geometry((333, 217), PreprocessConfig(input_size=224, resize_size=256))
    data = json_module.loads(json_module.dumps(geometry.to_json()))
    assert data == {"original_size": [333, 217], "resized_size": [392, 256], "crop_box": [84, 16, 308, 240],
                    "input_size": [224, 224]}  # fmt: skip
    assert Geometry.from_json(data) == geometry
    with pytest.raises(ValueError, match="needs original_size, resized_size, crop_box, input_size"):
        Geometry.from_json({k: v for k, v in data.items() if k != "crop_box"})
    with pytest.raises(ValueError, match="crop_box needs 4 integers"):
        Geometry.from_json({**data, "crop_box": [1, 2, 3]})


@pytest.mark.parametrize("size", [(300, 3), (3, 300)])
def test_a_frame_too_large_to_build_is_sampled_as_it_would_be_resampled(size, monkeypatch) -> None:
    """Past FULL_FRAME_PIXELS the crop is sampled from the original and the maps from the crop: bilinear
    crops within one level of the antialiased resize (measured: at most 1, mean 0.15), maps within float32
    rounding of the canvas path; bicubic samples with grid_sample's a = -0.75 (PIL's is -0.5)."""
    from gradcam.imaging import geometry as geometry_module

    config = PreprocessConfig(input_size=224, resize_size=256, interpolation="bilinear")
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, size[1], size[0]), dtype=np.uint8))
    geometry = compute_geometry(size, config)
    maps = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0))
    full_crop, full_maps = resized_crop(pixels, geometry, "bilinear"), geometry.to_original(maps)
    monkeypatch.setattr(geometry_module, "FULL_FRAME_PIXELS", 1000)
    sampled_crop, sampled_maps = resized_crop(pixels, geometry, "bilinear"), geometry.to_original(maps)
    assert sampled_crop.dtype == torch.uint8 and sampled_crop.shape == full_crop.shape == (3, 224, 224)
    difference = (sampled_crop.int() - full_crop.int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 0.25
    assert sampled_maps.shape == full_maps.shape == (2, size[1], size[0])
    # float32 source coordinates of up to 25600 (interpolate's; ours are float64) are off by a few units
    # of roundoff of that magnitude; the 7 x 7 map in [0, 1] upsampled to 224 changes by <= 7 / 224 a pixel
    from tolerances import unit_roundoff

    atol = 4 * unit_roundoff() * max(geometry.resized_size) * 7 / 224
    torch.testing.assert_close(sampled_maps, full_maps, rtol=0, atol=atol)
