"""The synthetic scenes: deterministic, hand-checkable geometry, captions and questions."""

from __future__ import annotations

import pytest
import torch

from gradcam.errors import InputError
from gradcam.language.scenes import (
    BACKGROUND,
    COLOURS,
    IMAGE_SIZE,
    NOISE_STD,
    TRAIN_SEED,
    Scene,
    SceneDataset,
    SceneObject,
    make_scene,
    object_mask,
    render,
)
from gradcam.language.training import ENCODER_LABEL_SETS, occlude, scene_labels
from gradcam.language.vocab import ANSWERS, CAPTION_VOCAB, QUESTION_VOCAB, pad_batch, split_words


def obj(colour: str, shape: str, size: str, row: int, col: int, cx: float, cy: float) -> SceneObject:
    return SceneObject(colour, shape, size, row, col, cx, cy)


def test_scenes_are_pure_functions_of_seed_and_index() -> None:
    assert make_scene(1, 17) == make_scene(1, 17)
    assert torch.equal(render(make_scene(1, 17)), render(make_scene(1, 17)))
    assert make_scene(0, 17) != make_scene(1, 17)
    batch = SceneDataset(1).images([3, 4])
    assert torch.equal(batch[1], render(make_scene(1, 4)))


def test_masks_match_hand_counted_areas() -> None:
    # centre on a pixel corner (32, 32): pixel centres 27.5 .. 36.5 are within 5 px -> 10 x 10 pixels
    assert int(object_mask(obj("red", "square", "small", 1, 1, 32.0, 32.0)).sum()) == 100
    # large (half 8): 16 x 16
    assert int(object_mask(obj("red", "square", "large", 1, 1, 32.0, 32.0)).sum()) == 256
    # triangle apex up: row at y = cy - h + k + 0.5 (k = 0..15 for h = 8) holds |dx| <= (k + 0.5) / 2
    expected = sum(sum(1 for i in range(-10, 10) if abs(i + 0.5) <= (k + 0.5) / 2) for k in range(16))
    assert int(object_mask(obj("red", "triangle", "large", 1, 1, 32.0, 32.0)).sum()) == expected
    circle = int(object_mask(obj("red", "circle", "large", 1, 1, 32.0, 32.0)).sum())
    assert abs(circle - torch.pi * 64) < 12  # pi r^2 = 201, within the pixelisation error


def test_render_paints_colours_inside_masks_and_background_elsewhere() -> None:
    scene = make_scene(1, 0)
    image = render(scene)
    for o in scene.objects:
        inside = image[:, object_mask(o)].mean(1)
        assert torch.allclose(inside, torch.tensor(COLOURS[o.colour]), atol=3 * NOISE_STD / 4)
    outside = ~torch.stack([object_mask(o) for o in scene.objects]).any(0)
    assert torch.allclose(image[:, outside].mean(1), torch.tensor(BACKGROUND), atol=0.01)


def test_generated_scenes_respect_the_constraints() -> None:
    for index in range(300):
        scene = make_scene(0, index)
        assert len(scene.objects) in (2, 3)
        assert len({o.shape for o in scene.objects}) == len(scene.objects)
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        masks = torch.stack([object_mask(o) for o in scene.objects]).long()
        assert int(masks.sum(0).max()) == 1  # no overlap
        assert [(o.row, o.col) for o in scene.objects] == sorted((o.row, o.col) for o in scene.objects)
        for o in scene.objects:  # boxes inside the image
            x0, y0, x1, y1 = o.box
            assert min(x0, y0) >= 0 and max(x1, y1) <= 64


def test_caption_and_questions_of_a_hand_made_scene() -> None:
    scene = Scene(
        (
            obj("red", "circle", "small", 0, 0, 10.7, 10.7),
            obj("blue", "square", "large", 0, 2, 53.3, 10.7),
            obj("green", "triangle", "small", 2, 1, 32.0, 53.3),
        ),
        seed=9,
        index=0,
    )
    assert scene.caption == "a small red circle left of a large blue square above a small green triangle"
    aligned = scene.caption_words()
    assert [o for w, o in aligned if w == "blue"] == [1] and [o for w, o in aligned if w == "triangle"] == [2]
    answers = {q.text: (q.answer, q.subject) for q in scene.questions}
    assert answers["what colour is the square"] == ("blue", 1)
    assert answers["what shape is the green object"] == ("triangle", 2)
    assert answers["what size is the circle"] == ("small", 0)
    # columns 0, 2, 1: only the circle is left of the triangle, only the square right of it
    assert answers["what shape is left of the triangle"] == ("circle", 0)
    assert answers["what colour is right of the triangle"] == ("blue", 1)
    # two objects are above the triangle: ambiguous, so never asked
    assert "what shape is above the triangle" not in answers
    assert answers["what shape is below the circle"] == ("triangle", 2)


def test_vocabularies_encode_decode_and_name_unknown_words() -> None:
    ids = CAPTION_VOCAB.encode("A small red circle.", bos=True, eos=True)
    assert CAPTION_VOCAB.decode(ids) == ["a", "small", "red", "circle"]
    assert ids[0] == CAPTION_VOCAB.id("<bos>") and ids[-1] == CAPTION_VOCAB.id("<eos>")
    assert split_words("What COLOR is the circle?") == ["what", "colour", "is", "the", "circle"]
    with pytest.raises(InputError, match="'dog'"):
        QUESTION_VOCAB.encode("what colour is the dog")
    with pytest.raises(InputError, match="empty"):
        QUESTION_VOCAB.encode("?!")
    assert set(ANSWERS) == {*COLOURS, "circle", "square", "triangle", "small", "large"}
    padded = pad_batch([[5, 6, 7], [8]])
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0]]


def test_pretraining_labels_and_cutout() -> None:
    scenes = [make_scene(TRAIN_SEED, i) for i in range(6)]
    pairs = scene_labels(scenes, "pairs")
    assert pairs.shape == (6, len(ENCODER_LABEL_SETS["pairs"])) == (6, 10 + 15 + 10 + 6)
    first = scenes[0].objects[0]
    column = ENCODER_LABEL_SETS["pairs"].index((first.colour, first.shape))
    # each object has 3 attributes and 3 pairs of them; only sizes repeat within a scene
    expected = [5 * len(s.objects) + len({o.size for o in s.objects}) for s in scenes]
    assert pairs[0, column] == 1 and pairs.sum(1).int().tolist() == expected
    images = torch.ones(6, 3, IMAGE_SIZE, IMAGE_SIZE)
    occluded, visible = occlude(images, scenes, rate=1.0, seed=3)
    assert torch.equal(images, torch.ones_like(images))  # the input is left as it was
    for image, scene, flags in zip(occluded, scenes, visible):
        side = int((image[0] == 0).sum()) ** 0.5
        assert side == int(side) and 8 <= side <= 20  # one square of background
        for obj, flag in zip(scene.objects, flags):
            mask = object_mask(obj)
            assert flag == (float((image[0][mask] != 0).sum()) >= 0.5 * float(mask.sum()))
    hidden = scene_labels(scenes, "attributes", [[False] * len(s.objects) for s in scenes])
    assert not bool(hidden.any())  # labels come from the visible objects only
