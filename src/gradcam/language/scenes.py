"""A synthetic scenes data set with known ground truth, generated on the fly and deterministic.

Each 64 x 64 image holds 2 or 3 objects, each with a colour (red, green, blue, yellow, purple), a shape
(circle, square, triangle), a size (small: half-extent 5 px, large: 8 px) and a position: a cell of a
3 x 3 grid plus up to 2 px of jitter. Within one scene shapes are distinct and colours are distinct, so
"the circle" and "the red object" name exactly one object. Objects never overlap (cells are 21.3 px
apart, an object spans at most 20 px).

Captions list the objects in reading order (row, then column of their cells) with the relation between
consecutive objects: "left of" when they share a row, "above" otherwise, e.g.
``"a large red circle left of a small blue square above a small green triangle"``.

Questions have one-word answers (colour, shape or size)::

    what colour is the circle            -> red      (asks about the circle)
    what shape is the blue object        -> square   (asks about the blue object)
    what size is the triangle            -> small    (asks about the triangle)
    what shape is left of the triangle   -> circle   (asks about the one object left of the triangle)

"left of" / "right of" compare grid columns and "above" / "below" grid rows; a relational question is
only asked when exactly one object satisfies it. Scene ``i`` of the split with seed ``s`` is a pure
function of ``(s, i)``: the same on every machine and in every process.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import torch

IMAGE_SIZE = 64
GRID = 3
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.78, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.62, 0.18, 0.85),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 5.0, "large": 8.0}
BACKGROUND = (0.12, 0.12, 0.12)
NOISE_STD = 0.03
JITTER = 2.0
# relation -> (axis, sign): X is RELATION the reference when sign * (X.axis - reference.axis) > 0
RELATIONS: dict[str, tuple[str, int]] = {
    "left of": ("col", -1),
    "right of": ("col", 1),
    "above": ("row", -1),
    "below": ("row", 1),
}
TRAIN_SEED = 0
HELDOUT_SEED = 1


@dataclass(frozen=True)
class SceneObject:
    """One object: attributes, grid cell, centre and half-extent in pixels (continuous coordinates)."""

    colour: str
    shape: str
    size: str
    row: int
    col: int
    cx: float
    cy: float

    @property
    def half(self) -> float:
        """Half the side of the object's bounding square, in pixels."""
        return SIZES[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) in continuous pixel coordinates (pixel i covers [i, i+1))."""
        return self.cx - self.half, self.cy - self.half, self.cx + self.half, self.cy + self.half

    def words(self) -> tuple[str, ...]:
        """The words that describe this object in a caption: ``a SIZE COLOUR SHAPE``."""
        return "a", self.size, self.colour, self.shape


@dataclass(frozen=True)
class Question:
    """A question about a scene: its words, the one-word answer and the index of the object it asks about."""

    text: str
    answer: str
    kind: str  # "colour", "shape", "size" or "relation"
    subject: int  # index (into Scene.objects) of the object whose attribute is the answer

    @property
    def words(self) -> list[str]:
        return self.text.split()


@dataclass(frozen=True)
class Scene:
    """A scene: its objects in reading order, and the split seed and index that generated it."""

    objects: tuple[SceneObject, ...]
    seed: int
    index: int

    def caption_words(self) -> list[tuple[str, int | None]]:
        """The caption as (word, object index or None for relation words), in order."""
        out: list[tuple[str, int | None]] = []
        for i, obj in enumerate(self.objects):
            if i > 0:
                previous = self.objects[i - 1]
                relation = "left of" if previous.row == obj.row else "above"
                out.extend((word, None) for word in relation.split())
            out.extend((word, i) for word in obj.words())
        return out

    @property
    def caption(self) -> str:
        """The caption, e.g. ``"a small red circle left of a large blue square"``."""
        return " ".join(word for word, _ in self.caption_words())

    def related(self, relation: str, reference: int) -> list[int]:
        """Indices of the objects that are ``relation`` (e.g. "left of") the object ``reference``."""
        axis, sign = RELATIONS[relation]
        ref = self.objects[reference]
        key = (lambda o: o.col) if axis == "col" else (lambda o: o.row)
        return [i for i, o in enumerate(self.objects) if i != reference and (key(o) - key(ref)) * sign > 0]

    @cached_property
    def questions(self) -> tuple[Question, ...]:
        """Every question this scene answers unambiguously (attribute questions first)."""
        out: list[Question] = []
        for i, o in enumerate(self.objects):
            out.append(Question(f"what colour is the {o.shape}", o.colour, "colour", i))
            out.append(Question(f"what shape is the {o.colour} object", o.shape, "shape", i))
            out.append(Question(f"what size is the {o.shape}", o.size, "size", i))
        for r, ref in enumerate(self.objects):
            for relation in RELATIONS:
                found = self.related(relation, r)
                if len(found) == 1:
                    subject = self.objects[found[0]]
                    out.append(
                        Question(f"what shape is {relation} the {ref.shape}", subject.shape, "relation", found[0])
                    )
                    out.append(
                        Question(f"what colour is {relation} the {ref.shape}", subject.colour, "relation", found[0])
                    )
        return tuple(out)


def make_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the split ``seed`` (a pure function of both)."""
    if index < 0:
        raise ValueError(f"index must be >= 0; got {index}")
    rng = random.Random(seed * 1_000_003 + index)
    count = rng.choice((2, 3))
    cells = rng.sample(range(GRID * GRID), count)
    shapes = rng.sample(SHAPES, count)
    colours = rng.sample(list(COLOURS), count)
    step = IMAGE_SIZE / GRID
    objects = []
    for cell, shape, colour in zip(cells, shapes, colours):
        row, col = divmod(cell, GRID)
        size = rng.choice(tuple(SIZES))
        cx = (col + 0.5) * step + rng.uniform(-JITTER, JITTER)
        cy = (row + 0.5) * step + rng.uniform(-JITTER, JITTER)
        objects.append(SceneObject(colour, shape, size, row, col, round(cx, 3), round(cy, 3)))
    objects.sort(key=lambda o: (o.row, o.col))
    return Scene(tuple(objects), seed, index)


