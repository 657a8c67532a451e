"""Scoring modified copies of one image without gradients (Score-CAM, Ablation-CAM).

The engine's ``MapContext.rescore`` returns the explained scores of N modified copies of image b.
Score-CAM also needs the class *probability* (softmax over the model's classes), and
Ablation-CAM's fast path feeds ONE copy of the image whose layer output the hook turns into N
ablated rows; :func:`make_rescorer` covers both (``probabilities=True``, ``rows=N``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import kwargs_for_image, make_rescorer

Rescorer = Callable[..., torch.Tensor]

__all__ = ["Rescorer", "kwargs_for_image", "make_rescorer"]
