"""SS-CAM (Wang, Naidu et al., 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization")."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..targets import OutputSelector
from ._noise import check_samples
from .base import MapContext
from .scorecam import ScoreCAM


class SSCAM(ScoreCAM):
    """SS-CAM: Score-CAM whose channel scores are averaged over noisy masks,
    ``S_k = 1/N sum_i f_c(x ⊙ (M_k + delta_i))``, ``delta_i ~ N(0, std^2)`` at the input's resolution.

    ``M_k`` and the weights are Score-CAM's (:class:`~gradcam.ScoreCAM`: ``alpha = softmax_k S_k``; the
    class probability by default, ``score="logit"`` as TorchCAM). The noise is added to the masks,
    one noise map per channel shared by the image's colour channels (TorchCAM's ``SSCAM``; defaults
    ``samples=35``, ``std=2.0`` are the paper's and TorchCAM's). It is drawn from a CPU generator
    seeded with ``seed`` for every call (image after image, for each chunk of ``batch_size`` channels
    ``samples`` draws of (n, 1, *X)), so the maps are reproducible and the global RNG untouched;
    ``seed=None`` draws fresh noise. K * samples forward passes per image.
    """

    name = "sscam"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        samples: int = 35,
        std: float = 2.0,
        seed: int | None = 0,
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
        if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
            raise ValueError(f"std must be a finite number >= 0; got {std!r}")
        self.samples, self.std, self.seed = samples, float(std), seed

    def mask_scorer(self, context: MapContext) -> Callable[[torch.Tensor, int], torch.Tensor]:
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(self.seed))
        plain = super().mask_scorer(context)

        def score(masks: torch.Tensor, b: int) -> torch.Tensor:
            total = 0
            for _ in range(self.samples):
                noise = torch.randn(masks.shape, generator=generator, dtype=torch.float32).to(masks.device)
                total = total + plain(masks + self.std * noise, b)
            return total / self.samples

        return score
