"""Explain many image files: decode in parallel, explain in batches, write overlays atomically, resume.

For every readable image it writes, in ``OUT/<relative path>/``, per method and explained target:
an overlay at the image's original resolution (PNG, or JPEG with ``picture_format="jpg"``), the map
as ``.npy`` (float32, original resolution), a panel like the paper's figures, on request the method's
raw map (``_raw.npy``: :attr:`Explanation.raw`, e.g. the 7 x 7 Grad-CAM before upsampling and
normalisation), and ``item.json`` last. Every file is written to a temp file and renamed onto its
name (``os.replace``); each output is fsynced first, so once ``item.json`` exists its outputs are on
the disk. ``item.json`` records the image's preprocessing :class:`Geometry` (from which
:func:`heatmap_from_raw` rebuilds the heatmap), the input's size and mtime, and each output's size.
``OUT/manifest.json`` lists every item. A bad file is reported and skipped; a rerun skips finished
items (:func:`finished_record`) unless ``overwrite``.

The explained scalar ``y`` (Selvaraju et al., ICCV 2017, sec. 3: any differentiable score) is set
by :class:`TaskOptions`: a class logit (default, the paper's ``y^c``), a class probability, a
segmentation class's logits summed over a region, one detection's score (chosen by index or matched
to a box, optionally + λ·IoU), or the cosine similarity of the image embedding with a reference
(an embedding file, or text prompts for CLIP-style models). Task targets are built with
:func:`gradcam.tasks.target_from_options`; boxes and masks are given in original image pixels and
mapped through each image's preprocessing :class:`Geometry`.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import os
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..capture import model_guard
from ..errors import LayerError, TargetError
from ..explanation import Explanation
from ..imaging import draw
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
    is_inside,
    is_utf8_path,
    read_file,
    remove_temp_files,
    save_npy_atomic,
    save_png_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from ..methods import METHODS, create_explainer
from ..methods.base import Explainer, normalize, upsample
from ..models import LoadedModel
from ..targets import TopK
from .distributed import all_gather, barrier, distributed_rank, rank_device

logger = logging.getLogger("gradcam")

TITLES = {
    "gradcam": "Grad-CAM",
    "counterfactual": "Counterfactual",
    "cam": "CAM",
    "guided-backprop": "Guided Backprop",
    "guided-gradcam": "Guided Grad-CAM",
}
PANEL_TILE_HEIGHT = 384
CLASS_TASKS = ("class", "probability", "log-probability", "sigmoid")
BOX_COLOR = (0, 255, 0)
CONTOUR_COLOR = (255, 255, 255)
#: The task a loaded model's output calls for when ``--task`` is not given.
DEFAULT_TASK = {"classification": "class", "detection": "detection", "segmentation": "segmentation",
                "embedding": "similarity"}  # fmt: skip


@dataclass(frozen=True)
class TaskOptions:
    """Which scalar to explain (see :data:`gradcam.tasks.TASKS`) and its parameters.

    ``name``: ``class`` (logit; classes from ``ExplainSettings.targets`` / ``top_k``), ``probability``,
    ``log-probability``, ``sigmoid``, ``segmentation`` (``category`` required; region: ``mask``, an
    (H0, W0) ``.npy`` in original pixels, or the pixels predicted as ``category``), ``detection``
    (``detection`` index, default 0, or the detection best matching ``box`` (x0, y0, x1, y1 in
    original pixels) with IoU >= ``iou_threshold``; y = score + ``box_weight`` · IoU), ``similarity``
    (``embedding`` file (D,) or (k, D), or ``texts`` embedded by the model's text encoder).
    """

    name: str = "class"
    category: int | None = None
    box: tuple[float, float, float, float] | None = None
    detection: int | None = None
    iou_threshold: float = 0.5
    box_weight: float = 0.0
    mask: str | None = None
    embedding: str | None = None
    texts: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The task's name and the parameters that differ from the defaults (for the manifest)."""
        defaults = TaskOptions()
        given = {k: v for k, v in asdict(self).items() if k != "name" and v != getattr(defaults, k)}
        return json.loads(json.dumps({"name": self.name, **given}))


#: The files that can be written per image and class: the overlay picture, the heatmap ``.npy`` (float32
#: on original pixels), the panel picture, the raw map ``_raw.npy`` (:attr:`Explanation.raw`, float32
#: at the layer's resolution for class-activation methods, the input gradient for gradient methods).
OUTPUT_KINDS = ("overlay", "heatmap", "panel", "raw")
#: The outputs drawn on the original image (so they need its full-size pixels).
DRAWN_OUTPUTS = frozenset({"overlay", "panel"})
#: What is written when no outputs are named.
DEFAULT_OUTPUTS = ("overlay", "heatmap", "panel")
#: How overlays and panels are stored: PNG (lossless, the default) or JPEG at quality 95 (smaller and
#: faster to encode; docs/benchmarks.md).
PICTURE_FORMATS = ("png", "jpg")
JPEG_QUALITY = 95


def valid_outputs(kinds: Sequence[str]) -> bool:
    """Whether ``kinds`` is a non-empty selection from :data:`OUTPUT_KINDS`."""
    return bool(kinds) and all(kind in OUTPUT_KINDS for kind in kinds)


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain, how to draw it, and which of :data:`OUTPUT_KINDS` to write."""

    methods: tuple[str, ...] = ("gradcam", "guided-backprop", "guided-gradcam", "counterfactual")
    targets: tuple[int, ...] | None = None  # the same classes for every image; None = top-k predicted
    top_k: int = 1
    show_top: int = 5
    alpha: float = 0.5
    colormap: str = "jet"
    layer: str | None = None
    task: TaskOptions = field(default_factory=TaskOptions)
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    picture_format: str = "png"

    def __post_init__(self) -> None:
        if not valid_outputs(self.outputs):
            raise ValueError(f"outputs must be a non-empty subset of {', '.join(OUTPUT_KINDS)}; got {self.outputs}")
        if self.picture_format not in PICTURE_FORMATS:
            raise ValueError(f"picture_format must be one of {', '.join(PICTURE_FORMATS)}; got {self.picture_format!r}")

    @property
    def draws(self) -> bool:
        """Whether any output is a picture (overlay or panel), so the original image is needed."""
        return bool(DRAWN_OUTPUTS & set(self.outputs))

    @property
    def on_original_pixels(self) -> bool:
        """Whether any output needs the maps resampled to the original image (heatmap, overlay, panel)."""
        return self.draws or "heatmap" in self.outputs

    def key(self, model_name: str, layer: str | None) -> dict[str, Any]:
        """What an existing output must have been made with to be reused by a rerun (JSON-normalised).

        The default task and outputs are left out, so outputs of versions without them stay reusable."""
        data = asdict(self)
        if self.task == TaskOptions():
            data.pop("task")
        if set(self.outputs) == set(DEFAULT_OUTPUTS):
            data.pop("outputs")
        if self.picture_format == "png":
            data.pop("picture_format")
        return json.loads(json.dumps({"model": model_name, "layer": layer, **data}))


@dataclass
class JobSummary:
    """Counts and records of one run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    layer: str | None = None


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


def class_name(index: int, labels: Sequence[str] | None) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else f"class {index}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:40] or "x"


def _saliency_2d(map_: torch.Tensor) -> torch.Tensor:
    """A (H, W) map in [0, 1] from a class map (H, W) or an input gradient (C, H, W): max |g| over C."""
    if map_.dim() == 3:
        map_ = map_.abs().amax(dim=0)
        peak = map_.max()
        map_ = map_ / peak if peak > 0 else map_
    return map_


# ---------------------------------------------------------------------------------------------- models


def as_detector(model: nn.Module) -> nn.Module:
    """A torchvision detection model wrapped in :class:`DetectorAdapter` (other models unchanged)."""
    from ..tasks import DetectorAdapter

    if isinstance(model, DetectorAdapter):
        return model
    transform = getattr(model, "transform", None)
    if type(transform).__name__ == "GeneralizedRCNNTransform" and isinstance(transform, nn.Module):
        return DetectorAdapter(model)
    return model


def _layer_name(model: nn.Module, requested: str | None) -> str | None:
    """The layer to explain: the request (detector layers may omit the adapter's ``detector.``
    prefix), or for a vision transformer the first LayerNorm of its last block; None: automatic."""
    from ..reshape import patch_size, token_layer
    from ..tasks import DetectorAdapter

    if requested is not None:
        if isinstance(model, DetectorAdapter) and not requested.startswith("detector."):
            names = {name for name, _ in model.detector.named_modules()}
            if requested in names:
                return f"detector.{requested}"
        return requested
    if isinstance(model, DetectorAdapter):
        return model.default_layer
    if patch_size(model) is not None:
        try:
            return token_layer(model)
        except LayerError:
            return None
    return None


class _Explainers:
    """The method objects for one job, created on the first batch (the token reshape is read from it)."""

    def __init__(self, model: nn.Module, layer: str | None, methods: Sequence[str]) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
        self.model = model
        self.requested = _layer_name(model, layer)
        self.methods = tuple(methods)
        self.by_name: dict[str, Explainer] = {}

    def _create(self) -> None:
        """Build every method: detector backbones get ``crop_padding`` (the padded border is cut off),
        other layers ``reshape="auto"``: token layers (ViT, Swin, CLIP) get the grid read from the first
        call's activations (no extra forward pass: one batch-1 forward of Lite0 is ~24 ms per job)."""
        from ..tasks import DetectorAdapter

        reshape: Any = None
        if isinstance(self.model, DetectorAdapter):
            if self.requested is not None and self.requested.startswith("detector.backbone"):
                reshape = self.model.crop_padding
        elif self.requested is not None:
            reshape = "auto"
        for name in self.methods:
            options = {"reshape": reshape} if reshape is not None and METHODS[name].uses_layer else {}
            self.by_name[name] = create_explainer(name, self.model, self.requested, **options)

    @property
    def layer(self) -> str | None:
        for explainer in self.by_name.values():
            name = getattr(explainer, "layer_name", None)
            if name is not None:
                return name
        return None

    def run(
        self, x: torch.Tensor, settings: ExplainSettings
    ) -> tuple[dict[str, Explanation], torch.Tensor, torch.Tensor]:
        """All methods on one batch; the first call chooses the classes, the others reuse them."""
        if not self.by_name:
            self._create()
        first_target: Any = (
            torch.tensor(settings.targets, device=x.device).expand(x.shape[0], -1)
            if settings.targets
            else TopK(settings.top_k)
        )
        results: dict[str, Explanation] = {}
        classes = logits = None
        for name, explainer in self.by_name.items():
            target = first_target if classes is None else classes
            results[name] = explainer(x, target, **METHODS[name].call_options)
            if classes is None:
                classes, logits = results[name].classes, results[name].logits
        return results, classes, logits

    def run_target(self, x: torch.Tensor, target: Any) -> dict[str, Explanation]:
        """All methods on one batch for the same task target."""
        if not self.by_name:
            self._create()
        return {name: e(x, target, **METHODS[name].call_options) for name, e in self.by_name.items()}


# ----------------------------------------------------------------------------------------------- tasks


@dataclass
class ItemTargets:
    """What was explained for one image: one entry per map (k of them), and the image's predictions."""

    ids: list[int]
    labels: list[str]
    classes: list[int]
    predictions: list[dict[str, Any]]
    extras: list[dict[str, Any]] = field(default_factory=list)  # per map, added to the manifest's output
    marks: list[dict[str, Any]] = field(default_factory=list)  # per map: "box" (+ "box_label"), "contour"


def mask_to_input(mask: torch.Tensor, geometry: Geometry, mode: str = "bilinear") -> torch.Tensor:
    """An (H0, W0) map on the original image resampled onto the input frame (H, W) of ``geometry``.

    Each input pixel centre ``(j + 0.5, i + 0.5)`` is mapped to original coordinates with
    ``Geometry.point_to_original`` and the mask sampled there (``grid_sample``, align_corners=False;
    zero outside the image). ``mode``: ``bilinear`` (float weights) or ``nearest``.
    """
    width, height = geometry.input_size
    w0, h0 = geometry.original_size
    ax, ay = geometry.point_to_original(0.0, 0.0)
    bx, by = geometry.point_to_original(1.0, 1.0)
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * (bx - ax) + ax
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * (by - ay) + ay
    grid = torch.stack(torch.meshgrid(2 * xs / w0 - 1, 2 * ys / h0 - 1, indexing="xy"), dim=-1)
    source = mask.to(torch.float32).reshape(1, 1, h0, w0)
    sampled = F.grid_sample(source, grid[None].to(source), mode=mode, padding_mode="zeros", align_corners=False)
    return sampled[0, 0]


def region_to_original(region: torch.Tensor, geometry: Geometry) -> np.ndarray:
    """A region (h, w) on the input frame (or the logits' grid) as an (H0, W0) boolean mask."""
    width, height = geometry.input_size
    grid = region.detach().float().cpu()[None, None]
    if tuple(grid.shape[-2:]) != (height, width):
        grid = F.interpolate(grid, size=(height, width), mode="nearest")
    return (geometry.to_original(grid[0, 0]) > 0.5).numpy()


class TaskRunner:
    """Builds each batch's task target from a no-grad look at the model's output, and what to record.

    Problems with the options themselves raise :class:`TargetError` here (before any image is read);
    an image the target does not fit (no detection matching ``--box``, ``--detection`` out of range,
    a mask of another size) is reported as a failed item.
    """

    def __init__(self, options: TaskOptions, loaded: LoadedModel, model: nn.Module, show_top: int) -> None:
        from ..tasks import TASKS

        if options.name not in TASKS:
            raise TargetError(f"unknown task {options.name!r}; available: {', '.join(TASKS)}")
        self.options = options
        self.labels = loaded.labels
        self.model = model
        self.show_top = show_top
        self.mask: torch.Tensor | None = None
        self.reference: torch.Tensor | None = None
        self.reference_labels: list[str] = []
        if options.mask is not None:
            self.mask = self._load_mask(options.mask)
        if options.name == "similarity":
            self.reference, self.reference_labels = self._reference(options, loaded)

    @staticmethod
    def _load_mask(path: str) -> torch.Tensor:
        file = Path(path)
        if not file.is_file():
            raise TargetError(f"--mask file not found: {file}")
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise TargetError(f"--mask {file} is not a .npy array: {error}") from None
        if array.ndim != 2 or not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
            raise TargetError(
                f"--mask must be a 2-D (H, W) array of the original image's size (bool, or float weights); "
                f"{file} holds shape {array.shape}, dtype {array.dtype}"
            )
        return torch.from_numpy(array.astype(np.float32))

    @staticmethod
    def _reference(options: TaskOptions, loaded: LoadedModel) -> tuple[torch.Tensor, list[str]]:
        from ..tasks import _load_tensor

        if options.texts and options.embedding is not None:
            raise TargetError("give --text or --embedding as the reference, not both")
        if options.texts:
            if loaded.text_encoder is None:
                raise TargetError(
                    f"--text needs an image-text model with a text encoder; {loaded.name} has none. Use a "
                    'CLIP-style model saved on this machine: --model hf:FOLDER (pip install "gradcam[hf]"; '
                    "FOLDER from CLIPModel.from_pretrained(NAME).save_pretrained(FOLDER) plus its processor), "
                    "or embed the text yourself and pass --embedding FILE.npy"
                )
            reference = loaded.text_encoder(list(options.texts)).detach().float().cpu()
            return reference, [f"'{text}'" for text in options.texts]
        if options.embedding is None:
            raise TargetError("--task similarity needs a reference: --embedding FILE.npy (or --text for CLIP models)")
        reference = _load_tensor(options.embedding, "--embedding").detach().float()
        if reference.dim() == 2 and len(reference) == 1:
            reference = reference[0]
        if reference.dim() not in (1, 2) or reference.shape[-1] == 0:
            raise TargetError(
                f"--embedding must hold a (D,) or (k, D) array; {options.embedding} holds shape "
                f"{tuple(reference.shape)}"
            )
        count = 1 if reference.dim() == 1 else len(reference)
        return reference, ["reference"] if count == 1 else [f"reference {j}" for j in range(count)]

    def look(self, x: torch.Tensor) -> Any:
        """The model's output on ``x``: eval mode, no gradients (what the target is built from)."""
        with model_guard(self.model), torch.no_grad():
            return self.model(x)

    def prepare(
        self, x: torch.Tensor, geometries: Sequence[Geometry], settings: ExplainSettings
    ) -> tuple[Any, list[int], list[tuple[int, str]], list[ItemTargets]]:
        """``(target, kept positions, failures (position, message), per kept image what it explains)``."""
        output = self.look(x)
        name = self.options.name
        if name in CLASS_TASKS:
            return self._classes(output, x, settings)
        if name == "segmentation":
            return self._segmentation(output, x, geometries)
        if name == "detection":
            return self._detection(output, x, geometries)
        return self._similarity(output, x)

    def _classes(self, output: Any, x: torch.Tensor, settings: ExplainSettings):
        from ..tasks import pick, target_from_options

        logits = pick(output).detach().float()
        if logits.dim() != 2:
            raise TargetError(
                f"--task {self.options.name} needs (B, classes) scores; the model gives {tuple(logits.shape)}"
            )
        if settings.targets:
            classes = torch.tensor(settings.targets, device=logits.device).expand(len(logits), -1)
        else:
            classes = logits.topk(min(settings.top_k, logits.shape[1]), dim=1).indices
        target = target_from_options(self.options.name, category=classes)
        shown = logits.sigmoid() if self.options.name == "sigmoid" else logits.softmax(dim=1)
        top = shown.topk(min(self.show_top, shown.shape[1]), dim=1)
        items = []
        for b in range(len(logits)):
            ids = classes[b].tolist()
            predictions = [
                {"index": i, "label": class_name(i, self.labels), "probability": p}
                for p, i in zip(top.values[b].tolist(), top.indices[b].tolist())
            ]
            labels = [class_name(i, self.labels) for i in ids]
            extras = [{"probability": float(shown[b, i])} for i in ids]
            items.append(ItemTargets(ids, labels, ids, predictions, extras, [{} for _ in ids]))
        return target, list(range(len(logits))), [], items

    def _segmentation(self, output: Any, x: torch.Tensor, geometries: Sequence[Geometry]):
        from ..tasks import SEGMENTATION_KEYS, pick, target_from_options

        logits = pick(output, None, SEGMENTATION_KEYS).detach()
        if logits.dim() != 4:
            raise TargetError(
                f"--task segmentation needs (B, classes, H, W) scores; the model gives {tuple(logits.shape)}"
            )
        category = self.options.category
        count = logits.shape[1]
        if category is None or not 0 <= category < count:
            raise TargetError(
                f"--class {category} is out of range: the model segments {count} classes (0..{count - 1})"
            )
        predicted = logits.argmax(1)  # (B, h, w)
        keep, failures, masks = [], [], []
        for b, geometry in enumerate(geometries):
            if self.mask is None:
                keep.append(b)
                continue
            size = (geometry.original_size[1], geometry.original_size[0])
            if tuple(self.mask.shape) != size:
                failures.append((b, f"--mask has shape {tuple(self.mask.shape)} but the image is {size[0]}x{size[1]} "
                                    f"(H x W); give a mask of the original image's size"))  # fmt: skip
                continue
            region = mask_to_input(self.mask, geometry, "bilinear")
            if tuple(region.shape) != tuple(logits.shape[-2:]):
                region = F.interpolate(region[None, None], size=logits.shape[-2:], mode="bilinear",
                                       align_corners=False)[0, 0]  # fmt: skip
            keep.append(b)
            masks.append(region)
        if not keep:
            return None, keep, failures, []
        mask = torch.stack(masks).to(logits.device) if masks else None
        target = target_from_options("segmentation", category=category, mask=mask)
        items = []
        for j, b in enumerate(keep):
            region = (predicted[b] == category).float() if mask is None else mask[j]
            shares = torch.bincount(predicted[b].flatten(), minlength=count).float() / predicted[b].numel()
            order = [int(c) for c in shares.argsort(descending=True)[: self.show_top] if shares[c] > 0]
            predictions = [{"index": c, "label": class_name(c, self.labels), "score": float(shares[c])} for c in order]
            extras = [{"pixels": int((region > 0).sum()), "share": float(shares[category])}]
            marks = [{"contour": region_to_original(region > 0.5, geometries[b])}]
            items.append(ItemTargets([category], [class_name(category, self.labels)], [category], predictions,
                                     extras, marks))  # fmt: skip
        return target, keep, failures, items

    def _detection(self, output: Any, x: torch.Tensor, geometries: Sequence[Geometry]):
        from ..tasks import _detections, box_iou_pairs, match_detections, target_from_options

        detections = _detections(output, None, len(x))
        options = self.options
        keep, failures, chosen, references, ious = [], [], [], [], []
        for b, (found, geometry) in enumerate(zip(detections, geometries)):
            count = len(found["scores"])
            if options.box is not None:
                reference = geometry.box_from_original(options.box)
                boxes = found["boxes"].detach().float()
                overlap = box_iou_pairs(boxes, torch.tensor(reference, device=boxes.device).expand_as(boxes))
                best = float(overlap.max()) if count else 0.0
                if count == 0 or best < options.iou_threshold:
                    failures.append((b, f"--box {list(options.box)} matches no detection with IoU >= "
                                        f"{options.iou_threshold} (the detector found {count}; best IoU {best:.3f}); "
                                        "lower --iou-threshold or choose one with --detection N"))  # fmt: skip
                    continue
                index, iou = match_detections([found], reference, iou_threshold=options.iou_threshold)
                chosen.append(int(index[0, 0]))
                references.append(reference)
                ious.append(float(iou[0, 0]))
            else:
                index = 0 if options.detection is None else options.detection
                if not 0 <= index < count:
                    valid = f" (valid: 0..{count - 1})" if count else ""
                    failures.append((b, f"--detection {index} is out of range: the detector found {count} "
                                        f"detections in this image{valid}"))  # fmt: skip
                    continue
                chosen.append(index)
            keep.append(b)
        if not keep:
            return None, keep, failures, []
        if options.box is not None:
            boxes = torch.tensor(references, dtype=torch.float32, device=x.device).reshape(-1, 4)
            target = target_from_options("detection", box=boxes, iou_threshold=options.iou_threshold,
                                         box_weight=options.box_weight)  # fmt: skip
        else:
            target = target_from_options("detection", detection=chosen)  # type: ignore[arg-type]
        items = []
        for j, b in enumerate(keep):
            found, geometry = detections[b], geometries[b]
            scores = found["scores"].detach().float().tolist()
            boxes = found["boxes"].detach().float().tolist()
            labels = found.get("labels")
            label_ids = labels.tolist() if isinstance(labels, torch.Tensor) else [None] * len(scores)

            def describe(i: int, boxes=boxes, label_ids=label_ids, geometry=geometry) -> dict[str, Any]:
                label = None if label_ids[i] is None else int(label_ids[i])
                return {"label_index": label, "label": "object" if label is None else class_name(label, self.labels),
                        "box": [round(v, 2) for v in geometry.box_to_original(boxes[i])]}  # fmt: skip

            shown = range(min(self.show_top, len(scores)))
            predictions = [{"index": i, **describe(i), "score": scores[i]} for i in shown]
            d = chosen[j]
            info = describe(d)
            extra = {"detection_score": scores[d], "box": info["box"]}
            if options.box is not None:
                extra["iou"] = ious[j]
            mark = {"box": tuple(info["box"]), "box_label": f"{info['label']} {scores[d]:.2f}"}
            items.append(ItemTargets([d], [info["label"]], [] if info["label_index"] is None else [info["label_index"]],
                                     predictions, [extra], [mark]))  # fmt: skip
        return target, keep, failures, items

    def _similarity(self, output: Any, x: torch.Tensor):
        from ..tasks import _embedding, target_from_options

        embedding = _embedding(output, None).detach().float()
        reference = self.reference
        assert reference is not None
        if reference.shape[-1] != embedding.shape[1]:
            raise TargetError(
                f"the reference embedding has dimension {reference.shape[-1]} but the model's image embedding "
                f"has {embedding.shape[1]}"
            )
        target = target_from_options("similarity", embedding=reference)
        rows = reference.reshape(-1, reference.shape[-1]).to(embedding.device)
        cosine = F.cosine_similarity(embedding[:, None, :], rows[None], dim=-1)  # (B, k)
        ids = list(range(len(rows)))
        items = []
        for b in range(len(embedding)):
            order = cosine[b].argsort(descending=True)[: self.show_top].tolist()
            labels = self.reference_labels
            predictions = [{"index": j, "label": labels[j], "score": float(cosine[b, j])} for j in order]
            extras = [{"similarity": float(cosine[b, j])} for j in ids]
            items.append(ItemTargets(ids, list(labels), [], predictions, extras, [{} for _ in ids]))
        return target, list(range(len(embedding))), [], items


# ---------------------------------------------------------------------------------------------- writing


def _mark(picture: Image.Image, marks: dict[str, Any]) -> Image.Image:
    """Draw a target's box (detection) or region outline (segmentation) on a tile."""
    thickness = max(2, round(max(picture.size) / 250))
    if marks.get("contour") is not None:
        picture = draw.draw_contour(picture, marks["contour"], CONTOUR_COLOR, width=thickness)
    if marks.get("box") is not None:
        picture = draw.draw_box(picture, marks["box"], BOX_COLOR, width=thickness, label=marks.get("box_label"))
    return picture


def _write_item(
    item_dir: Path,
    original: Image.Image | None,
    maps: dict[str, torch.Tensor | None],
    raws: dict[str, np.ndarray | None],
    targets: ItemTargets,
    scores: dict[str, list[float]],
    settings: ExplainSettings,
) -> list[dict[str, Any]]:
    """Draw and write one image's outputs (those in ``settings.outputs``; a file not written is recorded
    as None; each fsynced); ``maps[method]`` is (k, H0, W0) or (k, C, H0, W0) on the
    CPU, ``raws[method]`` the k raw maps, a float32 array (None when not needed)."""
    outputs = []
    kinds, drawn = set(settings.outputs), settings.draws
    for j, (target_id, label) in enumerate(zip(targets.ids, targets.labels)):
        marks = targets.marks[j] if targets.marks else {}
        tiles, titles = [_mark(original, marks) if marks and drawn else original], ["Original"]
        for name, method_maps in maps.items():
            on_original = None if method_maps is None else method_maps[j]
            stem = f"{name}_{target_id}_{_slug(label)}"
            output = {"method": name, "target": target_id, "label": label, "score": scores[name][j]}
            output.update(targets.extras[j] if targets.extras else {})
            output.update({"overlay": None, "heatmap": None, "panel": None, "raw": None})
            if drawn:
                if on_original.dim() == 3:
                    picture = draw.gradient_image(on_original)
                else:
                    picture = draw.overlay(original, on_original.numpy(), settings.alpha, settings.colormap)
                if marks:
                    picture = _mark(picture, marks)
                tiles.append(picture)
                titles.append(f"{TITLES.get(name, name)}: {label}")
                if "overlay" in kinds:
                    output["overlay"] = str(_save_picture(item_dir / stem, picture, settings.picture_format))
            if "heatmap" in kinds:
                heatmap = _saliency_2d(on_original).numpy()
                output["heatmap"] = str(save_npy_atomic(item_dir / f"{stem}.npy", heatmap))
            if "raw" in kinds:
                output["raw"] = str(save_npy_atomic(item_dir / f"{stem}_raw.npy", raws[name][j]))
            outputs.append(output)
        if "panel" in kinds:
            panel = draw.panel(tiles, titles, tile_height=min(original.height, PANEL_TILE_HEIGHT))
            panel_stem = item_dir / f"panel_{target_id}_{_slug(label)}"
            panel_path = _save_picture(panel_stem, panel, settings.picture_format)
            for output in outputs[-len(maps) :]:
                output["panel"] = str(panel_path)
    return outputs


def _save_picture(stem: Path, picture: Image.Image, picture_format: str) -> Path:
    """Write ``stem.png`` (lossless) or ``stem.jpg`` (quality :data:`JPEG_QUALITY`) atomically."""
    if picture_format == "jpg":
        data = io.BytesIO()
        picture.convert("RGB").save(data, format="JPEG", quality=JPEG_QUALITY)
        return write_bytes_atomic(stem.with_name(stem.name + ".jpg"), data.getvalue())
    return save_png_atomic(stem.with_name(stem.name + ".png"), picture)


def _write_outputs(
    item_dir: Path, record: dict[str, Any], original: Image.Image | None, maps: dict[str, torch.Tensor | None],
    raws: dict[str, np.ndarray | None], scores: dict[str, list[float]], targets: ItemTargets,
    settings: ExplainSettings,
) -> dict[str, Any]:  # fmt: skip
    """Writer task: every output file of one item (after removing the temp files a killed run left in
    its folder); ``record`` with their paths and ``"files"``, each output's name and size (item.json
    is the commit's). A failure to draw or encode this item (not to write: an OSError stops the job)
    gives ``{"error": why}`` instead, and the item is reported failed."""
    remove_temp_files(item_dir)
    try:
        outputs = _write_item(item_dir, original, maps, raws, targets, scores, settings)
    except (ValueError, RuntimeError, MemoryError) as error:
        return {"error": f"{record['input']}: cannot draw or encode its outputs: {type(error).__name__}: {error}"}
    record["outputs"] = outputs
    written = [Path(o[kind]) for o in outputs for kind in OUTPUT_KINDS if o[kind] is not None]
    record["files"] = {file.name: file.stat().st_size for file in written}
    return record


def _write_items(items: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Writer task: :func:`_write_outputs` for each item of a share of one batch."""
    return [_write_outputs(*item) for item in items]


def _shares(items: list[Any], count: int) -> list[list[Any]]:
    """``items`` in at most ``count`` consecutive, nearly equal, non-empty shares (in order)."""
    size = max(1, -(-len(items) // max(1, count)))
    return [items[start : start + size] for start in range(0, len(items), size)]


def _commit(item_dirs: list[Path], writes: list[Future]) -> list[dict[str, Any]]:
    """Commit-thread task for one batch: wait for its writer tasks (their records, in the order of
    ``item_dirs``; each output was fsynced), then write each item's ``item.json``, the done marker,
    last: present, its outputs are on the disk. It is not fsynced itself: lost or empty after a power
    cut, the rerun redoes the item."""
    records = [record for write in writes for record in write.result()]  # a writer's error is re-raised here
    for item_dir, record in zip(item_dirs, records, strict=True):
        if "error" not in record:
            write_json_atomic(item_dir / "item.json", record, durable=False)
    return records


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


#: The most decoding processes a job starts by default on an accelerator.
MAX_DECODING_WORKERS = 16
_RESAMPLE_ELEMENTS = 1 << 25  # at most 128 MiB of float32 maps on original pixels per resampling call


def maps_to_originals(maps: torch.Tensor, geometries: Sequence[Geometry]) -> list[torch.Tensor]:
    """Row i of ``maps`` (B, ...) on image i's original pixels (:meth:`Geometry.to_original`), float32
    on the CPU; rows that share a geometry (same-size images) are resampled in one call, and a row may
    be a view of its call's result."""
    rows_of: dict[Geometry, list[int]] = {}
    for row, geometry in enumerate(geometries):
        rows_of.setdefault(geometry, []).append(row)
    mapped: list[torch.Tensor] = [maps[0]] * len(geometries)
    for geometry, rows in rows_of.items():
        width, height = geometry.original_size
        per_call = max(1, _RESAMPLE_ELEMENTS // (maps[0, ..., 0, 0].numel() * width * height))
        for start in range(0, len(rows), per_call):
            chunk = rows[start : start + per_call]
            index = torch.tensor(chunk, device=maps.device)
            for row, original in zip(chunk, geometry.to_original(maps.index_select(0, index).float()).cpu()):
                mapped[row] = original
    return mapped


def _raw_rows(maps: torch.Tensor) -> list[np.ndarray]:
    """The rows of ``maps`` as float32 numpy arrays, each its own copy (one device copy for all)."""
    return [row.copy() for row in maps.detach().float().cpu().numpy()]


def heatmap_from_raw(raw: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The heatmap on original pixels (H0, W0) of a class-activation method's raw (u, v) map: what the
    ``heatmap`` output holds, ``to_original(normalize(upsample(raw, input_size)))`` (:class:`Geometry`
    from ``item.json``'s ``"geometry"``: ``Geometry.from_json``)."""
    if raw.dim() != 2:
        raise ValueError(
            f"raw must be one (u, v) class-activation map; got shape {tuple(raw.shape)} (input-gradient methods' "
            "raw maps are the gradients at the input's size: use geometry.to_original on them)"
        )
    width, height = geometry.input_size
    heatmap = normalize(upsample(raw.float()[None, None], (height, width)))
    return geometry.to_original(heatmap)[0, 0]


def _per_map(tensor: torch.Tensor, multi: bool) -> torch.Tensor:
    """Give single-target results the k axis (dim 1) of multi-target ones."""
    return tensor if multi else tensor.unsqueeze(1)


def _explain_group(
    x: torch.Tensor,
    geometries: Sequence[Geometry],
    explainers: _Explainers,
    runner: TaskRunner | None,
    settings: ExplainSettings,
    labels: Sequence[str] | None,
) -> tuple[dict[str, Explanation], list[int], list[tuple[int, str]], list[ItemTargets]]:
    """Explain one same-size group: ``(results, kept positions, failures, per kept image its targets)``."""
    if runner is None:  # the paper's class logit: the classes come free with the first explanation
        results, classes, logits = explainers.run(x, settings)
        probabilities = logits.float().softmax(dim=1)
        top = probabilities.topk(min(settings.show_top, probabilities.shape[1]), dim=1)
        items = []
        for b, ids in enumerate(classes.tolist()):
            predictions = [
                {"index": i, "label": class_name(i, labels), "probability": p}
                for p, i in zip(top.values[b].tolist(), top.indices[b].tolist())
            ]
            items.append(ItemTargets(ids, [class_name(i, labels) for i in ids], ids, predictions))
        return results, list(range(len(x))), [], items
    target, keep, failures, items = runner.prepare(x, geometries, settings)
    if not keep:
        return {}, [], failures, []
    if len(keep) < len(x):
        x = x[torch.tensor(keep, device=x.device)]
    return explainers.run_target(x, target), keep, failures, items


def default_pipeline(device: torch.device, files: int) -> tuple[int, int]:
    """``(decoding workers, writer threads)`` for ``files`` images on ``device`` when not given.

    On the CPU the model's own threads already use every core: decoding stays in this process (0:
    threads between model steps) and the writers are one thread per torch thread (0). On an accelerator
    the host decodes in DataLoader worker processes, every core but 3 (the main process and 2 writer
    threads; at least 1, at most 16 and files - 1).
    """
    if device.type == "cpu":
        return 0, 0
    cores = os.cpu_count() or 1
    return min(max(1, cores - 3), MAX_DECODING_WORKERS, max(0, files - 1)), 2


def explain_files(
    paths: Sequence[Path],
    loaded: LoadedModel,
    settings: ExplainSettings,
    out_dir: Path,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    workers: int = 0,
    writers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str, bool], None] | None = None,
) -> JobSummary:
    """Explain every file in ``paths`` and write the outputs under ``out_dir`` (see module docstring).

    Decoding runs in ``workers`` DataLoader processes, overlapping the model (on a GPU), or with
    ``workers=0`` in ``torch.get_num_threads()`` threads between model steps (on a CPU, where the
    model uses every core); drawing/encoding runs in ``writers`` threads (0: one per torch thread),
    beside the model on an accelerator and between model steps on a CPU (a batch's writes finish,
    while the next batch decodes, before that batch's explanation call). Under
    ``torchrun`` each rank takes a disjoint shard (``pending[rank::world]``) and rank 0 writes the
    merged manifest. Non-class tasks look at the model's output once per batch (no gradients) to build
    the target and the predictions.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    device = torch.device(device)
    rank, world = distributed_rank()
    device = rank_device(device, rank, world)
    report = report or (lambda line, is_error: None)
    summary = JobSummary()
    root = common_root(paths) if paths else Path(".")
    model = as_detector(loaded.model).to(device)
    explainers = _Explainers(model, settings.layer or loaded.default_layer, settings.methods)
    task = settings.task
    runner = None if task.name == "class" else TaskRunner(task, loaded, model, settings.show_top)
    pending: list[Path] = []
    records: dict[str, dict[str, Any]] = {}
    outputs_folder = out_dir.resolve()
    inside: list[Path] = []
    for path in paths:
        if is_inside(path, outputs_folder):
            inside.append(path)
            continue
        record = None
        if not overwrite:
            key = functools.partial(settings.key, loaded.name)
            record = finished_record(out_dir / output_folder(path, root), path, key)
        if record is not None:
            records[str(path)] = record
            summary.skipped += 1
            continue
        pending.append(path)
    shard = pending[rank::world]

    files = ImageFiles(shard, loaded.preprocess, keep_original=settings.draws)
    loader = decoded_batches(files, batch_size, workers, torch.get_num_threads(), device.type == "cuda")
    bar = _progress(len(shard), progress and rank == 0)
    in_flight: list[tuple[Path, Future, int]] = []  # (input, its batch's commit, its place in the batch)

    def drain(keep: int) -> None:
        while len(in_flight) > keep:
            path, commit, place = in_flight.pop(0)
            record = commit.result()[place]
            if "error" in record:
                fail(path, record["error"])
                continue
            records[str(path)] = record
            summary.done += 1
            shown = ", ".join(
                f"{p['index']} {p['label']} {p.get('probability', p.get('score', 0.0)):.3f}"
                for p in record["predictions"][:3]
            )
            report(f"{display_path(path)}: {shown}", False)
            bar.update(1)

    def fail(path: Path, error: str) -> None:
        summary.failed += 1
        summary.failures.append({**_source_fields(path), "error": error})
        report(f"skipped: {error}", True)
        bar.update(1)

    if rank == 0:
        for path in inside:
            fail(path, f"{display_path(path)} is inside the output folder {display_path(out_dir)}: outputs are "
                       "not explained again; move it out or choose another output folder")  # fmt: skip

    pool, writer_count = _writer_pool(writers), _writer_count(writers)
    commits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradcam-commit")
    # On a CPU device the model's threads use every core, and a writer beside them competes for a core
    # and for the GIL that every op of the forward takes: there a batch's writes finish before the next
    # model step, while the next batch decodes (benchmarks/folder_ab.py, 2 cores: neutral on Lite0,
    # +2-6 % images/s on ResNet-50).
    writes_between_steps = device.type == "cpu"
    writing: list[Future] = []  # the writer tasks submitted since the last model step
    try:
        for batch in loader:
            for index, error in batch["failures"]:
                fail(shard[index], error)
            if not batch["indices"]:
                continue
            for positions, group_x in same_size_groups(batch):
                if writes_between_steps:
                    wait(writing)  # a failed task raises through its batch's commit, in drain
                    writing.clear()
                x = normalize_pixels(group_x.to(device, non_blocking=True), loaded.preprocess)
                geometries = [batch["geometries"][p] for p in positions]
                results, kept, failures, items = _explain_group(
                    x, geometries, explainers, runner, settings, loaded.labels
                )
                for position, error in failures:
                    path = shard[batch["indices"][positions[position]]]
                    fail(path, f"{display_path(path)}: {error}")
                if not kept:
                    continue
                key = settings.key(loaded.name, explainers.layer)
                multi = {name: e.multi_target for name, e in results.items()}
                scores = {name: _per_map(e.scores, multi[name]).tolist() for name, e in results.items()}
                kept_geometries = [batch["geometries"][positions[p]] for p in kept]
                writes: list[tuple[Any, ...]] = []  # this group's items: _write_outputs' arguments
                inputs: list[Path] = []
                on_originals = {
                    name: maps_to_originals(_per_map(e.heatmap, multi[name]), kept_geometries)
                    if settings.on_original_pixels else None
                    for name, e in results.items()
                }  # fmt: skip
                raws = {
                    name: _raw_rows(_per_map(e.raw, multi[name])) if "raw" in settings.outputs else None
                    for name, e in results.items()
                }
                for row, (position, targets) in enumerate(zip(kept, items)):
                    at = positions[position]
                    path = shard[batch["indices"][at]]
                    geometry: Geometry = batch["geometries"][at]
                    maps = {name: None if rows is None else rows[row] for name, rows in on_originals.items()}
                    item_raws = {name: None if rows is None else rows[row] for name, rows in raws.items()}
                    pixels = batch["originals"][at]  # None when nothing is drawn
                    original = Image.fromarray(pixels.numpy()) if pixels is not None else None
                    record = {
                        **_source_fields(path),
                        "source": batch["identities"][at],
                        "size": list(geometry.original_size),
                        "geometry": geometry.to_json(),
                        "predictions": targets.predictions,
                        "classes": targets.classes,
                        "layer": explainers.layer,
                        "settings": key,
                        "task": task.describe(),
                        "targets": targets.ids,
                    }
                    item_scores = {name: values[row] for name, values in scores.items()}
                    item_dir = out_dir / output_folder(path, root)
                    writes.append((item_dir, record, original, maps, item_raws, item_scores, targets, settings))
                    inputs.append(path)
                tasks = [pool.submit(_write_items, share) for share in _shares(writes, writer_count)]
                writing.extend(tasks)
                commit = commits.submit(_commit, [item[0] for item in writes], tasks)
                in_flight.extend((path, commit, place) for place, path in enumerate(inputs))
            drain(keep=2 * batch_size)  # bounded: at most two batches of drawing behind
        drain(keep=0)
    finally:
        loader.close()  # stops the decoding threads (and restores the thread setting) even on an error
        pool.shutdown(wait=True)
        commits.shutdown(wait=True)  # finished items get their item.json even when the job stops early
        bar.close()
    layer = explainers.layer or next((r.get("layer") for r in records.values()), None)
    if world > 1:
        summary = _merge_ranks(summary, records)
    summary.items = [records[str(p)] for p in paths if str(p) in records]
    summary.layer = layer
    if rank == 0:
        manifest = {
            "model": loaded.name,
            "layer": summary.layer,
            "methods": list(settings.methods),
            "task": task.name,
            "items": summary.items,
            "failed": summary.failures,
        }
        remove_temp_files(out_dir)
        write_json_atomic(out_dir / "manifest.json", manifest)
    barrier()
    summary.seconds = time.perf_counter() - start
    return summary


def _merge_ranks(summary: JobSummary, records: dict[str, dict[str, Any]]) -> JobSummary:
    """Gather every rank's records and counts (all ranks end with the union)."""
    gathered = all_gather((records, summary.done, summary.failed, summary.failures))
    merged = JobSummary(skipped=summary.skipped)
    for rank_records, done, failed, failures in gathered:
        records.update(rank_records)
        merged.done += done
        merged.failed += failed
        merged.failures += failures
    return merged


def _writer_pool(writers: int) -> ThreadPoolExecutor:
    """Threads of this process that draw, encode and write the outputs (:func:`_writer_count` of them):
    zlib, PIL's resampling and file writes release the GIL. Threads end with the job's process, whatever
    ends it; the job shuts them down before it returns or raises."""
    return ThreadPoolExecutor(max_workers=_writer_count(writers), thread_name_prefix="gradcam-writer")


def _writer_count(writers: int) -> int:
    """How many writer threads :func:`_writer_pool` runs: ``writers``, or with 0 one per torch thread."""
    return writers if writers > 0 else max(1, torch.get_num_threads())


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", disable=not enabled or total == 0, leave=False)
