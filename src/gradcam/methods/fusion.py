"""Multi-layer fusion: one method on several layers, maps combined at the input resolution."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..capture import model_guard
from ..errors import LayerError, MethodError
from ..explanation import Explanation
from ..layers import LayerInfo, probe_layers, resolve_layer
from ..targets import OutputSelector, Target
from .base import Explainer, LayerMethod, check_input, normalize, usable_input

logger = logging.getLogger("gradcam")

REDUCTIONS = ("mean", "max", "product")


def stage_layers(infos: Sequence[LayerInfo]) -> list[str]:
    """The automatic layers: among the candidate feature maps (in completion order), the last one of
    every run at the same spatial resolution, i.e. the output of each stage of the network."""
    candidates = [info for info in infos if info.candidate]
    stages = [
        info.name
        for info, after in zip(candidates, [*candidates[1:], None])
        if after is None or after.shape[2:] != info.shape[2:]
    ]
    if not stages:
        raise LayerError("no layer outputs a (B, K, u, v) feature map with u*v > 1; pass layers= explicitly")
    return stages


class MultiLayerCAM(Explainer):
    """A layer method on several layers, fused: ``F = reduce_l normalize(Up(L_l))``, ``heatmap = normalize(F)``.

    Each layer's map is computed by ``method`` (a registered name such as ``"layercam"``, the
    default as in LayerCAM's paper, or a :class:`LayerMethod` subclass; ``**method_options`` go to
    its constructor), upsampled to the input size and min-max normalised, so every layer counts
    the same; ``reduce="mean"`` averages them (pytorch-grad-cam's convention), ``"max"`` keeps the
    strongest layer per pixel, ``"product"`` multiplies them (RefineCAM: a pixel stays only where every
    layer agrees). ``raw`` is the fused map F (B, [k,] H, W) before the final
    normalisation; ``weights`` is None; ``layer`` lists the layers joined by ``+``. ``layers=None``
    picks the output of every stage (the last feature map at each resolution). All layers explain the
    same classes (the first layer's, so a top-1 target is resolved once).
    """

    name = "multilayer"

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[nn.Module | str] | nn.Module | str | None = None,
        *,
        method: str | type[LayerMethod] = "layercam",
        reduce: str = "mean",
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **method_options: Any,
    ) -> None:
        super().__init__(model, output=output, eval_mode=eval_mode)
        if "target_layers" in method_options:
            raise LayerError(
                "MultiLayerCAM(model, target_layers=[...]) is pytorch-grad-cam's spelling; pass layers=[...]"
            )
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}; got {reduce!r}")
        self.method = self._method_class(method)
        self.reduce = reduce
        self.options = dict(method_options, output=output, eval_mode=eval_mode, reshape=reshape)
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        if layers is not None and len(layers) == 0:
            raise LayerError("layers is empty: give at least one layer (or None for every stage)")
        self.explainers: list[LayerMethod] | None = None
        if layers is not None:
            self.explainers = [self._explainer(name) for name, _ in (resolve_layer(model, layer) for layer in layers)]

    @staticmethod
    def _method_class(method: str | type[LayerMethod]) -> type[LayerMethod]:
        if isinstance(method, type) and issubclass(method, LayerMethod):
            return method
        from . import METHODS  # the registry imports this module

        spec = METHODS.get(method) if isinstance(method, str) else None
        if spec is None or not spec.uses_layer or not issubclass(spec.cls, LayerMethod) or spec.call_options:
            layer_methods = [n for n, s in METHODS.items() if issubclass(s.cls, LayerMethod) and not s.call_options]
            raise MethodError(
                f"method must be a layer method ({', '.join(layer_methods)}) or a LayerMethod class; got {method!r}"
            )
        return spec.cls

    def _explainer(self, layer: str) -> LayerMethod:
        return self.method(self.model, layer, **self.options)

    @property
    def layer_names(self) -> list[str] | None:
        """The layers in use (None until the first call when they are chosen automatically)."""
        return None if self.explainers is None else [e.layer_name for e in self.explainers]

    def _resolve(self, x: torch.Tensor, forward_kwargs: Mapping[str, Any] | None) -> list[LayerMethod]:
        if self.explainers is None:
            kwargs = {
                key: value[:1] if isinstance(value, torch.Tensor) and value.shape[:1] == x.shape[:1] else value
                for key, value in (forward_kwargs or {}).items()
            }
            with model_guard(self.model, self.eval_mode), torch.inference_mode(False):
                names = stage_layers(probe_layers(self.model, usable_input(x[:1]), kwargs))
            self.explainers = [self._explainer(name) for name in names]
            logger.info("gradcam: layers chosen automatically: %s", ", ".join(names))
        return self.explainers

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        x = check_input(x, self.model)
        explanations = []
        for explainer in self._resolve(x, forward_kwargs):
            same = target if not explanations or explanations[0].classes is None else explanations[0].classes
            explanations.append(explainer(x, same, counterfactual=counterfactual, forward_kwargs=forward_kwargs))
        maps = torch.stack([e.heatmap for e in explanations])  # already upsampled and normalised
        fused = {"mean": torch.mean, "max": torch.amax, "product": torch.prod}[self.reduce](maps, dim=0)
        first = explanations[0]
        return Explanation(
            heatmap=normalize(fused, x.dim() - 2),
            raw=fused,
            scores=first.scores,
            method=self.name,
            classes=first.classes,
            layer="+".join(e.layer for e in explanations),
            counterfactual=counterfactual,
            logits=first.logits,
        )


class RefineCAM(MultiLayerCAM):
    """RefineCAM (TorchCAM's multi-layer refinement, "How to Evaluate and Refine your CAM"): Grad-CAM++ on
    every stage, ``F = prod_l normalize(Up(L_l))``, ``heatmap = normalize(F)``.

    :class:`MultiLayerCAM` with ``method="gradcam++"`` and ``reduce="product"`` as defaults. The maps are
    multiplied at the input resolution; TorchCAM multiplies them at the largest layer's grid and leaves
    the upsampling to the caller, which differs from this by the interpolation of a product against the
    product of interpolations.
    """

    name = "refinecam"

    def __init__(
        self, model: nn.Module, layers: Sequence[nn.Module | str] | nn.Module | str | None = None, **options: Any
    ) -> None:
        options.setdefault("method", "gradcam++")
        options.setdefault("reduce", "product")
        super().__init__(model, layers, **options)
