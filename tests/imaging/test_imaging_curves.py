"""Deletion / insertion curve plots: PIL pixels lie where the values say; matplotlib lines hold the input data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradcam.imaging import plot_curves
from gradcam.imaging.curves import CURVE_COLOURS, curve_series

WIDTH, HEIGHT = 500, 420  # plot_curves' PIL size for one panel


def frame(picture) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) of the plot frame: the black columns / rows over a quarter of the image
    (a curve drawn along a border hides part of it)."""
    black = np.all(np.asarray(picture) == 0, axis=2)
    columns = np.flatnonzero(black.sum(axis=0) > HEIGHT // 4)
    rows = np.flatnonzero(black.sum(axis=1) > WIDTH // 4)
    return int(columns.min()), int(columns.max()), int(rows.min()), int(rows.max())


def curve_rows(picture, column: int, colour=CURVE_COLOURS[0]) -> np.ndarray:
    """Rows of ``column`` painted in the first curve's colour."""
    pixels = np.asarray(picture)[:, column]
    return np.flatnonzero(np.all(pixels == colour, axis=1))


def test_pil_step_curve_is_high_then_low_with_the_step_at_half() -> None:
    picture = plot_curves(torch.tensor([1.0, 1.0, 0.0, 0.0]), [0.0, 0.5, 0.5, 1.0], backend="pil")
    assert picture.size == (WIDTH, HEIGHT)
    left, right, top, bottom = frame(picture)
    assert (left, right, top, bottom) == (50, WIDTH - 20, 30, HEIGHT - 50)  # the documented layout
    quarter, half, three_quarters = (left + round(f * (right - left)) for f in (0.25, 0.5, 0.75))
    assert set(curve_rows(picture, quarter)) <= {top - 1, top, top + 1} and len(curve_rows(picture, quarter))
    assert set(curve_rows(picture, three_quarters)) <= {bottom - 1, bottom, bottom + 1}
    assert len(curve_rows(picture, three_quarters))
    step = curve_rows(picture, half)  # the vertical step spans the whole height
    assert step.min() <= top + 1 and step.max() >= bottom - 1 and len(step) >= bottom - top - 2


def test_pil_line_rises_with_the_values_and_second_curve_has_the_second_colour() -> None:
    fractions = torch.linspace(0, 1, 11, dtype=torch.float64)
    picture = plot_curves({"up": fractions, "flat": torch.full((11,), 0.5)}, fractions, backend="pil")
    left, right, top, bottom = frame(picture)
    for f in (0.2, 0.4, 0.6, 0.8):
        column = left + round(f * (right - left))
        expected = bottom - f * (bottom - top)  # value f at fraction f
        rows = curve_rows(picture, column)
        assert abs(rows.mean() - expected) <= 2, (f, rows)
        flat = curve_rows(picture, column, CURVE_COLOURS[1])
        assert abs(flat.mean() - (bottom - 0.5 * (bottom - top))) <= 2


def test_matplotlib_lines_hold_the_curves_of_perturbation_curves_output() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = torch.tensor([[0.9, 0.5, 0.25, 0.1], [0.8, 0.8, 0.4, 0.0]], dtype=torch.float64)
    fractions = torch.tensor([0.0, 0.3, 0.6, 1.0], dtype=torch.float64)
    ax = plot_curves((curves, fractions), labels=["cat", "dog"], title="Deletion")
    try:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["cat", "dog"]
        for line, row in zip(lines, curves):
            assert np.array_equal(line.get_xdata(), fractions.numpy())
            assert np.array_equal(line.get_ydata(), row.numpy())
        assert ax.get_title() == "Deletion" and ax.get_xlim() == (0.0, 1.0)
        _, given = plt.subplots()
        assert plot_curves(curves[0], ax=given) is given and len(given.get_lines()) == 1
        assert given.get_lines()[0].get_xdata().tolist() == [0, 1 / 3, 2 / 3, 1]  # evenly spaced by default
    finally:
        plt.close("all")


def test_bad_curves_get_errors_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="fractions has 3 entries but curve '0' has 4"):
        curve_series(torch.zeros(4), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="labels: got 1 for 2 curves"):
        curve_series(torch.zeros(2, 4), labels=["a"])
    with pytest.raises(ValueError, match=r"curves must be \(n,\) or \(B, n\)"):
        curve_series(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"curves\['deletion'\] is None"):
        curve_series({"deletion": None})
    with pytest.raises(ValueError, match="backend must be"):
        plot_curves(torch.zeros(3), backend="svg")


def test_evaluation_curves_png_draws_deletion_left_and_insertion_right(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gradcam evaluate``'s curves.png goes through the same renderer: without matplotlib, PIL panels side by
    side (1000 x 420, each 500 wide), deletion falling and insertion rising where the values say."""
    import sys
    from types import SimpleNamespace

    from gradcam.evaluation import report

    steps = {"fractions": [0.0, 0.5, 0.5, 1.0], "deletion": [1.0, 1.0, 0.0, 0.0], "insertion": [0.0, 0.0, 1.0, 1.0]}
    result = SimpleNamespace(curves={"gradcam": steps}, methods=[SimpleNamespace(name="gradcam", title="Grad-CAM")],
                             settings=SimpleNamespace(score="probability"))  # fmt: skip
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails: the PIL path
    picture = report.plot_curves(result)
    assert picture.size == (1000, 420)
    top, bottom = 30, 420 - 50
    for strip, (first, second) in enumerate(((top, bottom), (bottom, top))):  # deletion: 1 then 0; insertion
        left, right = 500 * strip + 50, 500 * (strip + 1) - 20
        early, late = (curve_rows(picture, left + round(f * (right - left))) for f in (0.25, 0.75))
        assert len(early) and set(early) <= {first - 1, first, first + 1}, (strip, early)
        assert len(late) and set(late) <= {second - 1, second, second + 1}, (strip, late)
