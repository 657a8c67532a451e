"""Drawing: colormaps, heatmap overlays, gradient images, panels, boxes and contours (numpy/PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .geometry import Geometry

ArrayLike: TypeAlias = np.ndarray | torch.Tensor
Color: TypeAlias = tuple[int, int, int]

# matplotlib's ``jet`` segmentdata: per channel, (x, value) breakpoints of a piecewise-linear function.
_JET_SEGMENTS: dict[str, tuple[tuple[float, float], ...]] = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}

# Control points of the 256-entry tables of viridis, inferno (CC0, van der Walt & Smith) and turbo
# (Apache-2.0, Google): entries 0, 4, ..., 252 and 255 as 8-bit RGB hex. Linear interpolation between
# them reproduces the full tables to within 1/255 per channel.
_CONTROL_POINT_INDICES = np.r_[np.arange(0, 256, 4), 255]
_CONTROL_POINTS_HEX: dict[str, str] = {
    "viridis": (
        "44015446075a470d6047136548186a481d6f482374482878472d7b46327e453781443b844240864045883e49893d4e8a"
        "3b528b39568c375b8d355f8d33638d31678e2f6b8e2e6f8e2c728e2a768e297a8e277e8e26828e25858e23898e228d8d"
        "21918c1f948c1f988b1e9c891fa08820a38622a78525ab8228ae802db27d32b67a38b9773fbc7346c06f4ec36b56c667"
        "5ec96267cc5c70cf577ad15184d44b8ed64598d83ea2da37addc30b8de29c2df23cde11dd8e219e2e418ece51bf6e620"
        "fde725"
    ),
    "inferno": (
        "00000402010a04031207051b0b072410092d150b371b0c41210c4a280b532f0a5b3609613d0965440a684a0c6b510e6c"
        "57106e5d126e64156e6a176e71196e771c6d7d1e6d84206b8a226a9025689727669d2964a32c61a92e5eb0315bb63458"
        "bc3754c13a50c73e4ccc4248d24644d74b3fdb503be05536e45a31e8602deb6628ef6c23f1731df47918f68013f8870e"
        "f98e09fb9606fb9d07fca50afcac11fcb418fbbc21fac42af9cb35f7d340f5db4cf3e35af2ea69f1f179f3f68af8fb9a"
        "fcffa4"
    ),
    "turbo": (
        "30123b351e58392a733d358b4040a2424bb54456c74661d6466be34776ee4680f6458afc4294ff3d9efe37a8fa2fb2f4"
        "28bceb22c5e21ccdd819d5cd18ddc219e3b91fe9af27eea432f2983ff68a4ef97d5dfc6f6dfe627dff568bff4b99fe42"
        "a4fc3caffa37b9f635c3f134cdec34d7e535dfdf37e7d739eecf3af4c73af8be39fbb637fdac34fea130fe962bfd8a26"
        "fb7e21f8721cf46617f05b12eb500ee5470bdf3f08d83706d02f05c82803be2102b41b01a916019e1001920b01850702"
        "7a0403"
    ),
}

_COLORMAP_NAMES = ("gray", "inferno", "jet", "turbo", "viridis")


def available_colormaps() -> tuple[str, ...]:
    """Names accepted by :func:`colormap`."""
    return _COLORMAP_NAMES


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half up (``floor(v + 0.5)``) and clip to [0, 255]."""
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) + 0.5), 0, 255).astype(np.uint8)


@cache
def _colormap_cached(name: str) -> np.ndarray:
    positions = np.arange(256, dtype=np.float64)
    if name == "gray":
        lut = np.repeat(positions[:, None], 3, axis=1)
    elif name == "jet":
        x = positions / 255.0
        lut = (
            np.stack(
                [np.interp(x, *zip(*_JET_SEGMENTS[channel])) for channel in ("red", "green", "blue")], axis=1
            )
            * 255.0
        )
    else:
        raw = bytes.fromhex(_CONTROL_POINTS_HEX[name])
        points = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.float64)
        lut = np.stack([np.interp(positions, _CONTROL_POINT_INDICES, points[:, c]) for c in range(3)], axis=1)
    table = _round_to_uint8(lut)
    table.setflags(write=False)
    return table


