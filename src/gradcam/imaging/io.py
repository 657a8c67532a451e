"""Reading images robustly, finding image files, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import glob
import importlib
import io
import json
import logging
import mmap
import os
import stat
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .geometry import image_pixels

logger = logging.getLogger("gradcam")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
#: The raster formats PIL may open (README: JPEG, PNG, BMP, GIF, TIFF, WebP; PIL's JPEG plugin also opens
#: the multi-picture JPEGs many cameras write). Whatever the file's name, any other content (EPS, PDF, ...)
#: is refused unread, so it never reaches a plugin such as PIL's Ghostscript one.
OPEN_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
#: The suffix of this module's temporary files (``.NAME.RANDOM.gradcam-tmp`` next to ``NAME``): a run
#: killed mid-write leaves them; :func:`remove_temp_files` removes them on the next run.
TEMP_SUFFIX = ".gradcam-tmp"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EXIF_ORIENTATION = 0x0112
_XMP_KEYS = ("xmp", "XML:com.adobe.xmp")  # where PIL keeps a JPEG's XMP packet (newer, older releases)


class ImageReadError(ValueError):
    """An image file could not be read; ``path`` is the file, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {str(self.path)!r}: {reason}")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully and return it as an 8-bit RGB PIL image.

    EXIF orientation is applied. Conversions: alpha (RGBA, LA, P with transparency, ...) is composited
    over white, ``out = round((c * a + 255 * (255 - a)) / 255)``; 16-bit (I;16*) is scaled
    ``round(v * 255 / 65535)``; 32-bit ``I`` likewise when its values lie in [0, 65535], else min-max
    scaled; float ``F`` is scaled by 255 when in [0, 1], kept when in [0, 255], else min-max scaled.
    Every failure (missing, not an image, truncated, unsupported mode) raises :class:`ImageReadError`.
    """
    path = Path(path)
    data, _ = read_file(path)
    with _read_errors(path):
        return _decode_with_pil(_open(data), path)


def read_pixels(path: str | os.PathLike[str]) -> torch.Tensor:
    """The pixels of an image file as uint8 (3, H, W) RGB: :func:`load_image`'s image, its rules and errors.

    When TorchCodec is installed (the ``decode`` extra), YCbCr and grayscale JPEGs are decoded by its
    libjpeg-turbo, the library PIL decodes with, with the same IDCT, upsampling and EXIF orientation:
    the same pixels (tested), file to tensor in 1.9 instead of 2.5 ms for a 640 x 480 photo. PIL still
    reads the header first, so the size limits and the errors are PIL's; any other file, or one
    TorchCodec refuses, is decoded by PIL. The result is an (H, W, 3) buffer seen as (3, H, W), as the
    resampling wants it.
    """
    path = Path(path)
    return decode_pixels(read_file(path)[0], path)


def decode_pixels(data: bytes, path: str | os.PathLike[str]) -> torch.Tensor:
    """:func:`read_pixels` of a file's bytes ``data`` (``path`` names it in errors)."""
    path = Path(path)
    with _read_errors(path):
        return _decoded_pixels(data, _open(data), path)


def _open(data: bytes) -> Image.Image:
    """PIL's image of ``data`` (header read, pixels not yet), if it is one of :data:`OPEN_FORMATS`."""
    return Image.open(io.BytesIO(data), formats=OPEN_FORMATS)


def _decoded_pixels(data: bytes, opened: Image.Image, path: Path) -> torch.Tensor:
    """:func:`read_pixels` of a file's ``data``, ``opened`` by PIL (header read, pixels not yet)."""
    decode = _jpeg_decoder()
    if decode is not None and _same_in_torchcodec(opened):
        try:
            return decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB")
        except Exception:  # e.g. a corrupt file: PIL decodes it, or says why it cannot
            pass
    return image_pixels(_decode_with_pil(opened, path))


