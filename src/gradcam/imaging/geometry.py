"""Preprocessing that remembers its geometry, and the inverse map back to original pixels.

Coordinate convention (used by every function here): continuous pixel coordinates, where pixel ``i``
covers ``[i, i + 1)``, so its centre is ``i + 0.5`` and an image of width ``W`` spans ``[0, W]``.
With this convention a resize by factor ``s`` is exactly ``x -> x * s`` — the same convention as
``torch.nn.functional.interpolate(..., align_corners=False)`` — and a crop at ``left`` is ``x -> x - left``.

Three frames are involved: the *original* image (W0 x H0), the *resized* image (W1 x H1, shorter side
= ``resize_size``) and the *input* frame (the centre crop fed to the network, ``input_size``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input: resize the shorter side, centre-crop a square, normalise.

    ``resize_size`` is the shorter side after resizing; ``input_size`` the side of the centre crop
    (``crop_pct = input_size / resize_size``). ``mean``/``std`` are per-channel, in [0, 1] units.
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @property
    def crop_pct(self) -> float:
        """Fraction of the resized shorter side kept by the centre crop: ``input_size / resize_size``."""
        return self.input_size / self.resize_size

    @property
    def pil_resample(self) -> Image.Resampling:
        """The PIL resampling filter named by ``interpolation`` (ValueError for an unknown name)."""
        return resample_filter(self.interpolation)

    def geometry(self, size: tuple[int, int]) -> Geometry:
        """The Geometry of an image of ``size`` (W0, H0): resized and centre-cropped (:func:`compute_geometry`)."""
        return compute_geometry(size, self)


_RESAMPLE_BY_NAME: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resample_filter(name: str) -> Image.Resampling:
    """Map 'nearest' | 'bilinear' | 'bicubic' to the PIL filter torchvision uses for that mode."""
    try:
        return _RESAMPLE_BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; expected one of {sorted(_RESAMPLE_BY_NAME)}") from None


Box: TypeAlias = tuple[float, float, float, float]
_GEOMETRY_LENGTHS = {"original_size": 2, "resized_size": 2, "crop_box": 4, "input_size": 2}


@dataclass(frozen=True)
class Geometry:
    """Where the network input came from in the original image.

    ``original_size`` (W0, H0), ``resized_size`` (W1, H1) and ``input_size`` (W, H) are (width, height);
    ``crop_box`` is (left, top, right, bottom) in the resized frame, right/bottom exclusive. The crop may
    extend past the resized frame (when ``input_size > resize_size``); that part was zero padding.

    Frame maps (continuous coordinates, see the module docstring)::

        x_resized  = left + x_input * crop_width / input_width
        x_original = x_resized * W0 / W1
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    input_size: tuple[int, int]

    def to_json(self) -> dict[str, list[int]]:
        """The four fields as lists (for ``item.json``); :meth:`from_json` reads them back."""
        return {name: list(getattr(self, name)) for name in _GEOMETRY_LENGTHS}

    @classmethod
    def from_json(cls, data: dict[str, Sequence[int]]) -> Geometry:
        """The Geometry :meth:`to_json` wrote (ValueError naming what is missing or malformed)."""
        try:
            geometry = cls(**{name: tuple(int(v) for v in data[name]) for name in _GEOMETRY_LENGTHS})
        except (KeyError, TypeError, ValueError) as error:
            needs = ", ".join(_GEOMETRY_LENGTHS)
            raise ValueError(f"a geometry needs {needs} as integer lists; got {data!r}") from error
        for name, length in _GEOMETRY_LENGTHS.items():
            if len(getattr(geometry, name)) != length:
                raise ValueError(f"geometry {name} needs {length} integers; got {data[name]!r}")
        return geometry

    @classmethod
    def from_transforms(cls, transform: object, image_size: tuple[int, int]) -> Geometry:
        """The Geometry of the user's torchvision preprocessing applied to an image of ``image_size`` (W0, H0).

        ``transform``: a ``Compose`` (``torchvision.transforms`` or ``.v2``) or a single transform made of at
        most one ``Resize`` (an int: the shorter side, with ``max_size``; or ``(h, w)``) followed by at most
        one ``CenterCrop``. Steps that do not move pixels (``ToTensor``, ``PILToTensor``, ``ToImage``,
        ``ToDtype``, ``ConvertImageDtype``, ``Normalize``, ``Lambda``-free colour steps) are skipped; any other
        step (random crops, flips, padding, a crop before a resize) is an error naming it, since the maps
        could not be mapped back exactly.
        """
        return geometry_from_transforms(transform, image_size)

    @property
    def crop_size(self) -> tuple[int, int]:
        """(width, height) of the crop box in the resized frame."""
        left, top, right, bottom = self.crop_box
        return right - left, bottom - top

    def _input_to_original_affine(self) -> tuple[float, float, float, float]:
        """(scale_x, offset_x, scale_y, offset_y) with ``x_original = scale_x * x_input + offset_x``."""
        (w0, h0), (w1, h1) = self.original_size, self.resized_size
        left, top, _, _ = self.crop_box
        crop_w, crop_h = self.crop_size
        in_w, in_h = self.input_size
        resized_to_original_x, resized_to_original_y = w0 / w1, h0 / h1
        return (
            crop_w / in_w * resized_to_original_x,
            left * resized_to_original_x,
            crop_h / in_h * resized_to_original_y,
            top * resized_to_original_y,
        )

    def point_to_original(self, x: float, y: float) -> tuple[float, float]:
        """Input-frame point (continuous coords) -> original-image point."""
        sx, ox, sy, oy = self._input_to_original_affine()
        return sx * x + ox, sy * y + oy

    def point_from_original(self, x: float, y: float) -> tuple[float, float]:
        """Original-image point -> input-frame point (inverse of :meth:`point_to_original`)."""
        sx, ox, sy, oy = self._input_to_original_affine()
        return (x - ox) / sx, (y - oy) / sy

    def box_to_original(self, box: Sequence[float]) -> Box:
        """Input-frame box (x0, y0, x1, y1) -> original-image box; e.g. the full input maps to the crop."""
        x0, y0, x1, y1 = box
        ax, ay = self.point_to_original(x0, y0)
        bx, by = self.point_to_original(x1, y1)
        return ax, ay, bx, by

    def box_from_original(self, box: Sequence[float]) -> Box:
        """Original-image box (x0, y0, x1, y1) -> input-frame box (may lie partly outside the input)."""
        x0, y0, x1, y1 = box
        ax, ay = self.point_from_original(x0, y0)
        bx, by = self.point_from_original(x1, y1)
        return ax, ay, bx, by

    def to_original(self, maps: torch.Tensor) -> torch.Tensor:
        """Map ``(..., h, w)`` maps defined on the input frame to ``(..., H0, W0)`` on the original image.

        The maps may have any resolution (e.g. a 7x7 layer map) and any leading dims. Steps: bilinear
        resize (align_corners=False) to the crop's size, paste into a zero canvas of the resized frame
        (zero outside the crop), bilinear resize to the original size. Float dtype and device are kept
        (integer input becomes float32).
        """
        if maps.dim() < 2:
            raise ValueError(f"maps must have shape (..., h, w), got {tuple(maps.shape)}")
        if not maps.is_floating_point():
            maps = maps.float()
        leading = maps.shape[:-2]
        flat = maps.reshape(-1, 1, *maps.shape[-2:])
        crop_w, crop_h = self.crop_size
        crop = _resize_bilinear(flat, crop_h, crop_w)

        (w1, h1), (w0, h0) = self.resized_size, self.original_size
        if w1 * h1 > FULL_FRAME_PIXELS:  # e.g. a 1 x 40000 strip: sample the crop, never build the frame
            left, top, _, _ = self.crop_box
            xs = ((torch.arange(w0, dtype=torch.float64) + 0.5) * (w1 / w0) - 0.5).clamp(min=0) - left
            ys = ((torch.arange(h0, dtype=torch.float64) + 0.5) * (h1 / h0) - 0.5).clamp(min=0) - top
            original = _sample(crop, xs, ys, "bilinear", "zeros")
            return original.reshape(*leading, h0, w0)
        left, top, right, bottom = self.crop_box
        canvas = flat.new_zeros(flat.shape[0], 1, h1, w1)
        # Intersection of the crop with the resized frame (the crop may overhang when it was padded).
        dst_x0, dst_y0 = max(left, 0), max(top, 0)
        dst_x1, dst_y1 = min(right, w1), min(bottom, h1)
        if dst_x1 > dst_x0 and dst_y1 > dst_y0:
            canvas[..., dst_y0:dst_y1, dst_x0:dst_x1] = crop[
                ..., dst_y0 - top : dst_y1 - top, dst_x0 - left : dst_x1 - left
            ]
        original = _resize_bilinear(canvas, h0, w0)
        return original.reshape(*leading, h0, w0)

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-friendly form; :meth:`from_dict` inverts it."""
        return {
            "original_size": list(self.original_size),
            "resized_size": list(self.resized_size),
            "crop_box": list(self.crop_box),
            "input_size": list(self.input_size),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[int]]) -> Geometry:
        """Rebuild a Geometry written by :meth:`to_dict`."""
        o, r, c, i = (data[k] for k in ("original_size", "resized_size", "crop_box", "input_size"))
        return cls(
            original_size=(int(o[0]), int(o[1])),
            resized_size=(int(r[0]), int(r[1])),
            crop_box=(int(c[0]), int(c[1]), int(c[2]), int(c[3])),
            input_size=(int(i[0]), int(i[1])),
        )


#: A resized frame of more pixels than this (an image far longer than wide whose short side is enlarged)
#: is never built: :func:`resized_crop` samples the crop's pixels from the original and
#: :meth:`Geometry.to_original` the original's pixels from the crop, so the work is bounded by the
#: sizes of the crop and the original (a 1 x 40000 strip would otherwise resize to 256 x 10240000).
FULL_FRAME_PIXELS = 1 << 24


def _sample(
    images: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, mode: str, padding: str
) -> torch.Tensor:
    """``images`` (N, C, h, w) sampled at the pixel-centre coordinates ``xs`` (columns) x ``ys`` (rows),
    float64 positions in the images' pixel frame (pixel ``i``'s centre at ``i``): (N, C, len(ys),
    len(xs)) float32 (``grid_sample``, align_corners=False; ``padding`` outside the images). Only the
    window of rows and columns the positions reach is read."""
    x0 = int(max(0, min(images.shape[-1] - 1, float(xs.min()) - 2)))
    x1 = int(max(x0 + 1, min(images.shape[-1], float(xs.max()) + 3)))
    y0 = int(max(0, min(images.shape[-2] - 1, float(ys.min()) - 2)))
    y1 = int(max(y0 + 1, min(images.shape[-2], float(ys.max()) + 3)))
    window = images[..., y0:y1, x0:x1].float()
    gx = (2 * (xs - x0) + 1) / (x1 - x0) - 1
    gy = (2 * (ys - y0) + 1) / (y1 - y0) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).to(window)
    grid = grid.expand(images.shape[0], *grid.shape)
    return F.grid_sample(window, grid, mode=mode, padding_mode=padding, align_corners=False)


def _sampled_crop(pixels: torch.Tensor, geometry: Geometry, interpolation: str) -> torch.Tensor:
    """:func:`resized_crop` without the resized frame: each crop pixel sampled from the original at its
    centre's position (:data:`FULL_FRAME_PIXELS`); uint8 (3, h, w), zero where the crop overhangs."""
    (w0, h0), (w1, h1) = geometry.original_size, geometry.resized_size
    left, top, right, bottom = geometry.crop_box
    xs = (torch.arange(left, right, dtype=torch.float64) + 0.5) * (w0 / w1) - 0.5
    ys = (torch.arange(top, bottom, dtype=torch.float64) + 0.5) * (h0 / h1) - 0.5
    mode = "bicubic" if interpolation == "bicubic" else "bilinear" if interpolation == "bilinear" else "nearest"
    sampled = _sample(pixels[None], xs, ys, mode, "border")[0]
    inside_x = (torch.arange(left, right) >= 0) & (torch.arange(left, right) < w1)
    inside_y = (torch.arange(top, bottom) >= 0) & (torch.arange(top, bottom) < h1)
    sampled = sampled * (inside_y[:, None] & inside_x[None, :])
    return sampled.round().clamp(0, 255).to(torch.uint8)


