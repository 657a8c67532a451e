"""Do class-discriminative maps survive an adversarial attack? (Selvaraju et al. 2017, §6.2 / supplement)

The Grad-CAM paper attacks an image so that the network no longer sees the true class, then shows that
Grad-CAM of the *original* class on the adversarial image still finds the object, while the map of the
adversarial class points at nothing in particular. :func:`adversarial_robustness` measures that:

for each ``epsilon`` (pixel units, [0, 1] image space) every image is attacked with :mod:`.adversarial`
(FGSM or PGD; untargeted: the loss ``-log sum_{c present} p_c`` goes up, so the probability leaves every
class present in the image, not only towards a second object's class; or targeted to ``target``), then,
on the adversarial image,

- ``success``: the percentage of images the model classified right before the attack (its top-1 class is
  one present in the image; targeted: and the target is not present) whose top-1 class is no longer
  present (untargeted) / is the target;
- the TRUE class's map: pointing accuracy (:class:`.PointingGame`, percent of maps), mean IoU of its
  box with the class's box and box accuracy at IoU >= 0.5 (:class:`.BoxAccuracy`), its energy in the box
  (:class:`.BoxEnergy`, over the maps that are not all zero; ``true_empty`` counts the others) and
  ``rank_corr``, Spearman's correlation with the clean image's map (:func:`.statistics.spearman`, mean
  over images; an all-zero map, which points at the image centre, has no ranks and is left out);
- the ADVERSARIAL class's map (the adversarial top-1, or the target): whether it points at any true
  object (pointing game against every ground-truth box) and its energy in them.

The true class of an image is the class present in it (its ground-truth objects) that the model scores
highest on the clean image. An item may list several classes with the same box as acceptable answers
(:func:`sample_items` does so for the bundled photos: tabby / tiger cat / Egyptian cat).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..imaging.geometry import Geometry, compute_geometry, image_pixels, resized_crop
from ..models import LoadedModel
from .adversarial import ATTACKS, AttackError, attack, pixel_logits
from .datasets import AnnotatedImage
from .localization import BoxAccuracy, BoxEnergy, PointingGame
from .sources import MapSource, make_sources
from .statistics import spearman

EPSILONS = tuple(level / 255 for level in (0, 1, 2, 4, 8, 16))

__all__ = ["EPSILONS", "AdversarialResult", "adversarial_robustness", "sample_items"]


@dataclass
class AdversarialExample:
    """One image for the figure: clean and adversarial pixels (uint8 (3, h, w)), both maps, the classes."""

    name: str
    clean: torch.Tensor
    adversarial: torch.Tensor
    true_map: torch.Tensor
    adversarial_map: torch.Tensor
    true_class: int
    adversarial_class: int


@dataclass
class AdversarialResult:
    """``rows``: one summary per (method, epsilon); ``per_image``: one row per (method, epsilon, image);
    ``examples[(method, epsilon)]``: the first images, for :func:`.adversarial_report.adversarial_figure`."""

    model: str
    labels: list[str] | None
    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[tuple[str, float], list[AdversarialExample]] = field(default_factory=dict)

    def label(self, cls: int) -> str:
        return self.labels[cls] if self.labels is not None and 0 <= cls < len(self.labels) else str(cls)


def sample_items() -> list[AnnotatedImage]:
    """The bundled sample photos with their hand-labelled boxes; every accepted ImageNet class of a photo
    is an object with the photo's box (so the true class is whichever of them Lite0 prefers)."""
    from ..assets import sample_annotations, sample_path

    items = []
    for name, truth in sample_annotations().items():
        box = tuple(float(v) for v in truth["box"])
        objects = tuple((int(c), box) for c in truth["accepted_indices"])
        items.append(AnnotatedImage(name, objects, path=sample_path(name), annotated_size=tuple(truth["size"])))
    return items


@dataclass
class _Batch:
    names: list[str]
    pixels: torch.Tensor  # (B, 3, h, w) in [0, 1]
    geometries: list[Geometry]
    truths: list[tuple[tuple[int, tuple[float, ...]], ...]]


