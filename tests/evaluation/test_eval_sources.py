"""Evaluation sources: registered methods, methods wrapped in a smoothing (``NAME+aug-smooth``, ...), baselines."""

from __future__ import annotations

import pytest
import torch

from gradcam import GradCAM
from gradcam.cli import main
from gradcam.evaluation import load_synthetic_model, synthetic_items
from gradcam.evaluation.sanity import parameter_randomisation
from gradcam.evaluation.sources import make_sources, method_source, split_name, title
from gradcam.imaging.geometry import preprocess_batch
from gradcam.methods.base import normalize
from tolerances import normalized_atol, sum_atol


def test_names_split_into_a_registered_method_and_a_smoothing():
    assert split_name("gradcam") == ("gradcam", None)
    assert split_name("gradcam++") == ("gradcam++", None)  # a method whose name ends in "+"
    assert split_name("gradcam+++aug-smooth") == ("gradcam++", "aug-smooth")
    assert split_name("hirescam+eigen-smooth") == ("hirescam", "eigen-smooth")
    for bad in ("gradcam+nope", "nope+aug-smooth", "gradcam+", "+aug-smooth"):
        with pytest.raises(ValueError, match="unknown method"):
            split_name(bad)
    assert title("gradcam+noise-smooth") == "Grad-CAM + noise smoothing"
    assert title("gradcam++") == "Grad-CAM++" and title("center") == "Baseline: centre box"


@pytest.fixture(scope="module")
def batch():
    loaded = load_synthetic_model()
    x, _ = preprocess_batch([item.load() for item in synthetic_items(3, seed=1)], loaded.preprocess)
    with torch.no_grad():
        classes = loaded.model(x).argmax(1)
    return loaded, x, torch.stack([classes, (classes + 1) % 6], dim=1)  # (B, 2): top-1 and another class


def test_aug_smooth_source_is_the_mean_of_the_flipped_and_scaled_maps(batch):
    # pytorch-grad-cam's aug_smooth: horizontal flip x intensity 0.9 / 1.0 / 1.1, each map flipped back, averaged,
    # then min-max normalised; recomputed here with plain Grad-CAM calls
    loaded, x, classes = batch
    maps = method_source("gradcam+aug-smooth", loaded.model, loaded.default_layer).maps(x, classes)
    explainer = GradCAM(loaded.model, loaded.default_layer)
    parts = []
    for flip in (False, True):
        for multiplier in (0.9, 1.0, 1.1):
            inputs = (x.flip(-1) if flip else x) * multiplier
            heatmap = explainer(inputs, classes).heatmap
            parts.append(heatmap.flip(-1) if flip else heatmap)
    mean = torch.stack(parts).mean(0)
    expected = normalize(mean)
    # six maps in [0, 1] summed (perhaps in another order), then divided by their mean's span
    span = float((mean.flatten(2).amax(-1) - mean.flatten(2).amin(-1)).min())
    torch.testing.assert_close(maps, expected, rtol=0, atol=normalized_atol(sum_atol(6, 1.0), span))
    assert not torch.allclose(maps, explainer(x, classes).heatmap, atol=1e-2)  # the smoothing changed the maps


def test_eigen_smoothed_hirescam_source_is_eigengradcam(batch):
    # EigenGradCAM is defined as the first principal component of g * A: HiResCAM's terms, eigen-smoothed
    loaded, x, classes = batch
    smoothed = method_source("hirescam+eigen-smooth", loaded.model, loaded.default_layer).maps(x, classes)
    direct = method_source("eigengradcam", loaded.model, loaded.default_layer).maps(x, classes)
    assert torch.equal(smoothed, direct)
    curve = parameter_randomisation(loaded.model, "hirescam+eigen-smooth", x[:2], classes[:2, 0], layer="features")
    assert curve == parameter_randomisation(loaded.model, "eigengradcam", x[:2], classes[:2, 0], layer="features")


def test_a_smoothing_that_does_not_fit_the_method_is_reported_not_raised(batch):
    loaded = batch[0]
    sources, failures = make_sources(loaded.model, ["gradcam+noise-smooth", "gradient+eigen-smooth"], ())
    assert [s.name for s in sources] == ["gradcam+noise-smooth"]
    assert failures["gradient+eigen-smooth"].startswith("MethodError: eigen smoothing needs a layer method")
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['gradcam\+blur'\]"):
        make_sources(loaded.model, ["gradcam+blur"], ())


def test_the_command_line_ranks_a_smoothed_method(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "pointing", "--synthetic", "--images", "2", "--method", "gradcam",
            "--method", "gradcam+aug-smooth", "--no-baselines", "--no-plots", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "| Grad-CAM + test-time augmentation |" in stdout and "| Grad-CAM |" in stdout
    assert main([*argv[:-2], "--method", "gradcam+blur", "--out", str(tmp_path / "bad")]) == 2
    assert "argument --method: invalid choice: 'gradcam+blur'" in capsys.readouterr().err