@cache
def _pixel_centres() -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return y, x


def object_mask(obj: SceneObject) -> torch.Tensor:
    """The (64, 64) boolean mask of ``obj``, tested at pixel centres.

    circle: ``(x - cx)^2 + (y - cy)^2 <= h^2``; square: ``|x - cx| <= h and |y - cy| <= h``; triangle
    (apex up): ``cy - h <= y <= cy + h and |x - cx| <= (y - (cy - h)) / 2``.
    """
    y, x = _pixel_centres()
    dx, dy, h = x - obj.cx, y - obj.cy, obj.half
    if obj.shape == "circle":
        return dx * dx + dy * dy <= h * h
    if obj.shape == "square":
        return (dx.abs() <= h) & (dy.abs() <= h)
    top = dy + h
    return (top >= 0) & (dy <= h) & (dx.abs() <= top / 2)


def render(scene: Scene) -> torch.Tensor:
    """The scene as a (3, 64, 64) float32 image in [0, 1]: flat background, objects, seeded noise."""
    image = torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1).repeat(1, IMAGE_SIZE, IMAGE_SIZE)
    for obj in scene.objects:
        mask = object_mask(obj)
        image[:, mask] = torch.tensor(COLOURS[obj.colour]).view(3, 1)
    noise = torch.Generator().manual_seed(scene.seed * 1_000_003 + scene.index)
    image += NOISE_STD * torch.randn(image.shape, generator=noise)
    return image.clamp_(0.0, 1.0)


class SceneDataset:
    """The scenes of one split, indexed from 0; ``seed`` 0 is the training split, 1 the held-out split.

    ``dataset[i]`` is a :class:`Scene`; ``dataset.images(indices)`` renders them as a (N, 3, 64, 64)
    batch in [0, 1]. Nothing is stored: any index can be asked for, in any order.
    """

    def __init__(self, seed: int = TRAIN_SEED) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer; got {seed!r}")
        self.seed = seed

    def __getitem__(self, index: int) -> Scene:
        return make_scene(self.seed, index)

    def scenes(self, indices: Sequence[int]) -> list[Scene]:
        return [make_scene(self.seed, i) for i in indices]

    def images(self, indices: Sequence[int] | Sequence[Scene]) -> torch.Tensor:
        """Rendered images, (N, 3, 64, 64) in [0, 1]."""
        scenes = [i if isinstance(i, Scene) else make_scene(self.seed, i) for i in indices]
        return torch.stack([render(s) for s in scenes])

    def __repr__(self) -> str:
        return f"SceneDataset(seed={self.seed})"


render_scene = render  # the package re-exports this name: ``gradcam.language.render`` is the drawing module


def heldout(count: int, start: int = 0) -> list[Scene]:
    """The first ``count`` scenes of the held-out split (seed 1), from ``start``."""
    return [make_scene(HELDOUT_SEED, i) for i in range(start, start + count)]
