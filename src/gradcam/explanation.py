"""The result of one explanation call: tensors only, on the input's device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL import Image

    from .imaging.geometry import Geometry


@dataclass(frozen=True)
class Explanation:
    """What an explainer returns.

    Shapes use B images and, when the target asked for k classes per image, an extra k axis:

    - ``heatmap``: the displayable map at the input's size. Class-activation methods give
      ``(B, H, W)`` / ``(B, k, H, W)`` in [0, 1] (per-map min-max normalised, an all-zero map stays
      zero); input-gradient methods give ``(B, C, H, W)`` / ``(B, k, C, H, W)``.
    - ``raw``: the map before upsampling and normalisation, ``ReLU(sum_k alpha_k A_k)`` at the layer's
      resolution ``(B, u, v)`` / ``(B, k, u, v)``; for input-gradient methods the gradient itself.
    - ``weights``: the channel weights ``alpha`` as used, ``(B, K)`` / ``(B, k, K)`` (already negated
      for counterfactual maps), or None for methods without channel weights.
    - ``classes``: the class indices explained, ``(B,)`` / ``(B, k)``; None for callable targets.
    - ``scores``: the explained scalar ``y`` for each map, ``(B,)`` / ``(B, k)`` (never negated).
    - ``layer``: the name of the layer whose activations were used (None for input-space methods).
    - ``logits``: the model's class scores (B, num_classes) from the same forward pass, detached, for
      class-index targets (None for callable targets) — predictions come free with the maps.
    """

    heatmap: torch.Tensor
    raw: torch.Tensor
    scores: torch.Tensor
    method: str
    weights: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    layer: str | None = None
    counterfactual: bool = False
    logits: torch.Tensor | None = None

    @property
    def multi_target(self) -> bool:
        """True when the maps carry a k axis (the target was a (B, k) tensor or a (B, k) callable)."""
        return self.scores.dim() == 2

    def show(
        self,
        image: Image.Image | Sequence[Image.Image] | None = None,
        geometry: Geometry | Sequence[Geometry] | None = None,
        labels: Sequence[str] | None = None,
        *,
        alpha: float = 0.5,
        colormap: str = "jet",
        tile_height: int = 160,
    ) -> Image.Image:
        """A grid picture (rows = images, columns = the k targets), each map overlaid on its original image when
        ``image`` (one or B) and ``geometry`` (their :class:`~gradcam.imaging.Geometry`) are given; titles give
        the class label (``labels``) and the explained score. A PIL image: it displays inline in a notebook
        and saves with ``.save(path)``. See :func:`gradcam.imaging.grids.explanation_grid`."""
        from .imaging.grids import explanation_grid

        return explanation_grid(self, image, geometry, labels, alpha=alpha, colormap=colormap, tile_height=tile_height)

    def _repr_png_(self) -> bytes:
        """Jupyter's inline display: :meth:`show` without images (the coloured maps), as PNG bytes."""
        from .imaging.grids import png_bytes

        return png_bytes(self.show())

    def to(self, device: torch.device | str) -> Explanation:
        """A copy with every tensor moved to ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Explanation(
            heatmap=move(self.heatmap),
            raw=move(self.raw),
            scores=move(self.scores),
            method=self.method,
            weights=move(self.weights),
            classes=move(self.classes),
            layer=self.layer,
            counterfactual=self.counterfactual,
            logits=move(self.logits),
        )
