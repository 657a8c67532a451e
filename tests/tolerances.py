"""Tolerances that follow from the computation, not from one machine's kernels.

Different kernels (``ATEN_CPU_CAPABILITY`` default / avx2 / avx512, 1 or 2 threads, blocked BLAS,
cuDNN) add the same terms in different orders. Every order of a sum of ``n`` floating-point terms
satisfies (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 4.4)

    |fl(s) - s| <= gamma_{n-1} * sum_i |x_i|,    gamma_m = m * u / (1 - m * u),

with ``u`` the unit roundoff (half the machine epsilon: 2**-24 for float32, 2**-53 for float64). Two
computations of the same sum in different orders therefore differ by at most ``2 * gamma_{n-1} *
sum |x_i|``. A chain of ``depth`` such sums (a convolution, then a linear head, ...) adds the bounds
of each step to first order; elementwise correctly rounded operations add ``u`` each.

How the tests use this:
- an exact identity (Grad-CAM == CAM / Z, a hand-worked map) is checked in float64 where the test can
  afford it, with :func:`sum_atol` in float64 (about 1e-13 for small sums): any real error shows;
- a float32 comparison between two implementations (ours against Captum / pytorch-grad-cam /
  TorchCAM / an independent autograd computation) uses :func:`sum_atol` with the number of terms of
  the longest accumulation and the magnitude of the summed terms;
- derived statistics (ratios, AUCs, energies, correlations) are compared *relatively*
  (:func:`ratio_rtol`), never with an absolute bound tuned to one value's size;
- a min-max normalised map's error is the raw map's error divided by its span (:func:`normalized_atol`);
  a heatmap (the raw map upsampled bilinearly, each pixel a convex combination, then normalised) uses the
  span of the upsampled raw map (:func:`heatmap_atol`);
- a class-activation map ``ReLU(sum_k alpha_k A_k)`` sums terms of total size ``sum_k |alpha_k| |A_k|``
  (:func:`cam_magnitude`), which can be far above ``|raw|`` when channels cancel;
- values computed by the same code on the same inputs (a logit read twice, a negation) are compared
  exactly; values from different kernels (a batch of 2 against a batch of 1, compiled against eager)
  with a bound, since kernels may block a batch differently.

These are worst-case bounds (every rounding the same way); the differences measured on the suite are at
most about a tenth of them and mostly far smaller or exactly 0, so a check fails on a change of the
computation, not on another machine's kernels. Where a worst case would be loose to meaninglessness (deep
models compared term by term) the test runs in float64 instead, where the same bound is ~1e-12.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

__all__ = [
    "assert_close",
    "assert_sum_close",
    "cam_magnitude",
    "gamma",
    "heatmap_atol",
    "iou_rtol",
    "layer_output",
    "normalized_atol",
    "ratio_rtol",
    "relative",
    "sum_atol",
    "unit_roundoff",
]


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    """``u``: the largest relative error of one correctly rounded operation (eps / 2)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """``gamma_n = n u / (1 - n u)``: the relative error bound of ``n`` chained roundings."""
    nu = max(int(n), 1) * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"gamma_{n} is unbounded in {dtype}: the sum is too long for any a-priori bound")
    return nu / (1 - nu)


def sum_atol(n: int, magnitude: float, dtype: torch.dtype = torch.float32, depth: int = 1) -> float:
    """Largest difference between two summation orders of ``n`` terms whose absolute values add to
    ``magnitude``, for ``depth`` chained accumulations: ``2 * depth * gamma_n * magnitude``.

    A tiny floor (a few ulps of the magnitude's scale) covers the final rounding of an exact result.
    """
    magnitude = float(abs(magnitude))
    floor = 4 * unit_roundoff(dtype) * max(magnitude, torch.finfo(dtype).tiny)
    return 2 * depth * gamma(n, dtype) * magnitude + floor


def ratio_rtol(*rtols: float) -> float:
    """Relative error of a product or quotient of quantities with relative errors ``rtols``:
    ``prod(1 + r) - 1`` (a ratio a / b with errors r_a, r_b is within r_a + r_b + r_a r_b)."""
    return math.prod(1 + r for r in rtols) - 1


def normalized_atol(raw_atol: float, span: float) -> float:
    """Error of ``(m - min) / (max - min)`` when every entry of ``m`` is within ``raw_atol``.

    The numerator moves by at most ``2 raw_atol`` and the span by ``2 raw_atol``; for a value in [0, 1]
    the result moves by at most ``4 raw_atol / (span - 2 raw_atol)``.
    """
    if span <= 2 * raw_atol:
        raise ValueError(f"the map's span {span} is within its own error {raw_atol}: compare the raw maps instead")
    return 4 * raw_atol / (span - 2 * raw_atol)


