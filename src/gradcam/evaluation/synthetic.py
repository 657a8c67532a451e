"""A synthetic localization benchmark with exact ground truth, and the small CNN trained on it.

Images (112 x 112 RGB, generated on the fly, deterministic per ``(seed, index)``): a smooth random
background, clutter (thin lines and small blobs in random colours), and one or two objects of six
classes at random positions, sizes (24 to 44 px across), rotations and colours. Classes differ in
shape or texture only, never in colour, so a classifier has to look at the object:

    disc, ring, square, checker (a square with a two-colour checkerboard), triangle, cross

The boxes are the tight boxes of the objects' pixels. On two-object images (two different classes,
boxes at least 4 px apart) a class-discriminative map for one class must point at that object and not
at the other.

:class:`SyntheticCNN` is a seven-layer CNN with a global-average-pooling + linear head (so CAM applies)
whose last convolutional block, ``features``, gives a 14 x 14 map at 112 px. Its weights, trained by
``scripts/train_synthetic.py`` (:mod:`.training`), ship with the package.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..imaging.geometry import PreprocessConfig

CLASSES: tuple[str, ...] = ("disc", "ring", "square", "checker", "triangle", "cross")
IMAGE_SIZE = 112
SYNTHETIC_PREPROCESS = PreprocessConfig(
    input_size=IMAGE_SIZE,
    resize_size=IMAGE_SIZE,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    interpolation="bilinear",
)
WEIGHTS_NAME = "synthetic_cnn.pt"
RECORD_NAME = "synthetic_cnn.json"
DEFAULT_LAYER = "features"
TRAIN_SEED = 0  # training images use seed 0; evaluation uses other seeds (default 1)
EVAL_SEED = 1

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SyntheticImage:
    """One generated image: ``pixels`` (H, W, 3) uint8 and its ``objects`` as (class index, box) pairs."""

    index: int
    pixels: np.ndarray
    objects: tuple[tuple[int, Box], ...]

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, "RGB")

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(c for c, _ in self.objects)


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius ``r`` in rotated, centred coordinates (u, v)."""
    if kind == "disc":
        return u * u + v * v <= r * r
    if kind == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind in ("square", "checker"):
        half = 0.8 * r
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "triangle":  # equilateral, circumradius r: inside the three edges at distance r / 2
        inside = np.ones_like(u, dtype=bool)
        for angle in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= u * math.cos(angle) + v * math.sin(angle) <= r / 2
        return inside
    if kind == "cross":
        arm = 0.3 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    raise ValueError(f"unknown shape {kind!r}; classes are {CLASSES}")


