"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, "Deep Feature Factorization for Concept
Discovery", ECCV 2018).

A layer's activations, rectified, are factorised by non-negative matrix factorisation: per image,
``V = max(A, 0)`` as a (K channels x u*v positions) matrix, ``V ≈ W H`` with ``W`` (K, n) the concepts'
feature vectors and ``H`` (n, u*v) where each concept is (:func:`gradcam.methods.nmf.nmf`). The maps need no
target and no gradient. Each concept is named by the classifier: its feature vector goes through the
model's head (the linear layer after global average pooling) as if it filled the whole image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..capture import model_guard
from ..errors import InputError, MethodError
from ..layers import resolve_layer
from ..targets import OutputSelector, select_output
from .base import LayerMethod, check_input, normalize, upsample, usable_input
from .nmf import nmf

__all__ = ["Concepts", "DeepFeatureFactorization", "classifier_head", "deep_feature_factorization"]


@dataclass(frozen=True)
class Concepts:
    """The concepts of a batch of B images, n per image, strongest first.

    ``heatmap`` (B, n, *input size) each concept map upsampled like a Grad-CAM map and min-max normalised;
    ``raw`` (B, n, *S) the factor ``H`` at the layer, scaled so every map's maximum is 1;
    ``embeddings`` (B, K, n) the factor ``W`` on that scale (column c: the feature vector where concept c is
    strongest); ``strength`` (B, n) each concept's share of the reconstruction, ``sum(W[:, c]) sum(H[c])`` over
    ``sum(W H)`` (the concepts are ordered by it); ``scores`` (B, n, C) the head's scores of each embedding;
    ``classes`` / ``class_scores`` (B, n, top_k) the best classes per concept and their scores; ``error`` (B,)
    the relative reconstruction error ``||V - W H||_F / ||V||_F``; ``logits`` the model's own scores. A joint
    fit scales each map to peak 1 over the whole batch, and its embeddings, strengths and error are the batch's.
    """

    heatmap: torch.Tensor
    raw: torch.Tensor
    embeddings: torch.Tensor
    strength: torch.Tensor
    scores: torch.Tensor | None
    classes: torch.Tensor | None
    class_scores: torch.Tensor | None
    error: torch.Tensor
    layer: str
    logits: torch.Tensor | None = None