def _load_batch(items: Sequence[AnnotatedImage], loaded: LoadedModel, device: torch.device) -> _Batch:
    """Resize and crop each image as the model's preprocessing does; pixels stay in [0, 1], unnormalised."""
    crops, geometries, truths = [], [], []
    interpolation = loaded.preprocess.pil_resample.name.lower()
    for item in items:
        image = item.load()
        geometry = compute_geometry(image.size, loaded.preprocess)
        crops.append(resized_crop(image_pixels(image), geometry, interpolation))
        geometries.append(geometry)
        truths.append(item.objects_for(image.size))
    pixels = torch.stack(crops).to(device=device, dtype=torch.float32).div(255)
    return _Batch([item.name for item in items], pixels, geometries, truths)


def _normalised(pixels: torch.Tensor, loaded: LoadedModel) -> torch.Tensor:
    """``(pixels - mean) / std``: the same operations as :func:`~gradcam.imaging.geometry.normalize_pixels`."""
    mean = torch.tensor(loaded.preprocess.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(loaded.preprocess.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _predict(loaded: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return pixel_logits(loaded.model, pixels, loaded.preprocess.mean, loaded.preprocess.std)


def _present(truths: Sequence, logits: torch.Tensor) -> tuple[torch.Tensor, list[set[int]]]:
    """The true class of each image (the present class the model scores highest) and the present sets."""
    present = [{int(c) for c, _ in truth} for truth in truths]
    if any(not classes for classes in present):
        raise AttackError("every image needs at least one ground-truth object (its true class)")
    true = [max(classes, key=lambda c: float(logits[b, c])) for b, classes in enumerate(present)]
    return torch.tensor(true, device=logits.device), present


def _as_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.detach().mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


@dataclass
class _Metrics:
    pointing: PointingGame
    boxes: BoxAccuracy
    energy: BoxEnergy
    adversarial_pointing: PointingGame
    adversarial_energy: BoxEnergy
    correlations: list[float] = field(default_factory=list)
    attacked: int = 0  # images classified right before the attack
    fooled: int = 0
    linf: float = 0.0

    @classmethod
    def create(cls, tolerance: float, threshold: float) -> _Metrics:
        return cls(PointingGame(tolerance), BoxAccuracy(threshold), BoxEnergy(),
                   PointingGame(tolerance), BoxEnergy())  # fmt: skip

    def row(self) -> dict[str, Any]:
        finite = [r for r in self.correlations if not math.isnan(r)]
        boxes = self.boxes.summary()
        return {
            "images": len(self.correlations),
            "attacked": self.attacked,
            "success": 100.0 * self.fooled / self.attacked if self.attacked else math.nan,
            "true_pointing": self.pointing.summary()["overall"],
            "true_iou": boxes["mean_iou"],
            "true_box_accuracy": boxes["accuracy"],
            "true_energy": self.energy.summary()["energy"],
            "true_empty": self.energy.empty,
            "rank_corr": sum(finite) / len(finite) if finite else math.nan,
            "adv_pointing": self.adversarial_pointing.summary()["overall"],
            "adv_energy": self.adversarial_energy.summary()["energy"],
            "linf_255": 255.0 * self.linf,
        }


@dataclass(frozen=True)
class _Plan:
    """What to run: the attack's options, the targeted class, the metrics' settings, the figure's size."""

    epsilons: tuple[float, ...]
    kind: str
    options: dict[str, Any]
    target: int | None
    tolerance: float
    threshold: float
    examples: int


def _score(
    metrics: _Metrics, maps: torch.Tensor, classes: torch.Tensor, batch: _Batch, fooled: list[bool]
) -> dict[str, list]:
    """Update ``metrics`` with the (B, 2, H, W) maps of [true, adversarial] classes; per-image values back."""
    true_maps = maps[:, 0]
    points = metrics.pointing.update(true_maps, classes[:, 0], batch.truths, batch.geometries)
    boxes = metrics.boxes.update(true_maps, classes[:, 0], batch.truths, batch.geometries)
    metrics.energy.update(true_maps, classes[:, 0], batch.truths, batch.geometries)
    chosen = [b for b, hit in enumerate(fooled) if hit]
    adversarial_hits: dict[int, bool] = {}
    adversarial_energy: dict[int, float] = {}
    if chosen:  # the adversarial class's map against every true object (relabelled to that class)
        cls = classes[chosen, 1]
        truths = [tuple((int(c), box) for _, box in batch.truths[b]) for b, c in zip(chosen, cls.tolist())]
        geometries = [batch.geometries[b] for b in chosen]
        for record in metrics.adversarial_pointing.update(maps[chosen, 1], cls, truths, geometries):
            adversarial_hits[chosen[record["image"]]] = record["hit"]
        for record in metrics.adversarial_energy.update(maps[chosen, 1], cls, truths, geometries):
            adversarial_energy[chosen[record["image"]]] = record["energy"]
    return {
        "true_hit": [r["hit"] for r in points],
        "true_iou": [r["iou"] for r in boxes],
        "adv_hit": [adversarial_hits.get(b) for b in range(len(fooled))],
        "adv_energy": [adversarial_energy.get(b) for b in range(len(fooled))],
    }


def _run_batch(
    loaded: LoadedModel,
    batch: _Batch,
    sources: list[MapSource],
    plan: _Plan,
    metrics: dict[tuple[str, float], _Metrics],
    result: AdversarialResult,
) -> None:
    """Attack one batch at every epsilon and score every method's maps on it."""
    logits = _predict(loaded, batch.pixels)
    true, present = _present(batch.truths, logits)
    # attacked: classified right, and (targeted) the target is not an object of the image already
    correct = [int(logits[b].argmax()) in present[b] and plan.target not in present[b] for b in range(len(present))]
    if plan.target is None:  # untargeted: move the probability off every class present
        labels = torch.zeros_like(logits, dtype=torch.bool)
        for b, classes in enumerate(present):
            labels[b, sorted(classes)] = True
    else:
        labels = torch.full_like(true, plan.target)
    clean = {s.name: s.maps(_normalised(batch.pixels, loaded), true[:, None])[:, 0] for s in sources}
    for epsilon in plan.epsilons:
        adversarial = attack(loaded.model, batch.pixels, labels, epsilon, plan.kind, **plan.options)
        predicted = _predict(loaded, adversarial).argmax(1)
        adversarial_class = predicted if plan.target is None else torch.full_like(true, plan.target)
        fooled = [
            correct[b] and (int(p) == plan.target if plan.target is not None else int(p) not in present[b])
            for b, p in enumerate(predicted.tolist())
        ]
        linf = float((adversarial - batch.pixels).abs().amax())
        classes = torch.stack([true, adversarial_class], dim=1)
        for source in sources:
            maps = source.maps(_normalised(adversarial, loaded), classes)
            current = metrics[(source.name, epsilon)]
            current.attacked += sum(correct)
            current.fooled += sum(fooled)
            current.linf = max(current.linf, linf)
            values = _score(current, maps, classes, batch, fooled)
            values["rank_corr"] = [spearman(clean[source.name][b], maps[b, 0]) for b in range(len(fooled))]
            current.correlations.extend(values["rank_corr"])
            for b, image in enumerate(batch.names):
                result.per_image.append({
                    "method": source.name, "epsilon_255": round(255 * epsilon, 4), "image": image,
                    "true_class": int(true[b]), "clean_top1": int(logits[b].argmax()),
                    "adversarial_top1": int(predicted[b]), "correct": correct[b], "fooled": fooled[b],
                    **{key: value[b] for key, value in values.items()},
                })  # fmt: skip
            _keep_examples(result, source.name, epsilon, batch, adversarial, maps, classes, plan.examples)


def _keep_examples(
    result: AdversarialResult,
    method: str,
    epsilon: float,
    batch: _Batch,
    adversarial: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    count: int,
) -> None:
    kept = result.examples.setdefault((method, epsilon), [])
    for b in range(min(count - len(kept), len(batch.names))):
        kept.append(
            AdversarialExample(
                batch.names[b],
                _as_uint8(batch.pixels[b]),
                _as_uint8(adversarial[b]),
                maps[b, 0].detach().cpu(),
                maps[b, 1].detach().cpu(),
                int(classes[b, 0]),
                int(classes[b, 1]),
            )
        )


def _check_settings(epsilons: Sequence[float], kind: str, target: int | None, loaded: LoadedModel) -> tuple:
    values = tuple(float(e) for e in epsilons)
    if not values or not all(math.isfinite(e) and 0.0 <= e <= 1.0 for e in values):
        raise AttackError(f"epsilons must be one or more values in [0, 1] (pixel units, 4/255 = 0.0157); got {values}")
    if kind not in ATTACKS:
        raise AttackError(f"attack must be one of {', '.join(ATTACKS)}; got {kind!r}")
    classes = len(loaded.labels) if loaded.labels is not None else None
    if target is not None and (target < 0 or (classes is not None and target >= classes)):
        raise AttackError(f"target must be a class index in [0, {classes}); got {target}")
    return tuple(dict.fromkeys(values))


def adversarial_robustness(
    loaded_model: LoadedModel,
    items: Sequence[AnnotatedImage],
    method: str | Sequence[str] = "gradcam",
    epsilons: Sequence[float] = EPSILONS,
    attack: str = "pgd",
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    target: int | None = None,
    layer: Any = None,
    tolerance: float = 15.0,
    threshold: float = 0.15,
    batch_size: int = 16,
    examples: int = 4,
    seed: int = 0,
) -> AdversarialResult:
    """Attack every item at every epsilon and measure how the maps move (see the module docstring).

    ``method``: one registered method name or several (the attack is made once, every method explains
    it); ``attack``: ``"fgsm"`` or ``"pgd"`` (``steps``, ``step_size`` (None: ``2.5 epsilon / steps``),
    ``random_start`` seeded by ``seed``); ``target``: a class index for a targeted attack (None:
    untargeted). ``tolerance``: pointing tolerance in original-image pixels; ``threshold``: the box
    threshold. The model runs where its parameters are; it is left as found.
    """
    values = _check_settings(epsilons, attack, target, loaded_model)
    if batch_size < 1 or examples < 0:
        raise AttackError(f"batch_size must be >= 1 and examples >= 0; got {batch_size} and {examples}")
    methods = [method] if isinstance(method, str) else list(dict.fromkeys(method))
    sources, failures = make_sources(loaded_model.model, methods, baselines=(), layer=layer)
    if failures:
        from ..errors import MethodError

        raise MethodError("; ".join(f"{name}: {reason}" for name, reason in failures.items()))
    options: dict[str, Any] = {"targeted": target is not None, "mean": loaded_model.preprocess.mean,
                               "std": loaded_model.preprocess.std}  # fmt: skip
    if attack == "pgd":
        generator = torch.Generator().manual_seed(seed)
        options.update(steps=steps, step_size=step_size, random_start=random_start, generator=generator)
    plan = _Plan(values, attack, options, target, tolerance, threshold, examples)
    settings = {"attack": attack, "epsilons_255": [round(255 * e, 4) for e in values], "target": target,
                "methods": methods, "images": len(items), "tolerance": tolerance, "threshold": threshold,
                **({"steps": steps, "step_size": step_size, "random_start": random_start, "seed": seed}
                   if attack == "pgd" else {})}  # fmt: skip
    result = AdversarialResult(loaded_model.name, loaded_model.labels, settings)
    metrics = {(s.name, e): _Metrics.create(tolerance, threshold) for s in sources for e in values}
    parameter = next(loaded_model.model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    for start in range(0, len(items), batch_size):
        batch = _load_batch(items[start : start + batch_size], loaded_model, device)
        _run_batch(loaded_model, batch, sources, plan, metrics, result)
    result.rows = [
        {"method": name, "epsilon_255": round(255 * epsilon, 4), **metric.row()}
        for (name, epsilon), metric in metrics.items()
    ]
    return result