def _distant_colour(rng: np.random.Generator, reference: np.ndarray, distance: float = 90.0) -> np.ndarray:
    colour = rng.uniform(0, 255, 3)
    for _ in range(30):
        if np.linalg.norm(colour - reference) >= distance:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def _gap(a: Box, b: Box) -> float:
    """Largest axis gap between two boxes (negative when they overlap on both axes)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


class SyntheticShapes(torch.utils.data.Dataset):
    """``count`` synthetic images; item ``i`` is generated from ``numpy.random.default_rng([seed, i])``.

    ``two_objects`` is the fraction of two-object images; ``sizes`` the range of object diameters in
    pixels; ``clutter`` the range of the number of clutter items. Items are :class:`SyntheticImage`.
    """

    def __init__(
        self,
        count: int,
        seed: int = EVAL_SEED,
        *,
        size: int = IMAGE_SIZE,
        two_objects: float = 0.5,
        sizes: tuple[int, int] = (24, 44),
        clutter: tuple[int, int] = (6, 14),
    ) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0; got {count}")
        if not 0.0 <= two_objects <= 1.0:
            raise ValueError(f"two_objects must be a fraction in [0, 1]; got {two_objects}")
        if not 4 <= sizes[0] <= sizes[1] <= size // 2:
            raise ValueError(f"sizes must be (min, max) diameters with 4 <= min <= max <= {size // 2}; got {sizes}")
        self.count = count
        self.seed = seed
        self.size = size
        self.two_objects = two_objects
        self.sizes = sizes
        self.clutter = clutter
        centres = np.arange(size, dtype=np.float64) + 0.5
        self._yy, self._xx = np.meshgrid(centres, centres, indexing="ij")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> SyntheticImage:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} images")
        return self.generate(index)

    def generate(self, index: int) -> SyntheticImage:
        """Image ``index`` of this seed (any non-negative index, not only those below ``count``)."""
        rng = np.random.default_rng([self.seed, index])
        canvas = self._background(rng)
        self._clutter(rng, canvas)
        count = 2 if rng.random() < self.two_objects else 1
        classes = rng.choice(len(CLASSES), size=count, replace=False)
        objects: list[tuple[int, Box]] = []
        for cls in classes:
            for _ in range(200):
                placed = self._object(rng, canvas, int(cls), [box for _, box in objects])
                if placed is not None:
                    objects.append((int(cls), placed))
                    break
        pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        return SyntheticImage(index, pixels, tuple(objects))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        corners = rng.uniform(0, 255, (3, 3, 3)).astype(np.uint8)
        smooth = Image.fromarray(corners, "RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(smooth, dtype=np.float64) + rng.normal(0, 10, (self.size, self.size, 3))

    def _window(self, cx: float, cy: float, reach: float) -> tuple[slice, slice]:
        """Rows and columns of the pixels within ``reach`` of (cx, cy), clipped to the image."""
        y0, y1 = max(0, math.floor(cy - reach)), min(self.size, math.ceil(cy + reach) + 1)
        x0, x1 = max(0, math.floor(cx - reach)), min(self.size, math.ceil(cx + reach) + 1)
        return slice(y0, y1), slice(x0, x1)

    def _clutter(self, rng: np.random.Generator, canvas: np.ndarray) -> None:
        for _ in range(int(rng.integers(self.clutter[0], self.clutter[1] + 1))):
            colour = rng.uniform(0, 255, 3)
            if rng.random() < 0.6:  # a thin line segment, 8 to 30 px long
                x0, y0 = rng.uniform(0, self.size, 2)
                length, angle = rng.uniform(8, 30), rng.uniform(0, math.pi)
                dx, dy = length * math.cos(angle), length * math.sin(angle)
                width = rng.uniform(0.6, 1.3)
                rows, cols = self._window(x0 + dx / 2, y0 + dy / 2, length / 2 + 2)
                xx, yy = self._xx[rows, cols], self._yy[rows, cols]
                t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)
                mask = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= width
            else:  # a small blob, 4 to 9 px across
                cx, cy = rng.uniform(0, self.size, 2)
                radius = rng.uniform(2, 4.5)
                rows, cols = self._window(cx, cy, radius + 1)
                mask = np.hypot(self._xx[rows, cols] - cx, self._yy[rows, cols] - cy) <= radius
            canvas[rows, cols][mask] = colour

    def _object(self, rng: np.random.Generator, canvas: np.ndarray, cls: int, others: list[Box]) -> Box | None:
        radius = rng.uniform(*self.sizes) / 2
        margin = radius + 2
        cx, cy = rng.uniform(margin, self.size - margin, 2)
        angle = rng.uniform(0, 2 * math.pi)
        rows, cols = self._window(cx, cy, radius + 1)
        dx, dy = self._xx[rows, cols] - cx, self._yy[rows, cols] - cy
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        mask = _shape_mask(CLASSES[cls], u, v, radius)
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if ys.size == 0:
            return None
        box = (
            float(cols.start + xs[0]),
            float(rows.start + ys[0]),
            float(cols.start + xs[-1] + 1),
            float(rows.start + ys[-1] + 1),
        )
        if any(_gap(box, other) < 4 for other in others):
            return None
        region = canvas[rows, cols]
        colour = _distant_colour(rng, region[mask].mean(axis=0))
        paint = np.broadcast_to(colour, region.shape).copy()
        if CLASSES[cls] == "checker":
            cell = 0.4 * radius
            second = _distant_colour(rng, colour, 110.0)
            odd = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 1
            paint[odd] = second
        paint += rng.normal(0, 6, region.shape)
        region[mask] = paint[mask]
        return box


def to_tensor(pixels: np.ndarray | Image.Image, config: PreprocessConfig = SYNTHETIC_PREPROCESS) -> torch.Tensor:
    """(H, W, 3) uint8 pixels -> the normalised (3, H, W) float32 tensor the synthetic CNN reads."""
    array = np.asarray(pixels, dtype=np.float32) / np.float32(255)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1)))


def target_distribution(objects: tuple[tuple[int, Box], ...], num_classes: int = len(CLASSES)) -> torch.Tensor:
    """The training target: probability 1 / n on each of the n classes present."""
    target = torch.zeros(num_classes)
    for cls, _ in objects:
        target[cls] = 1.0
    return target / target.sum()


# ------------------------------------------------------------------------------------------- model


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SyntheticCNN(nn.Module):
    """Seven 3x3 conv + BN + ReLU blocks (strides 2, 1, 2, 1, 2, 1, 1: 112 -> 14), then GAP + linear.

    ``features`` (the last block's output, 96 x 14 x 14, receptive field 59 px) is the layer Grad-CAM
    and CAM use; ``fc`` reads its channel means, so Grad-CAM equals CAM up to a constant here.
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        widths = ((3, 16, 2), (16, 24, 1), (24, 32, 2), (32, 48, 1), (48, 64, 2), (64, 64, 1), (64, 96, 1))
        self.features = nn.Sequential(*(m for cin, cout, s in widths for m in _block(cin, cout, s)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _weights_resource(name: str) -> Any:
    return resources.files("gradcam.evaluation").joinpath("weights", name)


def weights_path() -> Path:
    """Where the shipped weights of the synthetic CNN live (inside the installed package)."""
    return Path(str(_weights_resource(WEIGHTS_NAME)))


@cache
def training_record() -> dict[str, Any]:
    """What ``scripts/train_synthetic.py`` recorded when it made the shipped weights (seed, steps, accuracy)."""
    return json.loads(_weights_resource(RECORD_NAME).read_text(encoding="utf-8"))


def load_synthetic_model(device: str | torch.device = "cpu"):
    """The trained synthetic CNN as a :class:`~gradcam.models.LoadedModel` (eval mode, labels = CLASSES).

    Also usable as a model spec: ``gradcam evaluate ... --model gradcam.evaluation.synthetic:load_synthetic_model``.
    """
    from ..models import LoadedModel, ModelLoadError, load_state_dict_file

    model = SyntheticCNN()
    path = weights_path()
    if not path.is_file():
        raise ModelLoadError(
            f"the synthetic CNN's weights are missing ({path}); reinstall gradcam or run scripts/train_synthetic.py"
        )
    model.load_state_dict(load_state_dict_file(path))
    return LoadedModel(
        model=model.to(device).eval(),
        name="synthetic-cnn",
        preprocess=SYNTHETIC_PREPROCESS,
        labels=list(CLASSES),
        default_layer=DEFAULT_LAYER,
    )


def synthetic_items(count: int, seed: int = EVAL_SEED, **options: Any) -> list:
    """``count`` generated images as :class:`~.datasets.AnnotatedImage` (names ``synthetic_<seed>_<i>``),
    the form :func:`~.runner.evaluate` takes; ``options`` go to :class:`SyntheticShapes`."""
    from .datasets import AnnotatedImage

    shapes = SyntheticShapes(count, seed, **options)
    items = []
    for index in range(count):
        sample = shapes[index]
        items.append(
            AnnotatedImage(
                name=f"synthetic_{seed}_{index:05d}",
                objects=sample.objects,
                image=sample.image,
                annotated_size=(shapes.size, shapes.size),
            )
        )
    return items
