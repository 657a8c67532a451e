"""Geometry.from_transforms against torchvision itself: the resized size torchvision's Resize produces and
the exact pixels its CenterCrop keeps (or pads), for many image sizes, v1 and v2 transforms."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms as v1
import torchvision.transforms.v2 as v2

from gradcam.imaging import Geometry

SIZES = [(640, 480), (480, 640), (333, 500), (500, 333), (224, 224), (100, 300), (257, 255), (301, 2), (50, 60)]


def pipelines(module):
    return [
        module.Compose([module.Resize(256), module.CenterCrop(224)]),
        module.Compose([module.Resize(232, max_size=300), module.CenterCrop(224)]),
        module.Compose([module.Resize((200, 300)), module.CenterCrop((150, 180))]),
        module.Compose([module.CenterCrop((100, 70))]),  # no resize; larger than some images: padding
        module.Resize(128),
    ]


def torchvision_geometry(transform, size: tuple[int, int]) -> tuple[tuple[int, int], torch.Tensor]:
    """What torchvision does, step by step: the resized (W1, H1) and the crop of an index image of that size
    (index + 1 per pixel, so padding's 0 is told apart)."""
    width, height = size
    steps = list(getattr(transform, "transforms", [transform]))
    resize = [s for s in steps if type(s).__name__ == "Resize"]
    crop = [s for s in steps if type(s).__name__ == "CenterCrop"]
    shape = resize[0](torch.zeros(1, height, width)).shape[-2:] if resize else (height, width)
    resized = (int(shape[1]), int(shape[0]))
    index = (torch.arange(resized[0] * resized[1], dtype=torch.float64) + 1).reshape(1, resized[1], resized[0])
    return resized, (crop[0](index) if crop else index)[0]


def crop_by_box(geometry: Geometry) -> torch.Tensor:
    """The index image of the resized frame cut by ``geometry.crop_box``, zero outside it (padding)."""
    (w1, h1), (left, top, right, bottom) = geometry.resized_size, geometry.crop_box
    index = (torch.arange(w1 * h1, dtype=torch.float64) + 1).reshape(h1, w1)
    out = torch.zeros(bottom - top, right - left, dtype=torch.float64)
    ys, xs = slice(max(top, 0), min(bottom, h1)), slice(max(left, 0), min(right, w1))
    out[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left] = index[ys, xs]
    return out


@pytest.mark.parametrize("module", [v1, v2], ids=["v1", "v2"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_from_transforms_matches_torchvision(module, size: tuple[int, int]) -> None:
    for transform in pipelines(module):
        geometry = Geometry.from_transforms(transform, size)
        resized, cropped = torchvision_geometry(transform, size)
        assert geometry.original_size == size
        assert geometry.resized_size == resized, transform
        assert geometry.input_size == (cropped.shape[1], cropped.shape[0]), transform
        assert torch.equal(crop_by_box(geometry), cropped), transform


def test_pixel_preserving_steps_are_skipped_and_others_refused() -> None:
    steps = [v1.Resize(256), v1.CenterCrop(224), v1.ToTensor(), v1.Normalize((0.5,) * 3, (0.5,) * 3)]
    plain = Geometry.from_transforms(v1.Compose(steps[:2]), (640, 480))
    assert Geometry.from_transforms(v1.Compose(steps), (640, 480)) == plain
    # 640 x 480 -> shorter side 256: 341 x 256; crop offsets round((341 - 224) / 2) = 58, (256 - 224) / 2 = 16
    assert plain.crop_box == (58, 16, 282, 240) and plain.resized_size == (341, 256)
    with pytest.raises(ValueError, match=r"cannot map maps back through RandomResizedCrop: .*one Resize followed"):
        Geometry.from_transforms(v2.Compose([v2.RandomResizedCrop(224)]), (640, 480))
    with pytest.raises(ValueError, match=r"cannot map maps back through Resize"):  # a resize after the crop
        Geometry.from_transforms(v1.Compose([v1.CenterCrop(200), v1.Resize(100)]), (640, 480))
