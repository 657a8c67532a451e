"""A job's inputs: decoding and cropping in DataLoader workers or threads, batches, output folder names, resume."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..imaging.geometry import (
    Geometry,
    PreprocessConfig,
    image_pixels,
    normalize_pixels,
    resized_crop,
)
from ..imaging.io import (
    ImageReadError,
    decode_pixels,
    display_path,
    file_identity,
    is_utf8_path,
    read_file,
)


def prepare_image(image: Image.Image | torch.Tensor, config: PreprocessConfig) -> tuple[torch.Tensor, Geometry]:
    """The model input for one image: centre-cropped (:func:`gradcam.imaging.preprocess`) or whole
    (detection, segmentation); :func:`crop_image`, then :func:`normalize_pixels`."""
    pixels, geometry = crop_image(image, config)
    return normalize_pixels(pixels, config), geometry


def crop_image(image: Image.Image | torch.Tensor, config: PreprocessConfig) -> tuple[torch.Tensor, Geometry]:
    """The model input's uint8 (3, h, w) pixels for one image, before normalisation, and its Geometry:
    the job decodes and crops in its decoding workers and normalises whole batches on the device, so
    a batch crosses between processes and onto the device as uint8, a quarter of float32's bytes."""
    pixels = image_pixels(image)
    geometry = config.geometry((int(pixels.shape[2]), int(pixels.shape[1])))  # whole-image configs: no crop
    return resized_crop(pixels, geometry, config.pil_resample.name.lower()), geometry


class ImageFiles(Dataset):
    """Decodes and crops one file per item (:func:`crop_image`: uint8 pixels, normalised per batch by
    :func:`normalize_pixels`); a bad file becomes an error record, not an exception."""

    def __init__(self, paths: Sequence[Path], config: PreprocessConfig, keep_original: bool = True) -> None:
        self.paths = list(paths)
        self.config = config
        self.keep_original = keep_original  # the decoded pixels, for drawing

    def _cropped(self, path: Path) -> tuple[torch.Tensor, torch.Tensor, Geometry, dict[str, int]]:
        """``(decoded pixels, model input's uint8 pixels, Geometry, the file's identity)`` of one file."""
        data, identity = read_file(path)
        pixels = decode_pixels(data, path)  # (3, H, W), a view of an (H, W, 3) buffer
        return pixels, *crop_image(pixels, self.config), identity

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            pixels, tensor, geometry, identity = self._cropped(self.paths[index])
        except ImageReadError as error:
            return {"index": index, "error": str(error)}
        except (OSError, ValueError, RuntimeError, MemoryError) as error:  # e.g. odd modes, no memory
            name = display_path(self.paths[index])
            return {"index": index, "error": f"cannot read image {name!r}: {type(error).__name__}: {error}"}
        original = pixels.permute(1, 2, 0) if self.keep_original else None  # (H, W, 3) for drawing, no copy
        return {"index": index, "tensor": tensor, "original": original, "geometry": geometry,
                "identity": identity, "error": None}  # fmt: skip