def read_reduced_pixels(
    path: str | os.PathLike[str], at_least: Callable[[tuple[int, int]], tuple[int, int]]
) -> tuple[torch.Tensor, tuple[int, int], int]:
    """``(pixels, original size, scale)``: a JPEG decoded at 1/``scale`` of its size by libjpeg's DCT
    scaling (PIL's ``draft``), for the largest ``scale`` in 8, 4, 2 whose result is still at least
    ``at_least(original size)`` (W, H) pixels; other files and those that cannot be reduced come from
    :func:`read_pixels` at scale 1. Sizes are upright (EXIF orientation applied), as the pixels are.

    Pixel ``i`` of the result covers the original's pixels ``[scale * i, scale * (i + 1))`` (the last
    may cover fewer), so ``resized_crop(pixels, geometry, ..., scale)`` maps it exactly; for that, a
    side that the orientation flips (where the short block would come first) is reduced only by a
    scale that divides it. A 4032 x 3024 photo decodes in ~17 instead of ~57-82 ms
    (``benchmarks/decode_scale.py``); the values differ from a full decode resized by a few levels:
    the scaled IDCT is a box filter, not the resize's.
    """
    path = Path(path)
    data, _ = read_file(path)
    with _read_errors(path):
        opened = _open(data)
        orientation = _known_orientation(opened)
        if opened.format == "JPEG" and orientation is not None:
            width, height = opened.size
            transposed = orientation in (5, 6, 7, 8)
            need_w, need_h = at_least((height, width) if transposed else (width, height))
            if transposed:
                need_w, need_h = need_h, need_w
            flips_x, flips_y = _FLIPPED_SIDES[orientation]  # of the stored image
            scale = next(
                (
                    s
                    for s in (8, 4, 2)
                    if width // s >= need_w and height // s >= need_h
                    and not (flips_x and width % s) and not (flips_y and height % s)
                ),
                1,
            )
            if scale > 1:
                opened.draft(opened.mode, (width // scale, height // scale))  # PIL then picks this scale
                if opened.size == (-(-width // scale), -(-height // scale)):
                    pixels = image_pixels(_decode_with_pil(opened, path))
                    return pixels, ((height, width) if transposed else (width, height)), scale
                opened = _open(data)  # not the scale asked for: decoded whole
        pixels = _decoded_pixels(data, opened, path)
    return pixels, (int(pixels.shape[2]), int(pixels.shape[1])), 1


# EXIF orientation -> whether it flips the stored image's (x, y) axes (2: mirror, 6: turn clockwise, ...)
_FLIPPED_SIDES = {
    1: (False, False), 2: (True, False), 3: (True, True), 4: (False, True),
    5: (False, False), 6: (False, True), 7: (True, True), 8: (True, False),
}  # fmt: skip


def _known_orientation(opened: Image.Image) -> int | None:
    """The orientation (1-8) that PIL's ``exif_transpose`` will apply to ``opened`` (its ``getexif``
    reads it from EXIF, else from XMP), or None for a broken EXIF block or an invalid value."""
    try:
        orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return None
    return orientation if orientation in _FLIPPED_SIDES else None


@functools.lru_cache(maxsize=1)
def _jpeg_decoder() -> Callable[..., torch.Tensor] | None:
    """TorchCodec's ``decode_jpeg``, or None when it is not installed or does not load with this torch."""
    try:
        return importlib.import_module("torchcodec.decoders").decode_jpeg
    except ModuleNotFoundError:
        return None
    except AttributeError:
        logger.warning("this TorchCodec has no decode_jpeg (0.16 and newer have it); decoding JPEGs with PIL")
    except Exception as error:  # e.g. built for another torch release: an ImportError or OSError at load
        logger.warning("TorchCodec is installed but does not load (%s); decoding JPEGs with PIL", error)
    return None


def _same_in_torchcodec(opened: Image.Image) -> bool:
    """Whether TorchCodec decodes ``opened`` (header read, pixels not yet) to PIL's pixels: a YCbCr or
    grayscale JPEG whose orientation, if any, is a valid EXIF one (PIL also takes it from XMP, TorchCodec
    does not; CMYK goes through PIL's own conversion)."""
    if opened.format != "JPEG" or opened.mode not in ("RGB", "L"):
        return False
    orientation = _known_orientation(opened)  # None for a broken EXIF block: PIL's path warns and decodes
    if orientation is None:
        return False
    return orientation == 1 or not any(key in opened.info for key in _XMP_KEYS)


def read_file(path: str | os.PathLike[str]) -> tuple[bytes, dict[str, int]]:
    """``(bytes, identity)`` of the regular file ``path`` in one read; ``identity`` is ``{"size",
    "mtime_ns"}`` of the file read (its ``fstat``), for telling later whether it changed.

    Only a regular file (or a symbolic link to one) is read: a named pipe (FIFO), a device or a socket is
    refused without reading (opened non-blocking, so a FIFO never waits for a writer); a broken symbolic
    link, a symbolic-link loop, a folder, an empty or unreadable file raise :class:`ImageReadError`
    saying which.
    """
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ImageReadError(path, _open_failure(path, error)) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ImageReadError(path, f"not a regular file ({_file_kind(status.st_mode)})")
        if status.st_size == 0:
            raise ImageReadError(path, "file is empty")
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read()
    except OSError as error:
        raise ImageReadError(path, error.strerror or type(error).__name__) from error
    finally:
        os.close(descriptor)
    return data, {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _open_failure(path: Path, error: OSError) -> str:
    """Why ``path`` could not be opened, in words (a broken link and a link loop named as such)."""
    if error.errno == errno.ELOOP:
        return "symbolic link loop (the link points, through links, back to itself)"
    if error.errno == errno.ENOENT:
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)!r} does not exist)"
        return "no such file"
    if error.errno == errno.EISDIR:
        return "not a regular file (a folder)"
    return error.strerror or type(error).__name__


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a file")


def file_identity(path: str | os.PathLike[str]) -> dict[str, int] | None:
    """``{"size", "mtime_ns"}`` of ``path`` now (as :func:`read_file` records it), None if it cannot be
    stat'ed or is not a regular file."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can always be printed and written as UTF-8: bytes of a file name that are not
    UTF-8 appear as ``\\xNN`` (``b"caf\\xe9.jpg"`` -> ``caf\\xe9.jpg``); other names are unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s bytes are valid UTF-8 (:func:`display_path` then returns it unchanged)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_with_pil(opened: Image.Image, path: Path) -> Image.Image:
    """Decode an opened image, apply its EXIF orientation and convert it to RGB (:func:`load_image`'s rules)."""
    opened.load()
    _apply_exif_orientation(opened, path)
    return _to_rgb(opened, path)


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Turn what PIL raises for a bad file into :class:`ImageReadError` with a reason."""
    try:
        yield
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        formats = ", ".join(OPEN_FORMATS)
        raise ImageReadError(path, f"not an image file in a supported format ({formats})") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"image too large ({error})") from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as error:
        reason = str(error) or type(error).__name__
        if "truncated" in reason.lower():
            reason = f"file is truncated or corrupt ({reason})"
        raise ImageReadError(path, reason) from error


def _apply_exif_orientation(image: Image.Image, path: Path) -> None:
    """Rotate/flip ``image`` in place according to its EXIF orientation tag; a broken EXIF block only warns."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as error:
        warnings.warn(f"{path}: ignoring unreadable EXIF orientation ({error})", stacklevel=3)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see :func:`load_image` for the rules); RGB is returned as is."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        return _composite_over_white(image.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _composite_over_white(image.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        return _gray_to_rgb(values * (255.0 / 65535.0))
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _gray_to_rgb(values * (255.0 / 65535.0))
        return _gray_to_rgb(_min_max_to_255(values))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        if low >= 0 and high <= 1:
            return _gray_to_rgb(values * 255.0)
        if low >= 0 and high <= 255:
            return _gray_to_rgb(values)
        return _gray_to_rgb(_min_max_to_255(values))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageReadError(path, f"unsupported image mode {mode!r} ({error})") from error


def _composite_over_white(rgba: Image.Image) -> Image.Image:
    """RGBA -> RGB over a white background with integer rounding: (c*a + 255*(255-a) + 127) // 255."""
    pixels = np.asarray(rgba, dtype=np.uint32)
    colour, alpha = pixels[..., :3], pixels[..., 3:4]
    blended = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(blended.astype(np.uint8), "RGB")


def _min_max_to_255(values: np.ndarray) -> np.ndarray:
    """Linearly map [min, max] to [0, 255]; a constant image maps to 0."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _gray_to_rgb(values_0_255: np.ndarray) -> Image.Image:
    """Round a float gray image in [0, 255] to uint8 and replicate it into three channels."""
    gray = np.clip(np.rint(values_0_255), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")


def _has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk_folder(folder: Path, recursive: bool, exclude: Path | None = None) -> list[Path]:
    """Entries of ``folder`` with an image extension that are not folders (sub-folders too when
    recursive; hidden names and the folder ``exclude`` skipped). Not only regular files: a FIFO, a broken
    link or a link loop named ``*.jpg`` is listed, so that reading it reports it."""
    found: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".") and not is_inside(Path(root) / d, exclude)]
            found.extend(Path(root) / f for f in files if not f.startswith("."))
    else:
        found.extend(p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_dir())
    return [p for p in found if _has_image_extension(p) and not is_inside(p, exclude)]


def is_inside(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved; False without a folder)."""
    if folder is None:
        return False
    resolved = _absolute(path)
    return resolved == folder or folder in resolved.parents


def _absolute(path: Path) -> Path:
    """``path`` resolved (links followed); a broken link or a link loop keeps its own name in its
    resolved folder."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, a loop (RuntimeError before Python 3.13)
        return path.parent.resolve() / path.name


def find_images(
    paths: Sequence[str | os.PathLike[str]], recursive: bool = True, exclude: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of resolved image paths.

    - an existing file is kept whatever its extension and kind (a bad file, a FIFO or a broken link is
      reported later by :func:`read_file`);
    - a folder contributes its entries with an image extension that are not folders (case-insensitive;
      walked recursively when ``recursive``; hidden names skipped);
    - any other entry is a glob pattern (``glob.glob(..., recursive=True)``); matched entries need an
      image extension, matched folders are walked.

    Nothing found by walking a folder or a glob lies inside the folder ``exclude`` (a job's output
    folder: a rerun must not explain its own outputs); files named explicitly are kept. A path that does
    not exist, or a pattern that yields no image, raises FileNotFoundError naming it.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    skipped = None if exclude is None else Path(exclude).resolve()
    found: set[Path] = set()
    for entry in paths:
        candidate = Path(entry)
        if candidate.is_dir():
            found.update(_absolute(p) for p in _walk_folder(candidate, recursive, skipped))
        elif os.path.lexists(candidate):  # a file, a FIFO, a broken link, a link loop
            found.add(_absolute(candidate))
        else:
            pattern = os.fspath(entry)
            if not glob.has_magic(pattern):
                raise FileNotFoundError(f"no such file or folder: {pattern!r}")
            matched: list[Path] = []
            for match in map(Path, glob.glob(pattern, recursive=True)):
                if match.is_dir():
                    matched.extend(_walk_folder(match, recursive, skipped))
                elif _has_image_extension(match) and not is_inside(match, skipped):
                    matched.append(match)
            if not matched:
                raise FileNotFoundError(f"glob pattern matched no image files: {pattern!r}")
            found.update(_absolute(p) for p in matched)
    return sorted(found)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()


def _write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], durable: bool = True) -> Path:
    """Write via ``write(file)`` to a temp file next to ``path``, fsync (when ``durable``), then
    os.replace onto ``path``: a reader sees the old file or the whole new one, never part of one.

    Parent folders are created. On any error the temp file is removed, ``path`` is left untouched and
    the error re-raised. The result gets the usual permissions (0o666 minus the umask). Without
    ``durable`` the data may still be in the page cache when this returns; after a power cut the file
    may then be missing or empty (never torn into another file's bytes).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX, delete=False
        ) as temp:
            temp_name = temp.name
            write(temp)
            temp.flush()
            if durable:
                os.fsync(temp.fileno())
        with contextlib.suppress(OSError):
            os.chmod(temp_name, _FILE_MODE)
        os.replace(temp_name, target)
    except BaseException:
        if temp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
        raise
    return target


def remove_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files (``.*`` + :data:`TEMP_SUFFIX`) a killed run left in ``folder`` (not
    its sub-folders); returns them. A missing folder has none."""
    removed = []
    for temp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed.append(temp)
    return removed


@functools.lru_cache(maxsize=1)
def _syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs(2)`` from the C library, or None elsewhere (or in a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


def can_sync_filesystem() -> bool:
    """Whether :func:`sync_filesystem` works here (Linux)."""
    return _syncfs() is not None


def sync_filesystem(folder: str | os.PathLike[str]) -> None:
    """Flush every file written so far on ``folder``'s filesystem to its disk and wait for it (Linux's
    ``syncfs(2)``): one journal commit for a whole batch of files written with ``durable=False``, where
    an fsync per file costs one each (ext4, batches of 16 files of 324 bytes: 0.23 against 0.63 ms of
    CPU per file; ``benchmarks/write_durability.py``). Raises OSError when the kernel reports a failed
    write, NotImplementedError off Linux."""
    syncfs = _syncfs()
    if syncfs is None:
        raise NotImplementedError("sync_filesystem needs Linux's syncfs(2); write each file with durable=True")
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"cannot flush the files written under '{folder}' to disk: {os.strerror(code)}")
    finally:
        os.close(descriptor)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`_write_atomic`; large files as
    :func:`_write_past_page_cache` writes them)."""
    return _write_atomic(path, lambda file: _write_past_page_cache(file, [data]), durable)


#: Files of at least this many bytes are written past the page cache (O_DIRECT) where the file system
#: takes it: a 640 x 480 float32 heatmap is 1.2 MB, a raw map or an item.json a few hundred bytes.
DIRECT_WRITE_BYTES = 1 << 18
_DIRECT_ALIGNMENT = 4096  # O_DIRECT's alignment of buffer, offset and length (the largest logical block in use)
_DIRECT_REFUSED: set[int] = set()  # st_dev of the file systems that refused O_DIRECT
_direct_buffers = threading.local()  # each thread's page-aligned buffer, reused
_KEPT_BUFFER_BYTES = 16 << 20  # a larger one (a 12-megapixel photo's 48 MB map) is made for its file only


def _write_past_page_cache(file: IO[bytes], chunks: Sequence[bytes | memoryview]) -> None:
    """Write ``chunks`` to the new, empty ``file``, with O_DIRECT when they add up to at least
    :data:`DIRECT_WRITE_BYTES` on Linux: copied into an aligned buffer, written straight to the disk
    (the length padded to :data:`_DIRECT_ALIGNMENT`, then truncated), so that the bytes do not fill
    the page cache and leave nothing for the next filesystem sync to write back. A file system that
    refuses O_DIRECT (``EINVAL``) gets ordinary writes, now and for the rest of the process;
    ``GRADCAM_DIRECT_WRITES=0`` in the environment turns O_DIRECT off (a disk slow to answer each
    write, where the page cache and the batch's sync would hide its latency).

    Measured on this project's 2-core VM, per 1.2 MB file: 0.5-0.65 ms of CPU against 0.57 ms
    buffered when the page cache is warm, 7-8.5 ms when filling it costs the VM fresh memory;
    1.4-2.5 ms of wall time waiting for the disk (docs/benchmarks.md)."""
    size = sum(len(chunk) for chunk in chunks)
    direct = getattr(os, "O_DIRECT", 0) if os.environ.get("GRADCAM_DIRECT_WRITES", "1") != "0" else 0
    device = os.fstat(file.fileno()).st_dev if direct and size >= DIRECT_WRITE_BYTES else None
    if device is None or device in _DIRECT_REFUSED:
        for chunk in chunks:
            file.write(chunk)
        return
    padded = -(-size // _DIRECT_ALIGNMENT) * _DIRECT_ALIGNMENT
    kept = buffer = getattr(_direct_buffers, "buffer", None)
    if kept is None or len(kept) < padded:
        # private: a forked writer process gets its own copy, not a buffer shared with this one
        buffer = mmap.mmap(-1, padded, flags=mmap.MAP_PRIVATE)
        if padded <= _KEPT_BUFFER_BYTES:
            if kept is not None:
                kept.close()
            _direct_buffers.buffer = buffer
    with memoryview(buffer) as view:
        offset = 0
        for chunk in chunks:
            view[offset : offset + len(chunk)] = memoryview(chunk).cast("B")
            offset += len(chunk)  # the padding after them is cut off again by the truncation
        try:
            descriptor = os.open(file.name, os.O_WRONLY | direct | getattr(os, "O_CLOEXEC", 0))
            try:
                written = 0
                while written < padded:
                    written += os.write(descriptor, view[written:padded])
                os.ftruncate(descriptor, size)
            finally:
                os.close(descriptor)
            return
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            _DIRECT_REFUSED.add(device)
        file.write(view[:size])  # over whatever the refused writes left
        file.truncate()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W) grayscale or (H, W, 3) RGB uint8 array, built for speed.

    Every scanline uses PNG filter 2 ('Up': ``row[y] - row[y - 1] mod 256``, the first row against
    zeros), computed in one numpy subtraction, and the filtered rows go through one zlib stream at
    ``compress_level`` with the run-length strategy. On photo-sized overlays this is about 3 x faster
    than PIL's encoder at level 1 (which tries filters per row) for files of the same size; any PNG
    reader decodes the exact pixels.
    """
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"encode_png needs an (H, W) or (H, W, 3) uint8 array; got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256
    stream = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = stream.compress(filtered.data) + stream.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def save_png_atomic(
    path: str | os.PathLike[str], image: Image.Image, compress_level: int = 1, durable: bool = True
) -> Path:
    """Atomically save a PIL image as PNG at ``path`` (``durable`` as in :func:`_write_atomic`).

    RGB and 8-bit grayscale images go through :func:`encode_png` (zlib level ``compress_level``; 1 is
    the fastest), other modes through PIL. The pixels are identical either way.
    """
    if image.mode in ("RGB", "L"):
        data = encode_png(np.asarray(image), compress_level)
        return write_bytes_atomic(path, data, durable)
    return _write_atomic(
        path, lambda file: image.save(file, format="PNG", compress_level=compress_level), durable
    )


def save_npy_atomic(path: str | os.PathLike[str], array: np.ndarray, durable: bool = True) -> Path:
    """Atomically save an array in .npy format (``allow_pickle=False``: object arrays are refused);
    ``durable`` as in :func:`_write_atomic`."""
    array = np.asarray(array)
    if array.nbytes >= DIRECT_WRITE_BYTES and not array.dtype.hasobject:
        array = np.ascontiguousarray(array)
        header = _npy_header(array)
        if header is not None:
            chunks = [header, memoryview(array.reshape(-1).view(np.uint8))]
            return _write_atomic(path, lambda file: _write_past_page_cache(file, chunks), durable)
    return _write_atomic(path, lambda file: np.save(file, array, allow_pickle=False), durable)


def _npy_header(array: np.ndarray) -> bytes | None:
    """The header np.save writes before a C-ordered ``array`` (format 1.0), or None where its header is
    too long for 1.0 (np.save then picks a later version)."""
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    except ValueError:
        return None
    return header.getvalue()


def _json_default(value: Any) -> Any:
    """JSON fallback: paths -> str, numpy/torch scalars and arrays -> Python lists/numbers, dataclasses."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, durable: bool = True) -> Path:
    """Atomically write ``obj`` as UTF-8 JSON (indent=2, key order kept, trailing newline); ``durable``
    as in :func:`_write_atomic`.

    NaN/Infinity are refused (ValueError) since they are not valid JSON; the old file then stays intact.
    """
    text = json.dumps(
        obj, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False, default=_json_default
    )
    return write_bytes_atomic(path, (text + "\n").encode("utf-8"), durable)
