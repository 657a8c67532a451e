"""`gradcam explain --method dff`: the concept picture, maps and records of a bundled photo with Lite0."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.assets import sample_annotations, sample_path
from gradcam.cli import main
from gradcam.imaging.concepts import CONCEPT_COLORS
from gradcam.imaging.draw import caption_height
from gradcam.imaging.io import load_image
from tolerances import assert_close, gamma, ratio_rtol, relative, unit_roundoff


@pytest.fixture(scope="module")
def cat_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dff")
    code = main(["explain", str(sample_path("chelsea_cat.jpg")), "--concepts", "3", "--out", str(out), "--quiet"])
    return code, out


def test_concepts_of_the_cat_are_cats(cat_run):
    code, out = cat_run
    assert code == 0
    record = json.loads((out / "chelsea_cat_jpg" / "dff_concepts.json").read_text())
    assert record["layer"] == "bn2" and len(record["concepts"]) == 3
    cats = set(sample_annotations()["chelsea_cat.jpg"]["accepted_indices"])  # tabby, tiger cat, Egyptian cat
    # The photo is a cat's face: every concept's embedding is classified as a cat, with most of its
    # probability on the cat classes (measured: the three cat classes take > 0.98 of each).
    for concept in record["concepts"]:
        assert concept["classes"][0]["index"] in cats, concept
        assert sum(c["probability"] for c in concept["classes"] if c["index"] in cats) > 0.5, concept
    strengths = [c["strength"] for c in record["concepts"]]
    assert strengths == sorted(strengths, reverse=True)
    assert_close(sum(strengths), 1.0, terms=3, magnitude=1.0)
    # Each probability is the float32 softmax of the recorded logits: in the ratio of two the denominator
    # cancels, leaving exp(l1 - l2) with each exp's rounding and that of the max-shifted arguments (|l| u each).
    first, second = record["concepts"][0]["classes"][:2]
    ratio = first["probability"] / second["probability"]
    shift = gamma(2) + 2 * unit_roundoff() * max(abs(first["logit"]), abs(second["logit"]))
    torch.testing.assert_close(ratio, math.exp(first["logit"] - second["logit"]), **relative(ratio_rtol(shift, shift)))
    index = json.loads((out / "concepts.json").read_text())
    assert index["n_components"] == 3 and len(index["items"]) == 1 and not index["failed"]


def test_picture_and_maps_are_on_the_original_pixels(cat_run):
    _, out = cat_run
    photo = load_image(sample_path("chelsea_cat.jpg"))
    maps = np.load(out / "chelsea_cat_jpg" / "dff_concepts.npy")
    assert maps.shape == (3, photo.height, photo.width) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and np.isclose(maps.max(axis=(1, 2)), 1, atol=0.05).all()
    picture = np.asarray(Image.open(out / "chelsea_cat_jpg" / "dff_concepts.png"))
    line = caption_height(4)
    assert picture.shape == (photo.height + 3 * line, photo.width, 3)
    # Where concept c peaks (and wins), the pixel is (1 - a) photo + a colour with a = 0.6 m (alpha 0.6).
    for c in range(3):
        y, x = np.unravel_index(maps[c].argmax(), maps[c].shape)
        if maps[:, y, x].argmax() != c:
            continue
        a = 0.6 * float(maps[c, y, x])
        expected = (1 - a) * np.asarray(photo)[y, x] + a * np.asarray(CONCEPT_COLORS[c])
        assert np.abs(picture[y, x].astype(float) - expected).max() <= 0.5 + 1e-3  # rounded to uint8
    # Outside the centre crop no concept is present: the photo shows through.
    assert (picture[: photo.height, 0] == np.asarray(photo)[:, 0]).all()


FLAT_HEAD = """
from torch import nn


def flat():  # the classifier reads the flattened 4 x 28 x 28 map, not 4 pooled channels
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=8, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 2))
"""


def test_a_model_without_a_pooled_head_is_named(tmp_path, capsys):
    (tmp_path / "nets.py").write_text(FLAT_HEAD)
    argv = ["explain", str(sample_path("coffee.jpg")), "--model", f"{tmp_path / 'nets.py'}:flat", "--concepts", "2"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "no classifier head reads the layer's 4 channels" in error and "'3' (3136 features)" in error
