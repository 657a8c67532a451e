"""Fixtures of the report tests: a real ``gradcam explain`` run, hand-made evaluation outputs, small fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from gradcam.assets import sample_path
from gradcam.cli import main
from report.report_support import EVALUATED_METHODS, FAILED_ERROR, NASTY_LABEL


@pytest.fixture(scope="session")
def explained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``gradcam explain --html`` of two bundled samples (gradcam and counterfactual, top 2 classes,
    overlay and heatmap files), then a fake failed item and a label holding ``</script>`` and ``&`` added to
    its manifest (the report is NOT rewritten after that: tests copy the folder and write their own)."""
    out = tmp_path_factory.mktemp("explained")
    code = main([
        "explain", str(sample_path("cameraman")), str(sample_path("coffee")), "--outputs", "overlay,heatmap",
        "--top-k", "2", "--method", "gradcam", "--method", "counterfactual", "--out", str(out), "--quiet", "--html",
    ])  # fmt: skip
    assert code == 0
    assert (out / "report.html").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    for output in manifest["items"][0]["outputs"]:
        if output["label"] == "tripod":
            output["label"] = NASTY_LABEL
    manifest["failed"].append({"input": str(out / "broken.jpg"), "error": FAILED_ERROR})
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``gradcam evaluate all --synthetic --html`` at its smallest useful size: 4 images, Grad-CAM and
    the counterfactual (plus the baselines), 2 figure images and 2000-pixel deletion steps (~10 s here)."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    methods = [argument for name in EVALUATED_METHODS for argument in ("--method", name)]
    code = main(["evaluate", "all", "--synthetic", "--images", "4", "--faithfulness-images", "4", *methods,
                 "--figure-images", "2", "--step", "2000", "--quiet", "--html", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert (out / "report.html").is_file()
    return out


@pytest.fixture
def evaluated(tmp_path: Path) -> Path:
    """Evaluation outputs made by hand in the documented format (``gradcam evaluate all --synthetic`` with its
    smallest settings takes minutes on 2 shared cores): summary.json, curves.json, examples/*.png."""
    out = tmp_path / "eval"
    (out / "examples").mkdir(parents=True)
    methods = [
        {"method": "gradcam", "title": "Grad-CAM", "baseline": False, "layer": "features", "error": None, "k": 1,
         "box_accuracy": 62.5, "max_box_accuracy": 75.0, "best_threshold": 0.25, "pointing": 87.5,
         "deletion_auc": 0.1234, "insertion_auc": 0.6789, "average_drop": 40.0, "cost": 2.0},
        {"method": "random", "title": "Baseline: random map", "baseline": True, "layer": None, "error": None,
         "box_accuracy": 5.0, "max_box_accuracy": 6.0, "best_threshold": 0.5, "pointing": 10.0,
         "deletion_auc": 0.4, "insertion_auc": 0.3, "average_drop": 90.0, "cost": 0.0},
        {"method": "cam", "title": "CAM <head>", "baseline": False, "layer": None,
         "error": "CAM needs a GAP + linear head & this is not one\nsecond line", "cost": None},
        {"method": "scorecam", "title": "Score-CAM", "baseline": False, "layer": "features", "error": None, "k": 1,
         "box_accuracy": 50.0, "max_box_accuracy": None, "best_threshold": 0.3, "pointing": 75.0,
         "deletion_auc": 0.2, "insertion_auc": 0.5, "average_drop": 50.0, "cost": 65.0},
    ]  # fmt: skip
    settings = {"tasks": ["localization", "pointing", "faithfulness"], "top_k": 1, "score": "probability"}
    summary = {
        "model": "synthetic-cnn", "images": 8, "seconds": 3.5, "processes": 1, "reused_images": 0,
        "classification": {"images": 8, "top1_accuracy": 87.5}, "settings": settings, "methods": methods,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))
    fractions = [i / 56 for i in range(57)]
    curves = {
        name: {"fractions": fractions, "deletion": [max(0.0, 1 - f * k) for f in fractions],
               "insertion": [min(1.0, f * k) for f in fractions]}
        for name, k in (("gradcam", 3.0), ("scorecam", 2.0), ("random", 1.0))
    }  # fmt: skip
    (out / "curves.json").write_text(json.dumps(curves))
    for name, colour in (("gradcam", (200, 30, 30)), ("random", (30, 30, 200))):
        Image.new("RGB", (120, 60), colour).save(out / "examples" / f"{name}.png")
    return out
