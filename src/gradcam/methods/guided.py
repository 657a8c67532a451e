"""Guided Backpropagation (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al., 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from ..capture import guided_relu_backward, model_guard, reentrant_checkpoint_error
from ..explanation import Explanation
from ..targets import OutputSelector, Target, resolve_target
from .base import Explainer, check_input, finish, require_finite, run_model, usable_input
from .gradcam import GradCAM


def input_gradients(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``d scores[:, j] / d inputs`` for each of the k columns, (B, k, C, H, W)."""
    k = scores.shape[1]
    try:
        grads = [torch.autograd.grad(scores[:, j].sum(), inputs, retain_graph=j < k - 1)[0] for j in range(k)]
    except RuntimeError as error:
        diagnosed = reentrant_checkpoint_error(error, "the input")
        if diagnosed is None:
            raise
        raise diagnosed from error
    return torch.stack(grads, dim=1)


class InputGradient(Explainer):
    """The plain input gradient ``dy/dx`` (Simonyan et al., 2014, "Deep inside convolutional
    networks"), signed, per channel, from one forward and backward pass; the paper's saliency map
    is its absolute max over channels. ``counterfactual=True`` explains ``-y``."""

    name = "gradient"

    def backward_rule(self) -> AbstractContextManager:
        """A context changing how the backward pass treats some ops (none for the plain gradient)."""
        return nullcontext()

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        x = check_input(x, self.model)
        sign = -1.0 if counterfactual else 1.0
        with model_guard(self.model, self.eval_mode), torch.inference_mode(False), torch.enable_grad():
            inputs = usable_input(x).detach().requires_grad_(True)
            resolved = resolve_target(target, run_model(self.model, inputs, forward_kwargs), x.shape[0], self.output)
            with self.backward_rule():
                grads = input_gradients(sign * resolved.scores, inputs).detach()
        if x.device.type != "cpu":  # checked after the work is queued: no mid-call sync
            require_finite(x)
        grads = finish(grads, resolved.multi)
        return Explanation(
            heatmap=grads,
            raw=grads,
            scores=finish(resolved.scores.detach(), resolved.multi),
            method=self.name,
            classes=None if resolved.classes is None else finish(resolved.classes, resolved.multi),
            counterfactual=counterfactual,
            logits=resolved.logits,
        )


class GuidedBackprop(InputGradient):
    """Guided Backpropagation (Springenberg et al., 2015): the input gradient ``dy/dx`` where every
    ReLU's backward is ``max(g, 0) * [x > 0]``.

    Only positive gradients pass, and only through positive inputs. ``heatmap`` and ``raw`` are the
    input-space gradients (B, C, H, W). ``counterfactual=True`` explains ``-y``. Activations other
    than ReLU / ReLU6 keep their ordinary derivative.
    """

    name = "guided-backprop"

    def backward_rule(self) -> AbstractContextManager:
        return guided_relu_backward()


class GuidedGradCAM(Explainer):
    """Guided Grad-CAM: Guided Backprop ⊙ the upsampled, normalised Grad-CAM map (Hadamard product).

    Built from the two methods: ``heatmap = G (B, C, H, W) * L_up (B, 1, H, W)``; ``raw`` and
    ``weights`` are Grad-CAM's. Both parts explain the same classes (and ``-y`` when counterfactual).
    """

    name = "guided-gradcam"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
    ) -> None:
        super().__init__(model, output=output, eval_mode=eval_mode)
        self.gradcam = GradCAM(model, layer, output=output, eval_mode=eval_mode, reshape=reshape)
        self.guided = GuidedBackprop(model, output=output, eval_mode=eval_mode)

    @property
    def layer_name(self) -> str | None:
        return self.gradcam.layer_name

    def __call__(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        counterfactual: bool = False,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        cam = self.gradcam(x, target, counterfactual=counterfactual, forward_kwargs=forward_kwargs)
        same_target = target if cam.classes is None else cam.classes
        guided = self.guided(x, same_target, counterfactual=counterfactual, forward_kwargs=forward_kwargs)
        return Explanation(
            heatmap=guided.heatmap * cam.heatmap.unsqueeze(1 - x.dim()),  # L_up broadcast over C
            raw=cam.raw,
            scores=cam.scores,
            method=self.name,
            weights=cam.weights,
            classes=cam.classes,
            layer=cam.layer,
            counterfactual=counterfactual,
            logits=cam.logits,
        )
