"""Per-item targets of the non-class tasks (segmentation, detection, similarity) and what each item records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from ..capture import model_guard
from ..errors import TargetError
from ..imaging.geometry import (
    Geometry,
)
from ..models import LoadedModel
from ..targets import match_detections, select_output
from ..targets.dense import SEGMENTATION_KEYS, _detections
from ..targets.embedding import _embedding
from .settings import CLASS_TASKS, ExplainSettings, TaskOptions


def class_name(index: int, labels: Sequence[str] | None) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else f"class {index}"


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
        from ..cli.targets import TASKS

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
        from ..cli.targets import load_tensor

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
        reference = load_tensor(options.embedding, "--embedding").detach().float()
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
        from ..cli.targets import target_from_options

        logits = select_output(output).detach().float()
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
        from ..cli.targets import target_from_options

        logits = select_output(output, None, SEGMENTATION_KEYS).detach()
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
        from ..cli.targets import target_from_options

        detections = _detections(output, None, len(x))
        options = self.options
        keep, failures, chosen, references, ious = [], [], [], [], []
        for b, (found, geometry) in enumerate(zip(detections, geometries)):
            count = len(found["scores"])
            if options.box is not None:
                reference = geometry.box_from_original(options.box)
                boxes = found["boxes"].detach().float()
                overlap = box_iou(boxes, torch.tensor([reference], device=boxes.device))[:, 0]
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
        from ..cli.targets import target_from_options

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
