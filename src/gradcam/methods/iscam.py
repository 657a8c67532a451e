"""IS-CAM (Naidu et al., 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based explanations")."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..targets import OutputSelector
from ._noise import check_samples
from .base import MapContext
from .scorecam import ScoreCAM

PATHS = ("cumulative", "linear")


class ISCAM(ScoreCAM):
    """IS-CAM: Score-CAM whose channel scores integrate over scaled masks, ``S_k = 1/N sum_i f_c(c_i x ⊙ M_k)``.

    With ``path="cumulative"`` (the default: the authors' code as TorchCAM's ``ISCAM`` runs it) the
    scale grows by i/N at step i, ``c_i = sum_{j<=i} j/N = i (i+1) / (2N)``, which reaches (N+1)/2;
    ``path="linear"`` uses ``c_i = i/N``, a Riemann sum of the straight path from the black image to
    ``x ⊙ M_k`` as in Integrated Gradients. ``M_k`` and the weights are Score-CAM's
    (:class:`~gradcam.ScoreCAM`; ``score="logit"`` as TorchCAM). N * K forward passes per image, no
    randomness.
    """

    name = "iscam"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        samples: int = 10,
        path: str = "cumulative",
        batch_size: int = 32,
        score: str = "probability",
        weighting: str = "softmax",
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
    ) -> None:
        super().__init__(
            model, layer, batch_size=batch_size, score=score, weighting=weighting, output=output,
            eval_mode=eval_mode, reshape=reshape,
        )  # fmt: skip
        check_samples(samples)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}; got {path!r}")
        self.samples, self.path = samples, path

    def scales(self) -> list[float]:
        """The N scales ``c_i`` of the masked image."""
        n = self.samples
        if self.path == "linear":
            return [i / n for i in range(1, n + 1)]
        return [i * (i + 1) / (2 * n) for i in range(1, n + 1)]

    def mask_scorer(self, context: MapContext) -> Callable[[torch.Tensor, int], torch.Tensor]:
        plain = super().mask_scorer(context)
        scales = self.scales()

        def score(masks: torch.Tensor, b: int) -> torch.Tensor:
            return sum(plain(scale * masks, b) for scale in scales) / len(scales)

        return score
