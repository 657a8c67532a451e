"""NMF by HALS: agreement with scikit-learn's NMF, exact recovery of a planted factorisation, the HALS descent
property, seeding and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from gradcam.errors import InputError
from gradcam.methods.nmf import nmf
from tolerances import assert_close, relative, sum_atol

K, N = 6, 20


def planted(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """W (6, 2) and H (2, 20) with disjoint supports: concept 0 on columns 0-7, concept 1 on 8-19."""
    w = torch.tensor([[1, 0], [2, 1], [0, 4], [3, 1], [1, 0], [0, 2]], dtype=dtype)
    h = torch.zeros(2, N, dtype=dtype)
    h[0, :8] = torch.arange(1, 9, dtype=dtype) / 4
    h[1, 8:] = torch.arange(12, 0, -1, dtype=dtype) / 6
    return w, h


def matched_rows(found: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``found``'s rows reordered to ``expected``'s (by the largest overlap of supports), each scaled to peak 1."""
    order = [int((found * (row > 0)).sum(1).argmax()) for row in expected]
    assert sorted(order) == list(range(len(expected))), f"two rows matched one planted row: {order}"
    rows = found[order]
    return rows / rows.amax(1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_planted_factorisation_is_recovered_exactly(dtype):
    w, h = planted(dtype)
    fit = nmf(w @ h, 2, iterations=500, tol=0.0)
    # An exact non-negative rank-2 factorisation exists and HALS reaches it up to rounding: the residual's
    # norm is a sum over the K * N entries, each the rounding of a 2-term product sum (relative to |V|_F).
    assert float(fit.error) <= sum_atol(K * N, 1.0, dtype, depth=2)
    # The maps are the planted ones up to permutation and scale; the zeros are exact zeros of HALS's projection
    # or rounding residues of the same size.
    expected = h / h.amax(1, keepdim=True)
    assert_close(matched_rows(fit.H, expected), expected, terms=K * N, magnitude=1.0, depth=2)
    # ... and the embeddings are the planted columns up to the inverse scale.
    order = [int((fit.H * (row > 0)).sum(1).argmax()) for row in h]
    found_w = fit.W[:, order] * fit.H[order].amax(1)
    assert_close(found_w, w * h.amax(1), terms=K * N, magnitude=float((w * h.amax(1)).max()), depth=2)


def test_reported_error_is_the_relative_frobenius_error():
    torch.manual_seed(0)
    v = torch.rand(2, 16, 9, dtype=torch.float64)
    fit = nmf(v, 3, iterations=30, tol=0.0)
    direct = torch.linalg.matrix_norm(v - fit.W @ fit.H) / torch.linalg.matrix_norm(v)
    assert_close(fit.error, direct, terms=16 * 9, magnitude=1.0)
    assert fit.W.shape == (2, 16, 3) and fit.H.shape == (2, 3, 9) and fit.iterations == 30
    assert bool((fit.W >= 0).all()) and bool((fit.H >= 0).all())


def test_every_sweep_lowers_the_error():
    # HALS solves each block exactly, so ||V - W H|| never increases (up to the rounding of one evaluation).
    torch.manual_seed(1)
    v = torch.relu(torch.randn(32, 25, dtype=torch.float64))
    errors = [float(nmf(v, 4, iterations=i, tol=0.0, check_every=1).error) for i in (1, 2, 3, 5, 8, 13, 21)]
    bound = sum_atol(32 * 25, 1.0, torch.float64)
    assert all(later <= earlier + bound for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < errors[0]


@pytest.mark.parametrize(("n", "seed"), [(2, 0), (4, 0), (4, 1)])
def test_reconstruction_error_agrees_with_scikit_learn(n, seed):
    decomposition = pytest.importorskip("sklearn.decomposition")
    torch.manual_seed(2)
    v = torch.relu(torch.randn(64, 49, dtype=torch.float64))  # a ReLU layer's 64 channels x 7 x 7 positions
    start = torch.Generator().manual_seed(seed)
    scale = 2 * float(v.mean() / n) ** 0.5
    w0 = torch.rand(64, n, generator=start, dtype=torch.float64) * scale
    h0 = torch.rand(n, 49, generator=start, dtype=torch.float64) * scale
    ours = nmf(v, n, iterations=3000, tol=1e-13, init=(w0, h0))
    model = decomposition.NMF(n, init="custom", solver="cd", max_iter=3000, tol=1e-13)
    w = model.fit_transform(v.numpy(), W=w0.numpy().copy(), H=h0.numpy().copy())
    theirs = float(torch.linalg.matrix_norm(v - torch.from_numpy(w @ model.components_)) / torch.linalg.matrix_norm(v))
    # From the same start both coordinate-descent solvers converge to the same minimum (the factors are not
    # compared: they are unique only up to scale and order). Both stop when a sweep gains under 1e-13, so the
    # errors agree to the convergence tolerance, not to rounding: 1e-9 relative (measured: ~1e-12). A wrong
    # update rule lands elsewhere (other minima of this matrix differ by ~1e-3).
    torch.testing.assert_close(float(ours.error), theirs, **relative(1e-9))


def test_seeded_start_is_reproducible():
    v = torch.rand(10, 12)
    first, again, other = nmf(v, 3, seed=5), nmf(v, 3, seed=5), nmf(v, 3, seed=6)
    assert torch.equal(first.W, again.W) and torch.equal(first.H, again.H)
    assert not torch.equal(first.H, other.H)
    assert first.W.dtype == torch.float32


def test_tolerance_stops_early_and_zero_runs_every_iteration():
    w, h = planted()
    assert nmf(w @ h, 2, iterations=400, tol=1e-3).iterations < 400
    assert nmf(w @ h, 2, iterations=40, tol=0.0).iterations == 40


def test_all_zero_matrix_has_zero_error():
    fit = nmf(torch.zeros(4, 5), 2)
    assert float(fit.error) == 0.0 and not bool(fit.H.any())


@pytest.mark.parametrize(
    ("v", "options", "match"),
    [
        (-torch.ones(3, 3), {}, "non-negative"),
        (torch.ones(3), {}, r"\(K, N\)"),
        (torch.ones(3, 3, dtype=torch.int64), {}, "floating"),
        (torch.tensor([[float("nan"), 1.0]]), {}, "finite"),
        (torch.ones(3, 3), {"n_components": 0}, "n_components"),
        (torch.ones(3, 3), {"iterations": 0}, "iterations"),
        (torch.ones(3, 3), {"tol": -1.0}, "tol"),
        (torch.ones(3, 3), {"init": (-torch.ones(3, 2), torch.ones(2, 3))}, "init"),
    ],
)
def test_bad_input_is_named(v, options, match):
    with pytest.raises(InputError, match=match):
        nmf(v, options.pop("n_components", 2), **options)
