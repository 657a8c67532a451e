"""Sanity checks for saliency maps: does the map depend on the model's weights and on the explained class?

- **Model-parameter randomisation** (MPRT; Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, "Sanity Checks
  for Saliency Maps", NeurIPS 2018, §3): the layers are re-initialised from the top (logits) down, and at each
  step the map of the randomised model is compared with the map of the trained one (:mod:`.similarity`: SSIM,
  Spearman with and without absolute values). ``cascading``: step ``i`` has the top ``i`` layers randomised;
  ``independent``: step ``i`` has only layer ``i`` randomised, every other layer trained. The randomised
  model is a ``copy.deepcopy``: the user's model is never touched.
- **Random logit** (Sixt, Granz and Landgraf, "When explanations lie", ICML 2020; Quantus ``RandomLogit``):
  SSIM between the map of the explained class and the map of a random other class, drawn per image from
  ``(seed, image index)``. A method whose map does not depend on the class scores exactly 1.

Layers. Every module with parameters of its own and a ``reset_parameters()`` method (convolutions, linear
layers, normalisation layers, ...) in registration order, taken as the forward order; step ``i`` of the top-down
order randomises the ``i``-th last. Each is re-initialised by its own ``reset_parameters()`` (PyTorch's default
initialisation) under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``, so the global random state is
untouched, a layer gets the same random values in both modes, and with ``seed = s + 1`` the models are exactly
those of Quantus 0.6.0's ``get_random_layer_generator(seed=s)``. Normalisation layers' running statistics are
reset too (mean 0, variance 1). A layer reset under the seed that built it gets its initial values back (an
untrained model made right after ``torch.manual_seed(seed)``): randomise with another seed. Layers on an
accelerator draw from that device's generator, so their values differ from the CPU's for the same seed.

Verdict. The cascading curve is read as a whole, not only at its last step: a method **fails** when its maps,
averaged over the cascading steps (the area under the similarity-vs-step curve, divided by the steps), keep a
mean SSIM above :data:`THRESHOLD` = 0.5 with the trained model's maps -- they still look the same while ever
more of the model is random. The number is the midpoint between unchanged maps (1) and unrelated ones (0).
Reading the last step alone lets a method pass that ignores most of the model: on the synthetic CNN Guided
Backprop keeps SSIM > 0.5 for 10 of the 15 steps (everything but the first convolutions randomised) and
drops to 0.02 only at the end. SSIM is the verdict's measure because "the map looks the same" is
the paper's criterion (Adebayo et al. 2018, Fig. 2 and 4: Guided Backprop and Guided Grad-CAM stay visibly
alike their originals while the gradient and Grad-CAM decay towards 0). A method that passes by SSIM but
whose maps keep a mean rank correlation of absolute values above the threshold is **partial**: the ordering
of its pixels, mostly the image's own contrast, survives the randomisation although the map's structure does
not. A map that ignores the model (the baselines) has similarity 1 and fails. :meth:`SanityCheck.curves` has
the whole curve; ``*_last`` the last step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..capture import model_guard
from ..targets import select_output
from .similarity import SIMILARITIES, map_similarities, nanmean
from .sources import MapSource, MethodSource, method_source, split_name
from .state import Mergeable

__all__ = [
    "MODES",
    "THRESHOLD",
    "SanityCheck",
    "parameter_randomisation",
    "random_logit",
    "randomisable_layers",
    "randomised_models",
]

MODES = ("cascading", "independent")
THRESHOLD = 0.5

#: ``(x, classes (B, k)) -> maps (B, k, H, W)``
MapFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``model -> MapFunction``: builds the explainer for a (randomised) model
MapFactory = Callable[[nn.Module], MapFunction]


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules with parameters of their own and a ``reset_parameters()``, in registration order."""
    return [
        name
        for name, module in model.named_modules()
        if callable(getattr(module, "reset_parameters", None)) and any(True for _ in module.parameters(recurse=False))
    ]


def _reset(module: nn.Module, seed: int) -> None:
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(seed)
        module.reset_parameters()


