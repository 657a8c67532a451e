"""Concept pictures: two concepts on known halves coloured by hand, the legend's swatches, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.imaging.concepts import CONCEPT_COLORS, concept_overlay, draw_concepts
from gradcam.imaging.draw import caption_height

RED, BLUE = (200, 0, 0), (0, 0, 200)


def halves(width: int = 40, height: int = 20) -> torch.Tensor:
    """Concept 0: 1 on the left half, 0.2 on the right; concept 1: 0.5 on the right half, 0 on the left; the
    bottom-right pixel is in neither."""
    maps = torch.zeros(2, height, width)
    maps[0, :, : width // 2], maps[0, :, width // 2 :] = 1.0, 0.2
    maps[1, :, width // 2 :] = 0.5
    maps[:, -1, -1] = 0.0
    return maps


def test_pixels_take_their_strongest_concepts_colour():
    gray = Image.new("RGB", (40, 20), (100, 100, 100))
    out = np.asarray(concept_overlay(gray, halves(), alpha=0.6, colors=[RED, BLUE])).astype(int)
    # Left: concept 0 at strength 1, a = 0.6: 0.4 * 100 + 0.6 * (200, 0, 0) = (160, 40, 40).
    assert (out[:, :20] == (160, 40, 40)).all()
    # Right: concept 1 (0.5) beats concept 0 (0.2), a = 0.3: 0.7 * 100 + 0.3 * (0, 0, 200) = (70, 70, 130).
    right = out[:, 20:].reshape(-1, 3)[:-1]
    assert (right == (70, 70, 130)).all()
    # Where no concept is present the photo shows through unchanged.
    assert out[-1, -1].tolist() == [100, 100, 100]


def test_legend_lists_every_concept_in_its_colour():
    gray = Image.new("RGB", (40, 20), (100, 100, 100))
    picture = draw_concepts(gray, halves().numpy(), ["cat 0.9", "dog 0.1"], alpha=0.6, pad=4)
    line = caption_height(4)
    assert picture.size == (40, 20 + 2 * line)
    pixels = np.asarray(picture)
    assert (pixels[:20] == np.asarray(concept_overlay(gray, halves(), alpha=0.6))).all()
    for i in range(2):  # the swatch of concept i, inside its legend line
        assert tuple(pixels[20 + i * line + 4 + 1, 4 + 1]) == CONCEPT_COLORS[i]


@pytest.mark.parametrize(
    ("maps", "options", "match"),
    [
        (torch.zeros(2, 5, 5), {}, "image is 40x20"),
        (torch.zeros(20, 40), {}, r"\(n, H, W\)"),
        (torch.zeros(2, 20, 40), {"alpha": 1.5}, "alpha"),
        (torch.zeros(2, 20, 40), {"labels": ["one"]}, "1 labels for 2"),
    ],
)
def test_bad_input_is_named(maps, options, match):
    gray = Image.new("RGB", (40, 20))
    with pytest.raises(ValueError, match=match):
        draw_concepts(gray, maps, **options)
