"""``gradcam evaluate``: the synthetic benchmark and an ImageNet-format folder through the command line."""

from __future__ import annotations

import csv
import json

import pytest

from gradcam.cli import main
from gradcam.evaluation import synthetic_items, write_annotated_folder
from gradcam.evaluation.synthetic import CLASSES

SMALL = ["--quiet", "--batch-size", "8", "--step", "1568"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_synthetic_all_writes_tables_files_and_figures(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "all", "--synthetic", "--images", 6, "--faithfulness-images", 3, "--method", "gradcam"]
    extra = ["--road-images", 1, "--robustness-images", 2]  # ROAD and sensitivity on fewer images still
    sanity = ["--method", "counterfactual", "--sanity-images", 2, "--sanity-independent"]
    code, stdout, _ = run([*args, *sanity, "--html", "--out", out, *extra, *SMALL], capsys)
    assert code == 0
    assert "| Grad-CAM |" in stdout and "| Counterfactual |" in stdout and "| Baseline: random map |" in stdout
    assert "model synthetic-cnn, 6 images" in stdout
    for name in ("summary.json", "summary.csv", "per_image.csv", "per_image.json", "table.md", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "examples" / "gradcam.png").is_file()
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 6 * 5  # 6 images x (2 methods + 3 baselines)
    assert sum(1 for r in rows if r["deletion_auc"]) == 3 * 5  # faithfulness on the first 3 images only
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "synthetic-cnn" and summary["settings"]["tolerance"] == 4.0
    methods = {m["method"]: m for m in summary["methods"]}
    assert set(methods) == {"gradcam", "counterfactual", "center", "whole-image", "random"}
    assert methods["whole-image"]["in_out_ratio"] == pytest.approx(1.0)
    # ROAD, robustness and complexity ride with faithfulness (on its first 1, 2 and 3 images here)
    assert "ROAD LeRF−MoRF ↑" in stdout and "Max-sens. ↓" in stdout and "Sparseness ↑" in stdout
    assert [sum(1 for r in rows if r[key]) for key in ("road_gap", "max_sensitivity", "sparseness")] == [5, 10, 15]
    # a constant map: Gini index exactly 0, and it does not move when the input does
    assert methods["whole-image"]["sparseness"] == 0.0 and methods["whole-image"]["max_sensitivity"] == 0.0
    # sanity: maps that ignore the model fail, Grad-CAM's change when the weights are randomised
    assert "| Sanity |" in stdout and "| **FAIL** |" in stdout
    assert {name: m["sanity"] for name, m in methods.items()} == {
        "gradcam": "pass", "counterfactual": "pass", "center": "FAIL", "whole-image": "FAIL", "random": "FAIL"
    }  # fmt: skip
    assert methods["center"]["mprt_ssim"] == 1.0 and methods["gradcam"]["mprt_ssim"] < 0.5
    assert methods["center"]["mprt_ssim_last"] == 1.0 and methods["gradcam"]["mprt_ssim_last"] < 0.5
    curves = json.loads((out / "sanity.json").read_text())
    assert (
        list(curves["gradcam"]) == ["cascading", "independent"] and next(iter(curves["gradcam"]["cascading"])) == "fc"
    )
    assert (out / "sanity.png").is_file()
    page = (out / "report.html").read_text()
    assert page.count("<strong>FAIL</strong>") == 3 and page.count("<td>pass</td>") == 2 and 'src="sanity.png"' in page
    assert sum(1 for r in rows if r["mprt_ssim"]) == 2 * 5  # sanity on the first two images only


def test_imagenet_format_folder_with_a_factory_model(tmp_path, capsys):
    folder = tmp_path / "val"
    write_annotated_folder(synthetic_items(4, seed=7), folder, CLASSES)
    assert len(list(folder.glob("*.xml"))) == 4
    model = "gradcam.evaluation.synthetic:load_synthetic_model"
    code, stdout, _ = run(
        ["evaluate", "localization", folder, "--model", model, "--top-k", 2, "--method", "gradcam",
         "--no-baselines", "--out", tmp_path / "out", "--no-plots", *SMALL],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "Top-1 loc. err" in stdout and "Top-2 loc. err" in stdout
    assert not (tmp_path / "out" / "curves.png").exists()
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").open()))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"gradcam"}


def test_faithfulness_with_occlusion(tmp_path, capsys):
    out = tmp_path / "faith"
    args = ["evaluate", "faithfulness", "--synthetic", "--images", 3, "--method", "gradcam", "--method", "gradient"]
    args += ["--no-road", "--robustness-samples", 0]  # occlusion only: ROAD and sensitivity are tested above
    code, stdout, _ = run(
        [*args, "--occlusion", "--patch", 28, "--stride", 28, "--out", out, "--no-plots", *SMALL], capsys
    )
    assert code == 0
    assert "Rank corr. occlusion" in stdout and "Deletion AUC" in stdout and "Pointing" not in stdout
    summary = {m["method"]: m for m in json.loads((out / "summary.json").read_text())["methods"]}
    assert -1.0 <= summary["gradcam"]["rank_correlation"] <= 1.0
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert all(r["rank_correlation"] for r in rows if r["method"] != "whole-image")  # a flat map has no ranks


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "pointing"], "give a folder of images"),
        (["evaluate", "pointing", "somewhere", "--synthetic"], "either IMAGES"),
        (["evaluate", "pointing", "--synthetic", "--threshold", "15"], "--threshold must be a fraction"),
        (["evaluate", "pointing", "--synthetic", "--images", "0"], "--images must be >= 1"),
        (["evaluate", "pointing", "--synthetic", "--weights", "w.pt"], "--weights needs --model"),
        (["evaluate", "pointing", "no-such-folder"], "no such file or folder|not found|no images"),
    ],
)
def test_usage_errors_say_what_is_expected(args, message, capsys):
    code, _, err = run(args, capsys)
    assert code == 2
    assert any(part.lower() in err.lower() for part in message.split("|")), err