def _resize_bilinear(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) with align_corners=False; identity when the size already matches."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)


def resized_size_for(original_size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """(W1, H1) after resizing the shorter side to ``shorter_side``, as torchvision's Resize(int) does.

    The longer side is ``int(shorter_side * long / short)`` (truncated, like torchvision).
    """
    width, height = original_size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shorter_side, int(shorter_side * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(size: tuple[int, int], crop_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's CenterCrop of ``crop_size`` (W, H) in an image of ``size``.

    Offset is ``int(round((size - crop) / 2))`` (Python's round, half to even); when the crop is larger
    than the image torchvision pads ``(crop - size) // 2`` on the left/top, i.e. a negative offset.
    """
    (width, height), (crop_w, crop_h) = size, crop_size

    def offset(extent: int, crop: int) -> int:
        if crop > extent:
            return -((crop - extent) // 2)
        return round((extent - crop) / 2.0)  # Python round: half to even, as torchvision

    left, top = offset(width, crop_w), offset(height, crop_h)
    return left, top, left + crop_w, top + crop_h


def compute_geometry(original_size: tuple[int, int], config: PreprocessConfig) -> Geometry:
    """The Geometry :func:`preprocess` produces for an image of ``original_size`` (W0, H0)."""
    width, height = original_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    resized = resized_size_for(original_size, config.resize_size)
    input_size = (config.input_size, config.input_size)
    return Geometry(
        original_size=(width, height),
        resized_size=resized,
        crop_box=center_crop_box(resized, input_size),
        input_size=input_size,
    )


def resized_crop(pixels: torch.Tensor, geometry: Geometry, interpolation: str) -> torch.Tensor:
    """uint8 (3, H0, W0) ``pixels`` resized to ``geometry.resized_size`` and cropped to
    ``geometry.crop_box``: uint8 (3, h, w).

    Bilinear and bicubic use torch's antialiased uint8 kernels, the filters of PIL's resize (bicubic
    with a = -0.5, support scaled by the downscale factor) that torchvision's ``Resize`` uses on a PIL
    image: a value may differ from PIL's by one 8-bit level (about 1 % of values do), at ~2.6 x its
    speed. Nearest goes through PIL itself (exact). An overhanging crop is zero padding, as torchvision's.
    A resized frame of more than :data:`FULL_FRAME_PIXELS` is not built: the crop's pixels are sampled
    from the original (``grid_sample``: bilinear within one level of the resize, bicubic with its
    a = -0.75), so the work is bounded by the crop's size.
    """
    left, top, right, bottom = geometry.crop_box
    width, height = geometry.resized_size
    if width * height > FULL_FRAME_PIXELS:
        return _sampled_crop(pixels, geometry, interpolation)
    if interpolation == "nearest":
        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        cropped = image.resize(geometry.resized_size, Image.Resampling.NEAREST).crop(geometry.crop_box)
        return torch.from_numpy(np.array(cropped, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    resized = pixels.unsqueeze(0)
    if (width, height) != geometry.original_size:
        resized = F.interpolate(resized, size=(height, width), mode=interpolation, antialias=True)
    inside = resized[0, :, max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    if left >= 0 and top >= 0 and right <= width and bottom <= height:
        return inside.contiguous()
    crop_w, crop_h = geometry.crop_size
    canvas = inside.new_zeros(3, crop_h, crop_w)
    canvas[:, max(top, 0) - top : min(bottom, height) - top, max(left, 0) - left : min(right, width) - left] = inside
    return canvas


def image_pixels(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A PIL image (any mode, converted to RGB) or uint8 (3, H, W) RGB pixels as uint8 (3, H, W)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image pixels must be a uint8 (3, H, W) RGB tensor; got {image.dtype} {tuple(image.shape)}"
            )
        return image
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # an (H, W, 3) buffer


def preprocess(image: Image.Image | torch.Tensor, config: PreprocessConfig) -> tuple[torch.Tensor, Geometry]:
    """A PIL image, or uint8 (3, H, W) RGB pixels -> normalised float32 CHW tensor and its Geometry.

    torchvision's ``Resize(resize_size, interpolation) + CenterCrop(input_size) + ToTensor() +
    Normalize(mean, std)`` on a PIL image, ``x = (pixel / 255 - mean) / std``, with the resampling of
    :func:`resized_crop` (within one 8-bit level of PIL's; the geometry is identical). Non-RGB images
    are converted to RGB first.
    """
    pixels = image_pixels(image)
    geometry = compute_geometry((pixels.shape[2], pixels.shape[1]), config)
    return normalized_crop(pixels, geometry, config), geometry


def normalized_crop(pixels: torch.Tensor, geometry: Geometry, config: PreprocessConfig) -> torch.Tensor:
    """The model input for uint8 (3, H0, W0) ``pixels`` laid out by ``geometry``: :func:`resized_crop`
    with ``config.interpolation``, then :func:`normalize_pixels`."""
    interpolation = config.pil_resample.name.lower()  # a clear error for an unknown name
    return normalize_pixels(resized_crop(pixels, geometry, interpolation), config)


def normalize_pixels(pixels: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 (3, h, w) or (B, 3, h, w) RGB pixels -> float32 ``x = (pixel / 255 - mean) / std`` per
    channel, on the pixels' device. The same operations in the same order for one image or a batch,
    so a batch normalised at once equals its images normalised one by one, bit for bit."""
    mean, std = _per_channel(tuple(config.mean), pixels.device), _per_channel(tuple(config.std), pixels.device)
    return pixels.to(torch.float32).div(255).sub(mean).div(std)


@functools.lru_cache(maxsize=32)
def _per_channel(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a float32 (C, 1, 1) tensor on ``device``, made once: a new one per batch would be
    a copy from pageable host memory, which may wait for the device's queue."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


def preprocess_batch(images: Sequence[Image.Image], config: PreprocessConfig) -> tuple[torch.Tensor, list[Geometry]]:
    """Preprocess each image (see :func:`preprocess`) and stack into a (B, 3, H, W) tensor."""
    if len(images) == 0:
        raise ValueError("preprocess_batch needs at least one image")
    tensors, geometries = zip(*(preprocess(image, config) for image in images))
    return torch.stack(tensors), list(geometries)


_PIXEL_PRESERVING = {
    "ToTensor", "PILToTensor", "ToImage", "ToPureTensor", "ToDtype", "ConvertImageDtype", "Normalize",
    "ColorJitter", "Grayscale", "RGB", "ConvertImageMode",
}  # fmt: skip


def _size_pair(size: object, what: str) -> tuple[int, int] | int:
    """A Resize / CenterCrop size as an int (shorter side) or an (h, w) pair."""
    if isinstance(size, int):
        return size
    values = list(size) if isinstance(size, (tuple, list)) else None
    if values is not None and len(values) == 1:
        return int(values[0])
    if values is not None and len(values) == 2:
        return int(values[0]), int(values[1])
    raise ValueError(f"{what} size must be an int or (h, w); got {size!r}")


def resized_size_torchvision(
    original_size: tuple[int, int], size: int | tuple[int, int], max_size: int | None
) -> tuple[int, int]:
    """(W1, H1) of torchvision's ``Resize(size, max_size=max_size)`` on an image of ``original_size`` (W0, H0)."""
    if not isinstance(size, int):
        height, width = size
        return width, height
    resized = resized_size_for(original_size, size)
    if max_size is not None and max(resized) > max_size:
        if max_size <= size:
            raise ValueError(f"Resize max_size ({max_size}) must be larger than its size ({size})")
        long, short = max(resized), min(resized)
        short = int(max_size * short / long)
        resized = (max_size, short) if resized[0] >= resized[1] else (short, max_size)
    return resized


def geometry_from_transforms(transform: object, image_size: tuple[int, int]) -> Geometry:
    """See :meth:`Geometry.from_transforms`."""
    steps = list(getattr(transform, "transforms", [transform]))
    width, height = (int(v) for v in image_size)
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be a positive (width, height); got {image_size!r}")
    resized: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    for step in steps:
        kind = type(step).__name__
        if kind == "Resize" and resized is None and crop is None:
            resized = resized_size_torchvision((width, height), _size_pair(step.size, "Resize"), step.max_size)
        elif kind == "CenterCrop" and crop is None:
            size = _size_pair(step.size, "CenterCrop")
            crop = (size, size) if isinstance(size, int) else (size[1], size[0])
        elif kind not in _PIXEL_PRESERVING:
            raise ValueError(
                f"cannot map maps back through {kind}: Geometry.from_transforms understands one Resize followed "
                "by one CenterCrop (and steps that keep pixels in place, e.g. ToTensor, Normalize); explain the "
                "image after those alone, or build the Geometry by hand"
            )
    resized = resized or (width, height)
    crop = crop or resized
    return Geometry((width, height), resized, center_crop_box(resized, crop), crop)
