"""Score-CAM (Wang et al., CVPR Workshops 2020)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..targets import OutputSelector, ResolvedTarget, Target
from ._rescoring import Rescorer, make_rescorer
from .base import LayerMethod, MapContext, normalize, upsample

SCORES = ("probability", "logit")
WEIGHTINGS = ("softmax", "raw")


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int, or a ValueError naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    return batch_size


class ScoreCAM(LayerMethod):
    """Score-CAM: ``L = ReLU(sum_k alpha_k A_k)`` with ``alpha`` from forward passes, no gradients.

    For each channel k of image x the mask ``M_k = s(Up(A_k))`` is the bilinearly upsampled map
    min-max normalised to [0, 1] (a flat map gives an all-zero mask), and the channel's score is the
    target's score on the masked image, ``S_k = f_c(x ⊙ M_k)``. Following the paper's Algorithm 1,
    ``S_k`` is the class probability ``softmax(f(x ⊙ M_k))_c`` (``score="probability"``) and the
    weights are ``alpha = softmax_k(S_k - f_c(X_b))``; the baseline term is constant over k, so it
    cancels in the softmax and no baseline pass is needed. Options: ``score="logit"`` uses the raw
    logit (pytorch-grad-cam and TorchCAM do this), ``weighting="raw"`` uses ``alpha_k = S_k`` (the
    authors' released code). Callable targets always use their scalar as is.

    ``batch_size`` masked images go through the model per forward pass (K passes per image in all).
    ``counterfactual=True`` uses ``-S_k``.
    """

    name = "scorecam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        batch_size: int = 32,
        score: str = "probability",
        weighting: str = "softmax",
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
        **unknown: Any,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape, **unknown)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}; got {score!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
        self.batch_size = check_batch_size(batch_size)
        self.score = score
        self.weighting = weighting

    def _rescorer(
        self,
        x: torch.Tensor,
        target: Target,
        resolved: ResolvedTarget,
        forward_kwargs: Mapping[str, Any] | None,
    ) -> Rescorer:
        return make_rescorer(
            self.model, x, target, resolved, forward_kwargs, self.output, probabilities=self.score == "probability"
        )

    def mask_scorer(self, context: MapContext) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """For one call: ``score(masks, b) -> (n, k)``, the scores of image b under n masks (n, 1, *X) in
        [0, 1]; here ``f(x_b ⊙ M)``. Variants (SS-CAM, IS-CAM) score each mask differently."""

        def score(masks: torch.Tensor, b: int) -> torch.Tensor:
            image = context.inputs[b : b + 1]
            return context.rescore(image * masks.to(image.dtype), b).float()

        return score

    def channel_scores(self, context: MapContext) -> torch.Tensor:
        """``S_k`` for every image, channel and target: (B, K, k), ``batch_size`` masked images per pass."""
        activations, inputs = context.activations, context.inputs
        size = tuple(inputs.shape[2:])
        score = self.mask_scorer(context)
        per_image = []
        for b in range(inputs.shape[0]):
            chunks = []
            for start in range(0, activations.shape[1], self.batch_size):
                maps = activations[b : b + 1, start : start + self.batch_size]
                masks = normalize(upsample(maps, size), len(size))[0].unsqueeze(1)  # (n, 1, *X)
                chunks.append(score(masks, b))
            per_image.append(torch.cat(chunks))
        return torch.stack(per_image)

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        scores = context.sign * self.channel_scores(context).transpose(1, 2)  # (B, k, K)
        return torch.softmax(scores, dim=-1) if self.weighting == "softmax" else scores