def heatmap_atol(raw: torch.Tensor, size: tuple[int, int], raw_atol: float) -> float:
    """Error of a heatmap (``raw`` (..., u, v) upsampled bilinearly to ``size``, then min-max normalised per
    map) when every raw entry is within ``raw_atol``: bilinear weights are convex, so the upsampled map is
    within ``raw_atol`` plus a few roundings; the smallest span over the maps sets :func:`normalized_atol`
    (0 when every map is flat: an all-zero heatmap is exact)."""
    maps = raw.detach().double().reshape(-1, 1, *raw.shape[-2:])
    up = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False).flatten(1)
    spans = up.amax(1) - up.amin(1)
    if not bool((spans > 0).any()):
        return 0.0  # every map is flat: its heatmap is all zero, exactly
    span = float(spans[spans > 0].min())
    return normalized_atol(raw_atol + 4 * unit_roundoff() * float(up.abs().max()), span)


def cam_magnitude(weights: torch.Tensor, activations: torch.Tensor) -> float:
    """``max sum_k |alpha_k| |A_k(u, v)|`` over maps and cells: the size of the terms a CAM sums.

    ``weights`` (B, K) or (B, k, K), ``activations`` (B, K, u, v).
    """
    w = weights.detach().double().abs()
    a = activations.detach().double().abs()
    w = w[:, None] if w.dim() == 2 else w
    return float(torch.einsum("bjk,bkuv->bjuv", w, a).max())


def layer_output(model: torch.nn.Module, layer: str, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The output of ``model``'s submodule ``layer`` on ``x`` (cloned at the hook: later in-place ops do not
    touch it), for :func:`cam_magnitude`."""
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x, **kwargs)
    finally:
        handle.remove()
    return store[0]


def iou_rtol(a: Any, b: Any, dtype: torch.dtype = torch.float32) -> float:
    """Relative error of the IoU of boxes ``a`` and ``b`` (x0, y0, x1, y1) computed in ``dtype``: each side is a
    difference of two coordinates rounded to ``dtype`` (within ``4 u max|coord|``), an area the product of two
    sides, the union a sum of three areas each at most the union, then one quotient."""
    coords = [float(v) for v in (*a, *b)]
    shortest = min(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1])
    if shortest <= 0:
        raise ValueError(f"boxes {a} and {b} need positive sides for a relative IoU bound")
    side = 4 * unit_roundoff(dtype) * max(abs(c) for c in coords) / float(shortest)
    area = ratio_rtol(side, side)
    return ratio_rtol(area, 3 * area, unit_roundoff(dtype))


def relative(rtol: float) -> dict[str, float]:
    """Keyword arguments for ``torch.testing.assert_close`` / ``pytest.approx``-style relative checks."""
    return {"rtol": rtol, "atol": 0.0}


def _magnitude(expected: Any) -> float:
    if isinstance(expected, torch.Tensor):
        return float(expected.detach().abs().max()) if expected.numel() else 0.0
    return float(abs(expected))


def assert_close(
    actual: Any,
    expected: Any,
    *,
    terms: int,
    magnitude: float | None = None,
    dtype: torch.dtype | None = None,
    depth: int = 1,
    msg: str | None = None,
) -> None:
    """``actual == expected`` up to :func:`sum_atol` for sums of ``terms`` terms of total absolute size
    ``magnitude`` (default: the largest ``|expected|``; pass the sum of |terms| when signs cancel).

    ``dtype`` defaults to the less precise of the two tensors' dtypes (float32 for Python numbers).
    """
    if dtype is None:
        dtypes = [t.dtype for t in (actual, expected) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        dtype = max(dtypes, key=lambda d: torch.finfo(d).eps) if dtypes else torch.float32
    scale = _magnitude(expected) if magnitude is None else magnitude
    atol = sum_atol(terms, scale, dtype, depth)
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        actual_t = torch.as_tensor(actual)
        expected_t = torch.as_tensor(expected, dtype=actual_t.dtype, device=actual_t.device)
        torch.testing.assert_close(actual_t, expected_t, rtol=0.0, atol=atol, msg=msg)
    else:
        assert actual == pytest.approx(expected, rel=0.0, abs=atol), msg


def assert_sum_close(actual: Any, expected: Any, *, terms: int, magnitude: float, depth: int = 1) -> None:
    """:func:`assert_close` with the magnitude of the summed terms given explicitly."""
    assert_close(actual, expected, terms=terms, magnitude=magnitude, depth=depth)