def randomised_models(
    model: nn.Module, mode: str = "cascading", seed: int = 0, layers: Sequence[str] | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """``(layer, randomised copy)`` per step, top layer first (see the module docstring). The copy is one
    ``copy.deepcopy`` of ``model`` changed in place from step to step: use it before asking for the next."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    names = randomisable_layers(model) if layers is None else list(layers)
    known = dict(model.named_modules())
    missing = [name for name in names if name not in known or not hasattr(known[name], "reset_parameters")]
    if missing or not names:
        raise ValueError(f"layers must name modules with reset_parameters(); got {missing or 'none'}")
    randomised = copy.deepcopy(model)
    trained = {key: value.clone() for key, value in randomised.state_dict().items()}
    for name in reversed(names):
        if mode == "independent":
            randomised.load_state_dict(trained)
        _reset(randomised.get_submodule(name), seed)
        yield name, randomised


def map_factory(explainer: str | Callable[[nn.Module], Any], layer: Any = None) -> MapFactory:
    """A :data:`MapFactory` from a registered method's name (built with ``layer`` and its call options) or from
    ``explainer(model)`` returning an explainer whose call ``(x, classes)`` gives an Explanation or maps."""
    if isinstance(layer, nn.Module) or (
        isinstance(layer, (list, tuple)) and any(isinstance(m, nn.Module) for m in layer)
    ):
        raise TypeError("layer must be given by name for the sanity checks: a randomised copy has its own modules")
    if isinstance(explainer, str):
        split_name(explainer)  # a ValueError now for an unknown name, not at the first randomised model

        def build(model: nn.Module) -> MapFunction:
            return method_source(explainer, model, layer).maps

        return build
    if not callable(explainer):
        raise TypeError(f"explainer must be a method name or a callable model -> explainer; got {explainer!r}")

    def build_callable(model: nn.Module) -> MapFunction:
        made = explainer(model)

        def maps(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            out = made(x, classes)
            if hasattr(out, "heatmap"):
                return MethodSource("explainer", lambda *_: out).maps(x, classes)
            return out.reshape(*classes.shape, *out.shape[-2:])

        return maps

    return build_callable


def source_factory(source: MapSource, layer: Any = None, first: int = 0) -> MapFactory:
    """The :data:`MapFactory` of an evaluation source: a registered method rebuilt on each model with ``layer``;
    a baseline's own maps (of the batch whose first image is ``first``), whatever the model."""
    if source.is_baseline:
        return lambda model: lambda x, classes: source.maps(x, classes, first)
    return map_factory(source.name, layer)


def image_rows(records: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per image: ``mprt_ssim`` / ``mprt_spearman`` (absolute values), means over the cascading steps (the
    verdict's numbers), and the random-logit ``random_logit_ssim`` with the ``random_class`` drawn."""
    steps: dict[int, list[dict[str, Any]]] = {}
    rows: dict[int, dict[str, Any]] = {}
    for r in records:
        if r["test"] == "cascading":
            steps.setdefault(r["image"], []).append(r)
        elif r["test"] == "random-logit":
            rows.setdefault(r["image"], {}).update({"random_logit_ssim": r["ssim"], "random_class": r["other"]})
    for image, cascade in steps.items():
        rows.setdefault(image, {}).update(
            {
                "mprt_ssim": nanmean([r["ssim"] for r in cascade]),
                "mprt_spearman": nanmean([r["spearman_abs"] for r in cascade]),
            }
        )
    return rows


def _classes(target: int | Sequence[int] | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """(B, 1) long classes from one class or one per image."""
    classes = torch.as_tensor(target, device=device).long().reshape(-1)
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.numel() != batch:
        raise ValueError(f"target must be one class or one per image ({batch}); got {classes.numel()}")
    return classes.reshape(batch, 1)


class SanityCheck(Mergeable):
    """MPRT (both modes) and the random-logit test, TorchCAM-style ``update`` / ``summary`` / ``reset``.

    ``update(model, factory, x, classes, first=0)``: ``factory`` a :data:`MapFactory` (see :func:`map_factory`),
    ``classes`` (B,) the explained classes, ``first`` the index of ``x[0]`` in the run (seeds the random
    classes). One record per image and step (``test``: the mode or ``"random-logit"``).
    """

    def __init__(
        self,
        modes: Sequence[str] = MODES,
        seed: int = 0,
        threshold: float = THRESHOLD,
        random_logit: bool = True,
        layers: Sequence[str] | None = None,
    ) -> None:
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise ValueError(f"modes must be a subset of {MODES}; got {tuple(modes)}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        self.modes, self.seed, self.threshold = tuple(modes), seed, threshold
        self.random_logit, self.layers = random_logit, None if layers is None else list(layers)
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def update(
        self, model: nn.Module, factory: MapFactory, x: torch.Tensor, classes: torch.Tensor, first: int = 0
    ) -> list[dict[str, Any]]:
        classes = _classes(classes, x.shape[0], x.device)
        original = factory(model)(x, classes)[:, 0]
        records: list[dict[str, Any]] = []
        for mode in self.modes:
            for step, (name, randomised) in enumerate(randomised_models(model, mode, self.seed, self.layers), 1):
                maps = factory(randomised)(x, classes)[:, 0]
                records += self._records(mode, step, name, original, maps, first)
        if self.random_logit:
            others = self._other_classes(model, x, classes[:, 0], first)
            pair = factory(model)(x, torch.stack([classes[:, 0], others], dim=1))
            for record in self._records("random-logit", 0, None, pair[:, 0], pair[:, 1], first):
                b = record["image"] - first
                record["class"], record["other"] = int(classes[b, 0]), int(others[b])
                records.append(record)
        self.records.extend(records)
        return records

    @staticmethod
    def _records(test: str, step: int, layer: str | None, a: torch.Tensor, b: torch.Tensor, first: int) -> list:
        values = map_similarities(a, b)
        return [
            {"test": test, "step": step, "layer": layer, "image": first + i, **{k: values[k][i] for k in SIMILARITIES}}
            for i in range(a.shape[0])
        ]

    def _other_classes(self, model: nn.Module, x: torch.Tensor, classes: torch.Tensor, first: int) -> torch.Tensor:
        """A class other than ``classes[b]`` per image, uniform over the others, drawn from ``(seed, first + b)``."""
        with model_guard(model), torch.no_grad():
            count = select_output(model(x)).shape[-1]
        if count < 2:
            raise ValueError("the random-logit test needs a model with at least 2 classes")
        draws = [
            int(torch.randint(count - 1, (1,), generator=torch.Generator().manual_seed((self.seed << 32) + first + b)))
            for b in range(x.shape[0])
        ]
        offsets = torch.tensor(draws, device=classes.device) + 1
        return (classes + offsets) % count

    def curves(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{mode: {layer: {similarity: mean over images}}}``, layers in step order (top first)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for mode in self.modes:
            steps: dict[int, list[dict[str, Any]]] = {}
            for record in self.records:
                if record["test"] == mode:
                    steps.setdefault(record["step"], []).append(record)
            out[mode] = {
                rows[0]["layer"]: {k: nanmean([r[k] for r in rows]) for k in SIMILARITIES}
                for _, rows in sorted(steps.items())
            }
        return out

    def summary(self) -> dict[str, Any]:
        """The curves; ``mprt_ssim`` / ``mprt_spearman`` (absolute values): means over the cascading curve, and
        ``mprt_ssim_last`` / ``mprt_spearman_last`` at its last step; ``random_logit_ssim``; ``passed`` (the
        SSIM verdict; None when cascading was not run or no map was seen) and ``verdict``: ``"pass"``,
        ``"partial"`` (passed, but the mean rank correlation is above the threshold) or ``"FAIL"``."""
        curves = self.curves()
        out: dict[str, Any] = {"curves": curves, "threshold": self.threshold, "passed": None, "verdict": None}
        cascade = list(curves.get("cascading", {}).values())
        if cascade:
            out["mprt_ssim"] = nanmean([step["ssim"] for step in cascade])
            out["mprt_spearman"] = nanmean([step["spearman_abs"] for step in cascade])
            out["mprt_ssim_last"], out["mprt_spearman_last"] = cascade[-1]["ssim"], cascade[-1]["spearman_abs"]
            if out["mprt_ssim"] == out["mprt_ssim"]:
                out["passed"] = out["mprt_ssim"] <= self.threshold
                ranks_kept = out["mprt_spearman"] > self.threshold  # False for NaN
                out["verdict"] = "FAIL" if not out["passed"] else "partial" if ranks_kept else "pass"
        logit = [r for r in self.records if r["test"] == "random-logit"]
        if logit:
            out["random_logit_ssim"] = nanmean([r["ssim"] for r in logit])
            out["random_logit_spearman"] = nanmean([r["spearman"] for r in logit])
        out["images"] = len({r["image"] for r in self.records})
        return out


def parameter_randomisation(
    model: nn.Module,
    explainer: str | Callable[[nn.Module], Any],
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    mode: str = "cascading",
    *,
    layer: Any = None,
    seed: int = 0,
    layers: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """MPRT curve of one method: ``{layer: {"ssim", "spearman", "spearman_abs"}}`` (means over the images),
    top layer first; ``explainer`` a registered method's name or ``model -> explainer`` (see :func:`map_factory`)."""
    check = SanityCheck(modes=(mode,), seed=seed, random_logit=False, layers=layers)
    check.update(model, map_factory(explainer, layer), x, target)
    return check.curves()[mode]


def random_logit(
    model: nn.Module,
    explainer: str | Callable[[nn.Module], Any],
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    *,
    layer: Any = None,
    seed: int = 0,
) -> dict[str, float]:
    """Random-logit test of one method: mean ``ssim`` / ``spearman`` / ``spearman_abs`` between the maps of
    ``target`` and of a random other class per image."""
    check = SanityCheck(modes=(), seed=seed)
    records = check.update(model, map_factory(explainer, layer), x, target)
    return {k: nanmean([r[k] for r in records]) for k in SIMILARITIES}
