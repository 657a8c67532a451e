"""Embedding targets: cosine similarity of the image embedding with a text or image embedding.

``EmbeddingSimilarity(r)``: ``y = cos(e_b, r) = e_b·r / (|e_b| |r|)``; :func:`embed` and
:func:`text_embedding` compute references without gradients.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import model_guard
from ..errors import TargetError
from .composition import TaskTarget, finish
from .resolution import OutputSelector, select_output

EMBEDDING_KEYS: tuple[str, ...] = ("image_embeds", "pooler_output", "embeddings")


def _require_extra(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or fail naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f'{what} needs {module}, an optional extra: pip install "gradcam[{extra}]"') from None


def _embedding(output: Any, select: OutputSelector) -> torch.Tensor:
    embedding = select_output(output, select, EMBEDDING_KEYS)
    if embedding.dim() > 2 and all(s == 1 for s in embedding.shape[2:]):
        embedding = embedding.flatten(1)
    if embedding.dim() != 2:
        raise TargetError(f"an embedding must be (B, D); got shape {tuple(embedding.shape)}; pass select=")
    return embedding


class EmbeddingSimilarity(TaskTarget):
    """Cosine similarity of the image embedding with a reference: ``y = e·r / (|e| |r|)``.

    The reference is a text embedding (CLIP-style prompt) or another image's embedding (see
    :func:`embed`). ``reference``: (D,) for every image -> (B,); (k, D): k references, one map
    each -> (B, k). With ``per_image=True``: (B, D) -> (B,) or (B, k, D) -> (B, k). The image
    embedding is a (B, D) output, or ``image_embeds`` / ``pooler_output`` of a ``ModelOutput``.
    """

    def __init__(self, reference: torch.Tensor, *, per_image: bool = False, select: OutputSelector = None) -> None:
        if not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
            raise TargetError("reference must be a floating-point embedding tensor")
        allowed = (2, 3) if per_image else (1, 2)
        if reference.dim() not in allowed:
            expected = "(B, D) or (B, k, D)" if per_image else "(D,) or (k, D)"
            raise TargetError(f"reference must be {expected}; got shape {tuple(reference.shape)}")
        self.reference = reference.detach()
        self.per_image = per_image
        self._per_image = {"reference": 2} if per_image else {}
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        embedding = _embedding(output, self.select)
        reference = self.reference.to(device=embedding.device, dtype=embedding.dtype)
        if reference.shape[-1] != embedding.shape[1]:
            raise TargetError(
                f"reference has dimension {reference.shape[-1]} but the image embedding has {embedding.shape[1]}"
            )
        if self.per_image and reference.shape[0] != embedding.shape[0]:
            raise TargetError(f"per-image reference has {reference.shape[0]} rows for {embedding.shape[0]} images")
        if self.per_image:
            reference = reference if reference.dim() == 3 else reference[:, None]
            multi = self.reference.dim() == 3
        else:
            reference = reference.expand(1, -1) if reference.dim() == 1 else reference
            reference = reference[None].expand(embedding.shape[0], -1, -1)
            multi = self.reference.dim() == 2
        return finish(F.cosine_similarity(embedding[:, None, :], reference, dim=-1), multi)


def embed(
    model: nn.Module,
    x: torch.Tensor,
    *,
    select: OutputSelector = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The (N, D) embedding ``model(x, **forward_kwargs)`` gives, without gradients, in eval mode.

    For a reference image: ``EmbeddingSimilarity(embed(image_model, other_image), per_image=...)``.
    """
    with model_guard(model), torch.no_grad():
        return _embedding(model(x, **(forward_kwargs or {})), select).detach()


def text_embedding(
    model: nn.Module,
    texts: Sequence[str] | torch.Tensor,
    *,
    tokenizer: Any = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Text embeddings (N, D) of a CLIP-style model (``model.get_text_features``), without gradients.

    ``texts``: token ids (N, L), or strings with ``tokenizer`` (a callable returning ``input_ids`` /
    ``attention_mask``, or the name / local path of a Hugging Face tokenizer, which needs the
    ``hf`` extra).
    """
    if not callable(getattr(model, "get_text_features", None)):
        raise TargetError(f"{type(model).__name__} has no get_text_features(); embed the text with your model")
    if isinstance(texts, torch.Tensor):
        inputs: dict[str, Any] = {"input_ids": texts}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
    else:
        if isinstance(texts, str):
            texts = [texts]
        if tokenizer is None:
            raise TargetError("text strings need tokenizer= (a tokenizer object, or a Hugging Face name/path)")
        if isinstance(tokenizer, (str, Path)):
            transformers = _require_extra("transformers", "hf", "a Hugging Face tokenizer")
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer))
        encoded = tokenizer(list(texts), padding=True, return_tensors="pt")
        inputs = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    with model_guard(model), torch.no_grad():
        features = model.get_text_features(**inputs)
    if not isinstance(features, torch.Tensor):  # transformers >= 5 returns a ModelOutput
        features = select_output(features, None, ("text_embeds", "pooler_output"))
    return features.detach()
