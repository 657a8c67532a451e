"""ShapleyCAM (Cai, 2024, "CAMs as Shapley Value-based Explainers", arXiv:2501.06261)."""

from __future__ import annotations

import torch

from ..capture import reentrant_checkpoint_error
from ..errors import LayerError
from .base import LayerMethod, MapContext


def shapley_gradients(scores: torch.Tensor, activations: torch.Tensor, name: str) -> torch.Tensor:
    """``g - 1/2 H A`` for each of the k score columns, (B, k, *A.shape[1:]), detached.

    ``g = dy/dA`` and ``H A`` the Hessian-vector product ``(d^2 y / dA^2) A``, both at the captured
    activations ``A``: a double backward (``create_graph=True``, then ``d <g, A'> / dA`` with ``A'`` = A held
    constant). Images are independent in eval mode, so one pass over the batch sum serves every image;
    the k columns take one pair of passes each. An ``H A`` that autograd reports as unused (a head that is
    linear in A, e.g. GAP + linear read as a logit) is zero.
    """
    if not scores.requires_grad:
        raise LayerError(f"the target does not depend on layer '{name}': no gradient reaches it")
    columns = []
    try:
        for j in range(scores.shape[1]):
            (grad,) = torch.autograd.grad(
                scores[:, j].sum(), activations, create_graph=True, retain_graph=True, allow_unused=True
            )
            if grad is None:
                raise LayerError(f"the target does not depend on layer '{name}': no gradient reaches it")
            hvp = None
            if grad.requires_grad:
                (hvp,) = torch.autograd.grad(
                    grad, activations, grad_outputs=activations.detach(), retain_graph=True, allow_unused=True
                )
            columns.append(grad.detach() if hvp is None else grad.detach() - 0.5 * hvp.detach())
    except RuntimeError as error:
        diagnosed = reentrant_checkpoint_error(error, f"layer '{name}'")
        if diagnosed is None:
            raise
        raise diagnosed from error
    return torch.stack(columns, dim=1)


class ShapleyCAM(LayerMethod):
    """ShapleyCAM: ``alpha_k = 1/Z sum_s (g - 1/2 H A)_k(s)``, ``L = ReLU(sum_k alpha_k A_k)``.

    ``g = dy/dA`` and ``H = d^2 y / dA^2`` at the layer's activations A (the paper's second-order Taylor
    expansion of y around A, whose Shapley values over the activations give the gradient corrected by
    half the Hessian-vector product ``H A``). Where y is linear in A (a logit of a GAP + linear head, and
    any head whose only non-linearities are ReLUs, whose second derivative is zero) ``H A = 0`` and
    ShapleyCAM equals Grad-CAM; the paper pairs it with the ReST target ``y_c = z_c - CE(z, c) =
    2 z_c - logsumexp(z)``, which curves through the softmax: pass it as a callable target, e.g.
    ``target=gradcam.ClassScore(c) + gradcam.ClassScore(c, "log_probability")``. g and H are both taken at
    the layer's own output A, whatever follows it (pytorch-grad-cam's ``ShapleyCAM`` keeps the output tensor
    itself, so an in-place ReLU after the layer moves its ``H A`` to the ReLU's output and its map to the
    rectified activations). ``weights`` are the alpha above; the
    counterfactual map explains ``-y`` (``g`` and ``H A`` both change sign). One forward pass and two
    backward passes (the second through the first's graph) per target through the part after the layer.
    """

    name = "shapleycam"

    def target_gradients(self, scores: torch.Tensor, captured: torch.Tensor, name: str) -> torch.Tensor:
        return shapley_gradients(scores, captured, name)

    def channel_weights(self, context: MapContext) -> torch.Tensor:
        return context.gradients.mean(dim=context.axes)
