"""KPCA-CAM (Karmani et al., 2024, "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using
Kernel PCA")."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MethodError
from ..targets import OutputSelector
from .base import LayerMethod, MapContext

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def kernel_matrix(
    features: torch.Tensor, kernel: str, gamma: float | None = None, degree: int = 3, coef0: float = 1.0
) -> torch.Tensor:
    """Gram matrices (B, n, n) of the rows of ``features`` (B, n, K), scikit-learn's pairwise kernels:
    ``tanh(g <x, y> + c0)``, ``exp(-g |x - y|^2)``, ``(g <x, y> + c0)^d``, ``<x, y>``, ``<x, y> / (|x| |y|)``,
    with ``g = 1 / K`` unless ``gamma`` is given."""
    g = 1.0 / features.shape[-1] if gamma is None else float(gamma)
    if kernel == "cosine":
        norms = features.norm(dim=-1, keepdim=True)
        features = features / torch.where(norms > 0, norms, 1)
    dot = features @ features.transpose(1, 2)
    if kernel in ("linear", "cosine"):
        return dot
    if kernel == "sigmoid":
        return torch.tanh(g * dot + coef0)
    if kernel == "poly":
        return (g * dot + coef0) ** degree
    squared = features.pow(2).sum(-1)
    return torch.exp(-g * (squared.unsqueeze(2) + squared.unsqueeze(1) - 2 * dot).clamp_min(0))


def kernel_projection(activations: torch.Tensor, kernel: str, gamma: float | None = None) -> torch.Tensor:
    """Each image's positions projected on the first kernel principal component: (B, *S).

    Per image the layer output is a (positions x K) matrix, centred over positions (as pytorch-grad-cam
    does before its ``KernelPCA``); its kernel matrix is double-centred, and the projection is
    ``sqrt(lambda1) v1`` with (lambda1, v1) its top eigenpair (``torch.linalg.eigh``, float64): scikit-learn's
    ``KernelPCA(n_components=1).fit_transform``. The sign is chosen so the projection correlates
    positively with the mean activation over channels (scikit-learn makes v1's largest entry positive).
    """
    matrix = activations.double().flatten(2).transpose(1, 2)  # (B, n, K)
    matrix = matrix - matrix.mean(dim=1, keepdim=True)
    gram = kernel_matrix(matrix, kernel, gamma)
    gram = gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True) + gram.mean((1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(gram)
    projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()  # (B, n)
    mean_map = activations.double().mean(dim=1).flatten(1)
    agreement = ((projection - projection.mean(1, keepdim=True)) * (mean_map - mean_map.mean(1, keepdim=True))).sum(1)
    projection = torch.where(agreement.unsqueeze(1) < 0, -projection, projection)
    return projection.view(activations.shape[:1] + activations.shape[2:]).to(activations.dtype)


class KPCACAM(LayerMethod):
    """KPCA-CAM: ``L = ReLU(sqrt(lambda1) v1)``, the layer output's first KERNEL principal component.

    Eigen-CAM with the linear PCA replaced by kernel PCA (:func:`kernel_projection`; ``kernel`` one of
    sigmoid (the default, as pytorch-grad-cam's ``KPCA_CAM``), rbf, poly, linear, cosine; ``gamma``
    defaults to 1 / K). Implemented in torch (no scikit-learn): one dense eigendecomposition of a
    (positions x positions) matrix per image, so O(positions^3): fine for a 14x14 or 28x28 layer,
    slow beyond 56x56. No gradients, CLASS-AGNOSTIC (every target gets the same map, no
    counterfactual), and no channel weights (``weights`` is None): the map is not a channel sum.
    """

    name = "kpcacam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        output: OutputSelector = None,
        eval_mode: bool = True,
        reshape=None,
    ) -> None:
        super().__init__(model, layer, output=output, eval_mode=eval_mode, reshape=reshape)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}")
        self.kernel, self.gamma = kernel, gamma

    def channel_weights(self, context: MapContext) -> None:
        if context.sign < 0:
            raise MethodError(
                "KPCA-CAM is class-agnostic: it has no counterfactual map (use a gradient method such as gradcam)"
            )
        return None

    def channel_terms(self, weights: torch.Tensor | None, context: MapContext) -> torch.Tensor:
        raise MethodError("KPCA-CAM's map is not a sum over channels: it has no channel terms to smooth")

    def combine(self, weights: torch.Tensor | None, context: MapContext) -> torch.Tensor:
        projection = kernel_projection(context.activations, self.kernel, self.gamma)
        k = context.target.scores.shape[1]
        return torch.relu(projection).unsqueeze(1).expand(-1, k, *projection.shape[1:]).contiguous()
