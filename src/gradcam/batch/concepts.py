"""Concept pictures of image files (``gradcam explain --method dff`` / ``--concepts N``), image by image.

For each image, in ``OUT/<escaped relative path>/`` (the folder the other methods' outputs use):
``dff_concepts.png`` (every concept in its colour over the photo, a legend naming each concept's best
classes), ``dff_concepts.npy`` (n, H0, W0) float32 concept maps on the original pixels, and
``dff_concepts.json`` (per concept: strength, classes, logits and probabilities of its embedding, and the
fit's relative error); ``OUT/concepts.json`` indexes the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..imaging.concepts import draw_concepts
from ..imaging.geometry import preprocess
from ..imaging.io import ImageReadError, display_path, load_image, save_npy_atomic, save_png_atomic, write_json_atomic
from ..methods.dff import Concepts, DeepFeatureFactorization
from ..models import LoadedModel
from .inputs import common_root, output_folder
from .targets import class_name

STEM = "dff_concepts"


@dataclass(frozen=True)
class ConceptSettings:
    """How many concepts per image, how many classes name each, the layer (None: the model's default or the
    automatic choice) and the overlay's opacity at full strength."""

    n_components: int = 4
    top_k: int = 3
    layer: str | None = None
    alpha: float = 0.6


def concept_records(concepts: Concepts, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    """Per concept of image 0: strength, and its top classes with the logits and softmax probabilities that
    the classifier gives its embedding."""
    probabilities = concepts.scores[0].softmax(dim=-1) if concepts.scores is not None else None
    records = []
    for c in range(concepts.raw.shape[1]):
        record: dict[str, Any] = {"concept": c, "strength": float(concepts.strength[0, c])}
        if probabilities is not None and concepts.classes is not None:
            ids = concepts.classes[0, c].tolist()
            record["classes"] = [
                {"index": i, "label": class_name(i, labels), "logit": float(concepts.scores[0, c, i]),
                 "probability": float(probabilities[c, i])}
                for i in ids
            ]  # fmt: skip
        records.append(record)
    return records


def legend(records: list[dict[str, Any]]) -> list[str]:
    """One line per concept: ``concept 0 (31%): tiger cat 0.74, tabby 0.12``."""
    lines = []
    for record in records:
        named = ", ".join(f"{c['label']} {c['probability']:.2f}" for c in record.get("classes", []))
        lines.append(f"concept {record['concept']} ({record['strength']:.0%})" + (f": {named}" if named else ""))
    return lines


def explain_concepts(
    paths: Sequence[Path],
    loaded: LoadedModel,
    settings: ConceptSettings,
    out_dir: Path,
    *,
    device: torch.device | str = "cpu",
    report: Callable[[str, bool], None] | None = None,
) -> dict[str, Any]:
    """Write the concept outputs of every image in ``paths`` (see the module) and ``OUT/concepts.json``; an
    unreadable image is reported and listed under ``failed``. Returns the index."""
    report = report or (lambda line, is_error: None)
    model = loaded.model.to(device)
    method = DeepFeatureFactorization(
        model, settings.layer or loaded.default_layer, n_components=settings.n_components, top_k=settings.top_k
    )
    root = common_root(paths) if paths else Path(".")
    index: dict[str, Any] = {"model": loaded.name, "n_components": settings.n_components, "items": [], "failed": []}
    for path in paths:
        try:
            image = load_image(path)
        except ImageReadError as error:
            index["failed"].append({"input": display_path(path), "error": str(error)})
            report(f"skipped: {error}", True)
            continue
        x, geometry = preprocess(image, loaded.preprocess)
        concepts = method(x[None].to(device))
        maps = geometry.to_original(concepts.heatmap[0].detach().float().cpu()).clamp(0, 1)
        records = concept_records(concepts, loaded.labels)
        folder = out_dir / output_folder(path, root)
        folder.mkdir(parents=True, exist_ok=True)
        save_png_atomic(folder / f"{STEM}.png", draw_concepts(image, maps, legend(records), settings.alpha))
        save_npy_atomic(folder / f"{STEM}.npy", maps.numpy())
        item = {
            "input": display_path(path),
            "layer": concepts.layer,
            "error": float(concepts.error[0]),
            "concepts": records,
            "picture": str(folder / f"{STEM}.png"),
            "maps": str(folder / f"{STEM}.npy"),
        }
        write_json_atomic(folder / f"{STEM}.json", item)
        index["items"].append(item)
        report(f"{display_path(path)}: {legend(records)[0]}", False)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "concepts.json", index)
    return index