def decoded_batches(
    files: ImageFiles, batch_size: int, workers: int, threads: int, pin_memory: bool
) -> Generator[dict[str, Any], None, None]:
    """Collated batches of ``files`` in order: decoded by ``workers`` DataLoader processes, or, with
    ``workers=0``, by ``threads`` threads of this process, one batch at a time. The JPEG decoders
    (TorchCodec's or PIL's) and torch's resampling release the GIL, so the threads share the cores
    between model steps instead of competing with the model's own threads for them (on a CPU device
    the model uses every core).
    """
    if workers > 0 or threads <= 1:
        yield from DataLoader(
            files, batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=pin_memory
        )
        return
    # One torch thread per decoding thread (several torch threads each would oversubscribe the cores:
    # 24.4 against 23.5 ms per image in a paired run). torch.set_num_threads in a thread also sets the
    # default of threads started later, so this thread's own setting is written back at the end.
    own_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(
            threads, thread_name_prefix="gradcam-decode", initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            for start in range(0, len(files), batch_size):
                indices = range(start, min(start + batch_size, len(files)))
                batch = collate(list(pool.map(files.__getitem__, indices)))
                if pin_memory and batch["x"] is not None:
                    batch["x"] = batch["x"].pin_memory()
                yield batch
    finally:
        torch.set_num_threads(own_threads)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Keep the readable items (stacked when their sizes agree); keep the failures aside."""
    good = [item for item in items if item["error"] is None]
    tensors = [item["tensor"] for item in good]
    same = bool(tensors) and all(t.shape == tensors[0].shape for t in tensors)
    return {
        "indices": [item["index"] for item in good],
        "x": torch.stack(tensors) if same else None,
        "tensors": tensors,
        "originals": [item["original"] for item in good],
        "geometries": [item["geometry"] for item in good],
        "identities": [item["identity"] for item in good],
        "failures": [(item["index"], item["error"]) for item in items if item["error"] is not None],
    }


def same_size_groups(batch: dict[str, Any]) -> list[tuple[list[int], torch.Tensor]]:
    """The batch's positions grouped by input size, with each group's stacked inputs (whole-image
    preprocessing keeps each image's aspect ratio, so one batch may hold several sizes)."""
    if batch["x"] is not None:
        return [(list(range(len(batch["indices"]))), batch["x"])]
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, tensor in enumerate(batch["tensors"]):
        groups.setdefault(tuple(tensor.shape), []).append(position)
    return [(positions, torch.stack([batch["tensors"][p] for p in positions])) for positions in groups.values()]


def output_folder(path: Path, root: Path) -> str:
    """The folder of ``path``'s outputs, relative to the output folder: ``path`` relative to ``root``
    (else its name), each part escaped so that different inputs never share a folder and every name is
    valid UTF-8: ``a/b.jpg`` -> ``a/b_jpg``, ``x_y.png`` -> ``x_y_png``, ``x.y.png`` -> ``x%2Ey_png``.

    In the file name the last ``.`` becomes ``_``, a ``_`` after it ``%5F``, an earlier ``.`` ``%2E``
    (no dot at all: every ``_`` is ``%5F``); in folder names every ``.`` is ``%2E``; everywhere ``%`` is
    ``%25`` and a byte that is not UTF-8 ``%XX``. So the last ``_`` of an escaped file name is its last
    dot, the mapping can be undone, and no escaped part contains a dot, unlike every output file name.
    """
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    *folders, name = relative.parts
    return "/".join([*(_escape(part).replace(".", "%2E") for part in folders), _escape_file_name(name)])


def _escape(part: str) -> str:
    """``%`` as ``%25`` and each byte that is not UTF-8 (a surrogate escape) as ``%XX``."""
    part = part.replace("%", "%25")
    return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in part)


def _escape_file_name(name: str) -> str:
    stem, dot, extension = _escape(name).rpartition(".")
    if not dot:
        return extension.replace("_", "%5F")
    return stem.replace(".", "%2E") + "_" + extension.replace("_", "%5F")


def common_root(paths: Sequence[Path]) -> Path:
    """The deepest folder containing every path."""
    parents = [p.parent.parts for p in paths]
    shared = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        shared.append(parts[0])
    return Path(*shared) if shared else Path("/")


def _source_fields(path: Path) -> dict[str, str]:
    """How a record names its input: ``"input"``, printable text (:func:`display_path`), and, for a
    name that is not UTF-8, ``"input_bytes"``: the path's bytes in base64, from which
    ``os.fsdecode(base64.b64decode(...))`` gives the path back."""
    fields = {"input": display_path(path)}
    if not is_utf8_path(path):
        fields["input_bytes"] = base64.b64encode(os.fsencode(path)).decode("ascii")
    return fields


def finished_record(item_dir: Path, path: Path, key: Callable[[str | None], dict[str, Any]]) -> dict | None:
    """The record of ``path``'s finished outputs in ``item_dir``, or None when the item must be (re)done:
    ``item.json`` must parse, have been made with the same settings (``key(its layer)``), from the same
    input (size and mtime_ns as read then) and every file it lists must exist with its recorded size."""
    try:
        record = json.loads((item_dir / "item.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("settings") != key(record.get("layer")):
        return None
    if record.get("source") is None or record.get("source") != file_identity(path):
        return None
    files = record.get("files")
    if not isinstance(files, dict):
        return None
    for name, size in files.items():
        try:
            if (item_dir / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return record
