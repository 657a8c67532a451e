"""Finer-CAM (Zhang et al., CVPR 2025, "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
Explanation"): a layer method explaining a class AGAINST its most similar classes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..capture import model_guard
from ..errors import TargetError
from ..explanation import Explanation
from ..targets import OutputSelector, Target, TopK, resolve_target
from .base import Explainer, LayerMethod, check_input, finish, run_model, usable_input


class FinerTarget:
    """The Finer-CAM score of logits (B, C): ``y_c - alpha * sum_j w_j y_j`` over the compared classes j of
    each explained class c, ``w = softmax_j(y_j)`` over those classes only (pytorch-grad-cam's
    ``FinerWeightedTarget``, ``sum_j p_j (y_c - alpha y_j) / sum_j p_j``, in a form that cannot underflow).
    ``main`` (B, k) and ``compared`` (B, k, n) are class indices; returns (B, k)."""

    def __init__(self, main: torch.Tensor, compared: torch.Tensor, alpha: float) -> None:
        self.main, self.compared, self.alpha = main, compared, float(alpha)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        batch, k, n = self.compared.shape
        y_main = logits.gather(1, self.main.to(logits.device))
        y_compared = logits.gather(1, self.compared.to(logits.device).reshape(batch, k * n)).view(batch, k, n)
        weights = torch.softmax(y_compared, dim=-1)
        return (weights * (y_main.unsqueeze(-1) - self.alpha * y_compared)).sum(dim=-1)


class FinerCAM(Explainer):
    """Finer-CAM: a layer method (Grad-CAM by default) explaining ``y_c - alpha * sum_j w_j y_j``.

    The compared classes j of class c are the classes at ``comparison`` ranks (default 1, 2, 3) when all
    classes are sorted by ``|y_j - y_c|`` on the image (rank 0 is c itself): the classes the model finds
    most similar, whose shared evidence the difference cancels, leaving what tells c apart. ``w_j`` are
    their softmax probabilities renormalised over them; ``alpha`` (default 1) is the comparison strength
    (0 gives the plain method). pytorch-grad-cam's ``FinerCAM``; its weights stay in the graph, as here.
    ``method`` is a registered layer-method name or a :class:`LayerMethod` class (``**method_options`` go
    to it). Targets are class indices (None: the top class; (B, k): k classes per image); ``scores`` are the
    Finer-CAM differences, ``classes`` the explained classes.
    """

    name = "finercam"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        method: str | type[LayerMethod] = "gradcam",
        alpha: float = 1.0,
        comparison: Sequence[int] = (1, 2, 3),
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
        **method_options: Any,
    ) -> None:
        super().__init__(model, output=output, eval_mode=eval_mode)
        from .fusion import MultiLayerCAM  # resolves registered names; the registry imports this module

        if not comparison or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in comparison):
            raise ValueError(f"comparison must be ranks >= 1 (1 = the most similar class); got {comparison!r}")
        self.alpha, self.comparison = float(alpha), tuple(comparison)
        self.explainer = MultiLayerCAM._method_class(method)(
            model, layer, output=output, eval_mode=eval_mode, reshape=reshape, **method_options
        )

    @property
    def layer_name(self) -> str | None:
        return self.explainer.layer_name

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        if callable(target) and not isinstance(target, (torch.Tensor, TopK)):
            raise TargetError("Finer-CAM compares class scores: give class indices (or None for the top class)")
        x = check_input(x, self.model)
        with model_guard(self.model, self.eval_mode), torch.inference_mode(False), torch.no_grad():
            output = run_model(self.model, usable_input(x), forward_kwargs)
            resolved = resolve_target(target, output, x.shape[0], self.output)
            logits, main = resolved.logits, resolved.classes  # (B, C), (B, k); normal tensors (autograd saves them)
            ranks = [r for r in self.comparison if r < logits.shape[1]]
            if not ranks:
                raise TargetError(f"Finer-CAM needs classes to compare with; the model has {logits.shape[1]}")
            distance = (logits.unsqueeze(1) - logits.gather(1, main).unsqueeze(-1)).abs()  # (B, k, C)
            distance.scatter_(-1, main.unsqueeze(-1), -1.0)  # the class itself first, whatever the ties
            compared = distance.argsort(dim=-1, stable=True)[..., ranks]
        e = self.explainer(
            x, FinerTarget(main, compared, self.alpha), counterfactual=counterfactual, forward_kwargs=forward_kwargs
        )
        multi = resolved.multi
        return Explanation(
            heatmap=finish(e.heatmap, multi),
            raw=finish(e.raw, multi),
            scores=finish(e.scores, multi),
            method=self.name,
            weights=None if e.weights is None else finish(e.weights, multi),
            classes=finish(main, multi),
            layer=e.layer,
            counterfactual=counterfactual,
            logits=logits,
        )
