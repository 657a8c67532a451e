"""Non-negative matrix factorisation in torch: ``V ≈ W H`` with ``W, H >= 0``, by HALS.

Hierarchical alternating least squares (Cichocki & Phan, "Fast local algorithms for large scale nonnegative
matrix and tensor factorizations", IEICE 2009; the coordinate-descent solver of Gillis & Glineur 2012):
each row of ``H`` and then each column of ``W`` is the exact non-negative least-squares minimiser of
``||V - W H||_F^2`` with the others fixed,

    H[j] <- max(0, H[j] + ((W^T V)[j] - (W^T W)[j] H) / (W^T W)[j, j])
    W[:, j] <- max(0, W[:, j] + ((V H^T)[:, j] - W (H H^T)[:, j]) / (H H^T)[j, j])

so the objective never increases, and the projection ``max(0, .)`` gives exact zeros (a planted factorisation
with disjoint supports is recovered exactly, not approached as by multiplicative updates). Batched: ``V``
may be (B, K, N), B independent problems solved together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = ["Factorization", "nmf"]


@dataclass(frozen=True)
class Factorization:
    """``V ≈ W H``: ``W`` (.., K, n) non-negative embeddings, ``H`` (.., n, N) non-negative maps, ``error`` (..,)
    the relative Frobenius error ``||V - W H||_F / ||V||_F`` (0 for an all-zero V), ``iterations`` run."""

    W: torch.Tensor
    H: torch.Tensor
    error: torch.Tensor
    iterations: int


def _check(v: torch.Tensor, n_components: int, iterations: int, tol: float) -> None:
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.dim() not in (2, 3):
        kind = f"{v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise InputError(f"v must be a floating (K, N) or (B, K, N) tensor; got {kind}")
    if v.numel() == 0:
        raise InputError(f"v is empty: shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
        raise InputError("v must be finite and non-negative (clamp the activations: v.clamp(min=0))")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise InputError(f"n_components must be a positive int; got {n_components!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations must be a positive int; got {iterations!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise InputError(f"tol must be a finite number >= 0; got {tol!r}")


def _initial(v: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded uniform factors scaled so ``W H`` has V's mean (scikit-learn's ``init="random"`` scale):
    entries in ``[0, 2 sqrt(mean(V) / n))``, drawn on the CPU so every device starts from the same numbers."""
    batch, k, columns = v.shape
    generator = torch.Generator().manual_seed(int(seed))
    scale = (v.mean(dim=(1, 2)) / n).sqrt().cpu().to(torch.float64)[:, None, None]
    w = torch.rand(batch, k, n, generator=generator, dtype=torch.float64) * 2 * scale
    h = torch.rand(batch, n, columns, generator=generator, dtype=torch.float64) * 2 * scale
    return w.to(v.device, v.dtype), h.to(v.device, v.dtype)


def _given(init: tuple[torch.Tensor, torch.Tensor], v: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The caller's start ``(W0, H0)`` as batched copies in V's dtype (checked: shapes, finite, non-negative)."""
    batch, k, columns = v.shape
    w, h = (torch.as_tensor(t).to(v.device, v.dtype) for t in init)
    w, h = w.expand(batch, k, n).clone(), h.expand(batch, n, columns).clone()  # raises on a wrong shape
    if not bool(torch.isfinite(w).all() and torch.isfinite(h).all()) or bool((w < 0).any() or (h < 0).any()):
        raise InputError("init must be two finite non-negative tensors (W0 (K, n), H0 (n, N))")
    return w, h


def _update_rows(h: torch.Tensor, numerator: torch.Tensor, gram: torch.Tensor) -> None:
    """One HALS sweep over the rows of ``h`` (B, n, N) in place: ``numerator`` = W^T V, ``gram`` = W^T W."""
    tiny = torch.finfo(h.dtype).tiny
    for j in range(h.shape[1]):
        diagonal = gram[:, j, j, None].clamp_min(tiny)
        step = (numerator[:, j] - (gram[:, j, None] @ h).squeeze(1)) / diagonal
        h[:, j] = (h[:, j] + step).clamp_min(0)


def _relative_error(v: torch.Tensor, w: torch.Tensor, h: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    residual = torch.linalg.matrix_norm(v - w @ h)
    return torch.where(norm > 0, residual / norm.clamp_min(torch.finfo(v.dtype).tiny), 0)


def nmf(
    v: torch.Tensor,
    n_components: int,
    *,
    iterations: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    check_every: int = 10,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Factorization:
    """Non-negative ``W`` (.., K, n), ``H`` (.., n, N) minimising ``||V - W H||_F`` for a non-negative ``V``
    (K, N) or (B, K, N), in V's dtype and on its device.

    HALS sweeps (see the module) from a seeded random start, at most ``iterations`` of them; every
    ``check_every`` sweeps the relative error is measured, and the fit stops once no problem of the batch
    improved it by more than ``tol`` since the last check (``tol=0``: always run ``iterations``). ``init``
    = ``(W0, H0)``, non-negative and shaped like the factors, replaces the random start.
    The factors are not unique (``W D``, ``D^-1 H`` for any positive diagonal D, and any permutation):
    callers fix the scale they need.
    """
    _check(v, n_components, iterations, tol)
    batched = v if v.dim() == 3 else v.unsqueeze(0)
    w, h = _initial(batched, n_components, seed) if init is None else _given(init, batched, n_components)
    norm = torch.linalg.matrix_norm(batched)
    error = _relative_error(batched, w, h, norm)
    done = 0
    for done in range(1, iterations + 1):
        _update_rows(h, w.transpose(1, 2) @ batched, w.transpose(1, 2) @ w)
        w_t = w.transpose(1, 2).contiguous()  # W's columns are the rows of W^T: the same sweep
        _update_rows(w_t, h @ batched.transpose(1, 2), h @ h.transpose(1, 2))
        w = w_t.transpose(1, 2)
        if done % check_every == 0 or done == iterations:
            previous, error = error, _relative_error(batched, w, h, norm)
            if bool(((previous - error) <= tol).all()):
                break
    if v.dim() == 2:
        return Factorization(w[0].contiguous(), h[0], error[0], done)
    return Factorization(w.contiguous(), h, error, done)