def classifier_head(model: nn.Module, channels: int, head: nn.Module | str | None = None) -> tuple[str, nn.Module]:
    """The module that turns a pooled (N, K) feature vector into class scores: ``head`` (a module or dotted
    name), or by default the last ``nn.Linear`` of ``model`` with ``in_features == channels``."""
    if isinstance(head, nn.Module) and not any(m is head for m in model.modules()):
        return type(head).__name__, head  # a head of the caller's own, outside the model
    if head is not None:
        return resolve_layer(model, head)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    if not found:
        linears = [f"'{n}' ({m.in_features} features)" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        seen = f"; its linear layers: {', '.join(linears)}" if linears else "; it has no nn.Linear"
        raise MethodError(
            f"no classifier head reads the layer's {channels} channels: {type(model).__name__} has no nn.Linear "
            f"with in_features == {channels}{seen}; pass head= (a module mapping (N, {channels}) features to "
            "class scores), or head=False for the concept maps alone"
        )
    return found[-1]


def _ordered(w: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W``, ``H`` rescaled so each row of ``H`` peaks at 1 (all-zero rows stay zero) and sorted by strength."""
    peak = h.amax(dim=2)
    scale = torch.where(peak > 0, peak, 1)
    w, h = w * scale[:, None, :], h / scale[:, :, None]
    mass = w.sum(dim=1) * h.sum(dim=2)  # (B, n): the entries of W[:, c] H[c] summed
    strength = mass / mass.sum(dim=1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
    order = strength.argsort(dim=1, descending=True, stable=True)
    w = w.gather(2, order[:, None, :].expand_as(w))
    h = h.gather(1, order[:, :, None].expand_as(h))
    return w, h, strength.gather(1, order)


class DeepFeatureFactorization(LayerMethod):
    """Deep Feature Factorization: per image, ``max(A, 0) ≈ W H`` by NMF (K x u*v, n concepts).

    ``n_components`` concepts per image; ``iterations``, ``tol`` and ``seed`` go to :func:`nmf` (HALS, float32
    or ``dtype``). ``head`` names the classifier that scores each concept's embedding (default: the last
    ``nn.Linear`` whose ``in_features`` is the layer's channel count; ``False``: no scores). ``top_k``
    classes are kept per concept. ``joint=True`` factorises the whole batch together (``V`` is K x B*u*v,
    one ``W`` shared by every image, the paper's multi-image setting). Calling it returns :class:`Concepts`,
    not an :class:`~gradcam.Explanation`: the maps belong to concepts, not to targets.

    ``max(A, 0)``: NMF needs a non-negative matrix, and the layer's output is clamped at 0 (for a layer whose
    ReLU follows it, e.g. Lite0's ``bn2``, this is that ReLU's output; a ReLU6's cap at 6 is not applied).
    """

    name = "dff"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        n_components: int = 4,
        head: nn.Module | str | bool | None = None,
        top_k: int = 3,
        joint: bool = False,
        iterations: int = 200,
        tol: float = 1e-4,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
        **unknown: Any,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape, **unknown)
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise InputError(f"n_components must be a positive int; got {n_components!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive int; got {top_k!r}")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
        self.n_components, self.top_k, self.joint, self.dtype = n_components, top_k, bool(joint), dtype
        self.head = head
        self.fit_options = {"iterations": iterations, "tol": tol, "seed": seed}

    def __call__(self, x: torch.Tensor, *, forward_kwargs: Mapping[str, Any] | None = None) -> Concepts:  # type: ignore[override]
        """The concepts of every image of ``x`` (B, C, H, W) (one forward pass, no backward)."""
        x = check_input(x, self.model)
        with model_guard(self.model, self.eval_mode), torch.inference_mode(False):
            x = usable_input(x)
            name, captured, output = self._forward(x, forward_kwargs, record_graph=False)
            grid = self._as_grid(captured, name, x.shape[0], x, forward_kwargs).detach()
            w, h, strength, error = self._factorise(grid.to(self.dtype).clamp(min=0))
            raw = h.reshape(h.shape[:2] + grid.shape[2:])
            heatmap = normalize(upsample(raw.float(), tuple(x.shape[2:])), x.dim() - 2)
            scores = self._scores(w, grid.shape[1])
        logits = select_output(output, self.output).detach() if self.head is not False else None
        top = None if scores is None else scores.topk(min(self.top_k, scores.shape[-1]), dim=-1)
        return Concepts(
            heatmap=heatmap,
            raw=raw,
            embeddings=w,
            strength=strength,
            scores=scores,
            classes=None if top is None else top.indices,
            class_scores=None if top is None else top.values,
            error=error,
            layer=name,
            logits=logits,
        )

    def _factorise(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``W`` (B, K, n), ``H`` (B, n, u*v) scaled and ordered by :func:`_ordered`, the strengths (B, n) and
        the errors (B,) of the rectified grid ``v`` (B, K, *S); jointly, one fit of (K, B*u*v) shared by all."""
        batch, channels = v.shape[:2]
        matrix = v.reshape(batch, channels, -1)
        if not self.joint:
            fit = nmf(matrix, self.n_components, **self.fit_options)
            return (*_ordered(fit.W, fit.H), fit.error)
        stacked = matrix.transpose(0, 1).reshape(channels, -1)  # (K, B*u*v), image by image
        fit = nmf(stacked, self.n_components, **self.fit_options)
        w, h, strength = _ordered(fit.W[None], fit.H[None])
        h = h[0].reshape(self.n_components, batch, -1).transpose(0, 1)
        return w.expand(batch, -1, -1), h, strength.expand(batch, -1), fit.error.expand(batch)

    def _scores(self, w: torch.Tensor, channels: int) -> torch.Tensor | None:
        """The head's scores (B, n, C) of every concept embedding, or None with ``head=False``."""
        if self.head is False:
            return None
        name, head = classifier_head(self.model, channels, None if self.head is True else self.head)
        with torch.no_grad():
            embeddings = w.transpose(1, 2)  # (B, n, K)
            parameter = next(head.parameters(), None)
            like = parameter if parameter is not None else embeddings
            try:
                scores = head(embeddings.reshape(-1, channels).to(like.device, like.dtype))
            except (RuntimeError, TypeError) as error:
                raise MethodError(
                    f"the head '{name}' cannot score (N, {channels}) concept embeddings: {error}"
                ) from None
        if (
            not isinstance(scores, torch.Tensor)
            or scores.dim() != 2
            or scores.shape[0] != embeddings.shape[0] * embeddings.shape[1]
        ):
            raise MethodError(f"the head '{name}' must map (N, {channels}) features to (N, classes) scores")
        return scores.float().reshape(*embeddings.shape[:2], -1)


def deep_feature_factorization(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module | str | None = None,
    n_components: int = 4,
    head: nn.Module | str | bool | None = None,
    top_k: int = 3,
    **options: Any,
) -> Concepts:
    """:class:`DeepFeatureFactorization` of ``model`` at ``layer`` (automatic by default) applied to ``x``."""
    return DeepFeatureFactorization(model, layer, n_components=n_components, head=head, top_k=top_k, **options)(x)
