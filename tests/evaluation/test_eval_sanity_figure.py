"""The sanity-check figure: MPRT curves per similarity and mode, from a run's curves or a selection of them."""

from __future__ import annotations

import pytest

from gradcam.evaluation.sanity_figure import sanity_figure
from gradcam.imaging.curves import CURVE_COLOURS

CURVES = {"gradcam": {"cascading": {
    "fc": {"ssim": 1.0, "spearman": 1.0, "spearman_abs": 1.0},
    "conv": {"ssim": 0.2, "spearman": 0.2, "spearman_abs": 0.2},
}}}  # fmt: skip


def test_the_pil_figure_draws_each_curve_where_its_values_are():
    picture = sanity_figure(CURVES, {"gradcam": "Grad-CAM"}, backend="pil")
    assert picture.size == (420, 600)  # one mode: one column of 420 px, two similarity rows of 300
    # SSIM panel: x from 40 to 400 over the 2 steps, y = 265 - (v + 0.05) / 1.1 * 240
    y = lambda v: 265 - (v + 0.05) / 1.1 * 240  # noqa: E731
    assert picture.getpixel((220, round((y(1.0) + y(0.2)) / 2))) == CURVE_COLOURS[0]  # the segment's midpoint
    assert picture.getpixel((380, round(y(0.5)))) == (128, 128, 128)  # the verdict's threshold
    assert picture.getpixel((220, round(y(0.9)))) == (255, 255, 255)  # above the curve there: background


def test_the_matplotlib_figure_and_bad_backend():
    pytest.importorskip("matplotlib")
    assert sanity_figure(CURVES, backend="matplotlib").size == (550, 750)
    with pytest.raises(ValueError, match="backend must be"):
        sanity_figure(CURVES, backend="svg")