def colormap(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table; entry ``i`` is the colour of value ``i / 255``.

    'jet' is matplotlib's piecewise-linear segmentdata evaluated exactly; 'viridis', 'inferno' and
    'turbo' interpolate embedded control points (within 1/255 of matplotlib); 'gray' is ``(i, i, i)``.
    Unknown names raise ValueError listing the available ones. The returned array is read-only.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _COLORMAP_NAMES:
        raise ValueError(f"unknown colormap {name!r}; available: {', '.join(_COLORMAP_NAMES)}")
    return _colormap_cached(key)


def _to_numpy_2d(values: ArrayLike, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what} must have shape (H, W), got {array.shape}")
    return array


def _heatmap_indices(heatmap: ArrayLike) -> np.ndarray:
    """LUT indices ``round(clip(v, 0, 1) * 255)`` with NaN -> 0 (and -inf -> 0, +inf -> 255)."""
    values = np.fmax(_to_numpy_2d(heatmap, "heatmap"), 0.0)  # a new array; fmax(NaN, 0) = 0
    np.fmin(values, 1.0, out=values)
    values *= 255.0
    values += 0.5
    return np.floor(values, out=values).astype(np.uint8)  # in [0, 255]: floor(v * 255 + 0.5), in place


def apply_colormap(heatmap: ArrayLike, name: str = "jet") -> Image.Image:
    """Colour an (H, W) heatmap in [0, 1] (clipped; NaN -> 0): pixel = LUT[round(v * 255)]."""
    lut = colormap(name)
    return Image.fromarray(lut[_heatmap_indices(heatmap)], "RGB")


def overlay(
    image: Image.Image,
    heatmap: ArrayLike,
    alpha: float = 0.5,
    colormap: str = "jet",
    geometry: Geometry | None = None,
) -> Image.Image:
    """Blend a coloured heatmap over an image: ``out = round((1 - alpha) * image + alpha * colour)``.

    ``heatmap`` (H, W) matches the image size (W, H), or, with ``geometry`` (the :class:`Geometry` of the
    preprocessing that made the network input from this image), is a map in the network's frame at any
    resolution (``Explanation.heatmap[b]``, ``Explanation.raw[b]``), first mapped back by
    ``geometry.to_original``. ``alpha`` must lie in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if geometry is not None:
        if geometry.original_size != image.size:
            raise ValueError(
                f"geometry is of a {geometry.original_size[0]}x{geometry.original_size[1]} image but the image is "
                f"{image.width}x{image.height}: pass the image the network input was made from"
            )
        maps = heatmap if isinstance(heatmap, torch.Tensor) else torch.as_tensor(np.asarray(heatmap))
        heatmap = geometry.to_original(maps.detach().cpu())
    values = _to_numpy_2d(heatmap, "heatmap")
    if values.shape != (image.height, image.width):
        raise ValueError(
            f"heatmap size {values.shape[1]}x{values.shape[0]} (WxH) does not match "
            f"image size {image.width}x{image.height}; for a map in the network's frame pass geometry= (the "
            "Geometry from preprocess / Geometry.from_transforms), which maps it back with geometry.to_original"
        )
    base = np.asarray(image.convert("RGB"), dtype=np.uint8)
    table = _blend_table(float(alpha), colormap.lower() if isinstance(colormap, str) else colormap)
    heat = _heatmap_indices(values).astype(np.uint16)
    out = np.empty_like(base)
    for c in range(3):  # pixel (base value b, heatmap index i) of channel c -> table[c, b * 256 + i]
        out[..., c] = table[c][(base[..., c].astype(np.uint16) << 8) | heat]
    return Image.fromarray(out, "RGB")


@cache
def _blend_table(alpha: float, name: str) -> np.ndarray:
    """(3, 256 * 256) uint8: ``round((1 - alpha) * b + alpha * LUT[i][c])`` for every base value b and
    heatmap index i, computed once in float64, so a blend is one table look-up per channel (exactly
    the float64 formula, in a fraction of its time)."""
    lut = colormap(name).astype(np.float64)  # (256, 3)
    b = np.arange(256, dtype=np.float64)[:, None, None]
    table = _round_to_uint8((1.0 - alpha) * b + alpha * lut[None, :, :])  # (b, i, c)
    table = np.ascontiguousarray(table.transpose(2, 0, 1).reshape(3, -1))
    table.setflags(write=False)
    return table


def gradient_image(grad: ArrayLike, eps: float = 1e-5) -> Image.Image:
    """Display a (C, H, W) input-space gradient (C = 1 or 3) as an RGB image, as in the Grad-CAM papers.

    ``g = clip((g - mean(g)) / (std(g) + eps) * 0.1 + 0.5, 0, 1)`` over the whole image (population std,
    NaN -> 0), then ``round(g * 255)``. An all-zero gradient gives uniform gray 128.
    """
    if isinstance(grad, torch.Tensor):
        grad = grad.detach().to("cpu", torch.float64).numpy()
    values = np.nan_to_num(np.asarray(grad, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.ndim != 3 or values.shape[0] not in (1, 3):
        raise ValueError(f"gradient must have shape (C, H, W) with C in (1, 3), got {values.shape}")
    centred = values - values.mean()
    scaled = np.clip(centred / (centred.std() + eps) * 0.1 + 0.5, 0.0, 1.0)
    pixels = _round_to_uint8(scaled * 255.0).transpose(1, 2, 0)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _text_size(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _fit_text(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, max_width: int
) -> str:
    """Shorten ``text`` with a trailing '...' until it fits ``max_width`` pixels."""
    if _text_size(draw, text, font)[0] <= max_width:
        return text
    while text and _text_size(draw, text + "...", font)[0] > max_width:
        text = text[:-1]
    return text + "..." if text else ""


def caption_height(pad: int = 4) -> int:
    """Height of the caption strip :func:`panel` puts above each tile: text line height + 2 * pad."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, _, _, bottom = probe.textbbox((0, 0), "Ag", font=font)
    return int(bottom) + 2 * pad


def panel(
    tiles: Sequence[Image.Image],
    titles: Sequence[str] | None = None,
    tile_height: int | None = None,
    pad: int = 4,
) -> Image.Image:
    """Lay tiles side by side on white, each scaled (aspect kept) to ``tile_height`` (default: tallest).

    Layout: ``width = sum(scaled tile widths) + pad * (n + 1)``;
    ``height = tile_height + 2 * pad (+ caption_height(pad) when titles are given)``. Each title is drawn
    in a caption strip above its tile with PIL's default font, shortened with '...' if too wide.
    """
    if not tiles:
        raise ValueError("panel needs at least one tile")
    if titles is not None and len(titles) != len(tiles):
        raise ValueError(f"got {len(titles)} titles for {len(tiles)} tiles")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    height = int(tile_height) if tile_height is not None else max(tile.height for tile in tiles)
    if height <= 0:
        raise ValueError(f"tile_height must be positive, got {height}")
    scaled = []
    for tile in tiles:
        width = max(1, round(tile.width * height / tile.height))
        tile = tile.convert("RGB")
        scaled.append(
            tile if tile.size == (width, height) else tile.resize((width, height), Image.Resampling.BILINEAR)
        )
    caption = caption_height(pad) if titles is not None else 0
    canvas = Image.new(
        "RGB", (sum(t.width for t in scaled) + pad * (len(scaled) + 1), height + caption + 2 * pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = pad
    for index, tile in enumerate(scaled):
        canvas.paste(tile, (x, pad + caption))
        if titles is not None:
            text = _fit_text(draw, str(titles[index]), font, tile.width)
            text_width = _text_size(draw, text, font)[0]
            draw.text((x + (tile.width - text_width) // 2, pad), text, fill=(0, 0, 0), font=font)
        x += tile.width + pad
    return canvas


def draw_box(
    image: Image.Image,
    box: Sequence[float],
    color: Color = (0, 255, 0),
    width: int = 3,
    label: str | None = None,
) -> Image.Image:
    """Return an RGB copy with the box outlined; ``box`` = (x0, y0, x1, y1) in continuous pixel coords.

    The outline covers pixels ``round(x0) .. round(x1) - 1`` (and the same for y), drawn ``width``
    pixels inwards. ``label`` is written on a filled strip of ``color`` above the box (inside if no room).
    """
    out = image.convert("RGB")  # convert() returns a copy even for RGB input
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    draw = ImageDraw.Draw(out)
    if x1 > x0 and y1 > y0:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=tuple(color), width=max(1, int(width)))
    if label:
        font = ImageFont.load_default()
        text_w, text_h = _text_size(draw, label, font)
        strip_h = text_h + 4
        top = y0 - strip_h if y0 - strip_h >= 0 else y0
        draw.rectangle((x0, top, x0 + text_w + 4, top + strip_h - 1), fill=tuple(color))
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        draw.text((x0 + 2, top + 1), label, fill=text_color, font=font)
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; pixels outside the image count as background."""
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def mask_outline(mask: ArrayLike, width: int = 1) -> np.ndarray:
    """Inner boundary of a boolean (H, W) mask, ``width`` pixels thick: ``mask & ~erode^width(mask)``."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    region = np.asarray(mask).astype(bool)
    if region.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {region.shape}")
    eroded = region
    for _ in range(max(1, int(width))):
        eroded = _erode(eroded)
    return region & ~eroded


def draw_contour(
    image: Image.Image, mask: ArrayLike, color: Color = (255, 255, 255), width: int = 1
) -> Image.Image:
    """Return an RGB copy with the outline of ``mask`` (see :func:`mask_outline`) painted in ``color``."""
    outline = mask_outline(mask, width)
    if outline.shape != (image.height, image.width):
        raise ValueError(
            f"mask size {outline.shape[1]}x{outline.shape[0]} (WxH) does not match "
            f"image size {image.width}x{image.height}"
        )
    pixels = np.array(image.convert("RGB"), dtype=np.uint8)
    pixels[outline] = np.asarray(color, dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")
