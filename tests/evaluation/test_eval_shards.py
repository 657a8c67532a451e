"""Merging, resuming, the cost column and the every-method figure of ``gradcam.evaluation.evaluate``."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from PIL import Image

from gradcam import GradCAM
from gradcam.evaluation import EvaluationSettings, evaluate, load_synthetic_model, synthetic_items
from gradcam.evaluation.datasets import AnnotatedImage
from gradcam.evaluation.examples import figure_selection
from gradcam.evaluation.faithfulness import DeletionInsertion
from gradcam.evaluation.localization import BoxEnergy, LocalizationError
from gradcam.evaluation.report import METHODS_TILE_HEIGHT, figure_columns, map_on_image, methods_figure
from gradcam.evaluation.results import Timing, cost
from gradcam.evaluation.sources import BaselineSource
from gradcam.imaging import draw
from gradcam.imaging.geometry import preprocess
from gradcam.imaging.grids import ZERO_MAP_NOTE
from tolerances import cam_magnitude, heatmap_atol, layer_output, sum_atol

SETTINGS = EvaluationSettings(
    methods=("gradcam", "counterfactual", "gradient"), top_k=1, tolerance=4.0, step=1568, batch_size=2,
    faithfulness_images=3, figure_images=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def synthetic():
    return load_synthetic_model(), synthetic_items(6, seed=1)


def without_cost(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if not key.startswith("cost")}


def numbers(result) -> tuple:
    """Everything a run measured except the timings (which no two runs share)."""
    methods = [(m.name, m.error, without_cost(m.summary)) for m in result.methods]
    examples = {name: {kind: (e.name, e.cls, e.iou, e.box) for kind, e in kept.items()}
                for name, kept in result.examples.items()}  # fmt: skip
    figure = [(row.index, row.cls, {name: m.tolist() for name, m in row.maps.items()}) for row in result.figure]
    return methods, result.per_image, result.curves, result.classification, examples, figure


def test_a_resumed_run_gives_the_numbers_of_one_run(synthetic, tmp_path):
    loaded, items = synthetic
    reference = evaluate(loaded, items, SETTINGS)
    first = evaluate(loaded, items, SETTINGS, resume=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-00000000.pkl", "batch-00000002.pkl",
                                                          "batch-00000004.pkl"]  # fmt: skip
    assert (first.evaluated_images, first.reused_images) == (6, 0)
    (tmp_path / "batch-00000002.pkl").unlink()  # as if the run had stopped there
    (tmp_path / "batch-00000004.pkl").write_bytes(b"truncated")  # a file cut short is recomputed
    resumed = evaluate(loaded, items, SETTINGS, resume=tmp_path)
    assert (resumed.evaluated_images, resumed.reused_images) == (4, 2)
    again = evaluate(loaded, items, SETTINGS, resume=tmp_path)
    assert (again.evaluated_images, again.reused_images) == (0, 6)
    for result in (first, resumed, again):
        assert numbers(result) == numbers(reference)
    assert [r["image"] for r in reference.per_image[::6]] == [item.name for item in items]  # each image once
    # other settings never reuse these results
    changed = evaluate(loaded, items, replace(SETTINGS, tolerance=8.0), resume=tmp_path)
    assert (changed.evaluated_images, changed.reused_images) == (6, 0)
    gradcam = reference.row("gradcam").summary
    assert gradcam["pointing"] == 100.0 and reference.row("counterfactual").summary["pointing"] < 50.0


def test_merging_metric_states_equals_one_metric_that_saw_everything():
    maps = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    truths = [[(0, (1.0, 1.0, 5.0, 5.0))], [(1, (0, 0, 8, 4))], [(0, (2.0, 2.0, 3.0, 3.0))], [(1, (0, 0, 8, 6))]]
    classes = torch.tensor([[0], [1], [0], [1]])
    whole, halves = BoxEnergy(), [BoxEnergy(), BoxEnergy()]
    whole.update(maps, classes, truths)
    halves[0].update(maps[:2], classes[:2], truths[:2])
    halves[1].update(maps[2:], classes[2:], truths[2:])
    merged = halves[0].merge(halves[1])
    assert len(merged.records) == 4 and merged.summary() == whole.summary()
    empty = BoxEnergy()
    empty.update(torch.zeros(2, 1, 8, 8), classes[:2], truths[:2])  # all-zero maps are counted, not scored
    assert merged.merge(empty).empty == 2 and merged.summary()["energy"] == whole.summary()["energy"]
    loc = [LocalizationError(), LocalizationError()]
    loc[0].update(maps[:2].expand(2, 3, 8, 8), torch.tensor([[0, 1, 2], [1, 0, 2]]), truths[:2])
    loc[1].update(maps[2:], classes[2:], truths[2:])
    assert loc[0].merge(loc[1]).k == 1  # the top-k every image had
    with pytest.raises(TypeError, match="cannot merge BoxEnergy into LocalizationError"):
        loc[0].merge(whole)


def test_deletion_curves_are_summed_exactly_across_shards():
    class PixelSum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], 1)

    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    saliency = x[:, 0] / 31
    whole, parts = DeletionInsertion(step=4, score="logit"), [DeletionInsertion(step=4, score="logit") for _ in "ab"]
    whole.update(PixelSum(), x, saliency, [0, 0])
    parts[0].update(PixelSum(), x[:1], saliency[:1], [0])
    parts[1].update(PixelSum(), x[1:], saliency[1:], [0])
    merged = parts[0].merge(parts[1])
    # image 0 sums 0..15 = 120, rows removed from the most salient: 120, 66, 28, 6, 0
    assert merged.mean_curve("deletion").tolist() == whole.mean_curve("deletion").tolist()
    assert whole.mean_curve("deletion").tolist() == [(120 + 376) / 2, (66 + 258) / 2, (28 + 156) / 2, (6 + 70) / 2, 0]
    assert merged.summary() == whole.summary()


def test_cost_is_the_median_ratio_over_the_warm_batches():
    timings = [Timing(1.0, 9.0, False), Timing(1.0, 3.0, True), Timing(2.0, 4.0, True), Timing(0.5, 2.0, True)]
    assert cost(timings) == {"cost": 3.0, "cost_seconds": 3.0, "cost_batches": 3}  # ratios 3, 2, 4
    assert cost(timings[:1]) == {"cost": 9.0, "cost_seconds": 9.0, "cost_batches": 1}  # no warm batch: all
    assert cost([]) == {}


def test_the_cost_column_is_measured_in_the_run(synthetic):
    loaded, items = synthetic
    result = evaluate(loaded, items, SETTINGS)
    costs = {m.name: m.summary["cost"] for m in result.methods}
    assert all(math.isfinite(c) and c > 0 for c in costs.values())
    assert {m.summary["cost_batches"] for m in result.methods} == {2}  # 3 batches, the first is the warm-up
    # a constant map costs nothing next to a forward pass; Grad-CAM's call holds a whole forward pass
    assert costs["whole-image"] < 0.2 < 0.5 < costs["gradcam"]


def item(name: str, classes: list[int]) -> AnnotatedImage:
    return AnnotatedImage(name, tuple((c, (0.0, 0.0, 1.0, 1.0)) for c in classes), image=Image.new("RGB", (2, 2)))


def test_figure_images_are_the_first_one_class_and_several_class_images():
    items = [item("a", [0]), item("b", [1, 2]), item("c", [3]), item("d", [4]), item("e", [0, 5]), item("f", [1, 2])]
    assert figure_selection(items, 4) == [0, 1, 2, 4]
    assert figure_selection(items, 3) == [0, 1, 2]
    assert figure_selection(items[:1] + items[2:4], 4) == [0, 1, 2]  # fewer images than asked
    assert figure_selection([items[1], items[4], items[5]], 2) == [0, 1]  # topped up with several-class images
    assert figure_selection(items, 0) == []


def test_methods_figure_shows_every_methods_map_of_the_same_images(synthetic):
    loaded, items = synthetic
    result = evaluate(loaded, items, replace(SETTINGS, tasks=("pointing",)))
    columns = figure_columns(result)
    assert [name for name, _ in columns] == ["gradcam", "counterfactual", "gradient"]
    one = [row for row in result.figure if not row.several]
    two = [row for row in result.figure if row.several]
    assert len(one) == 1 and len(two) == 2 and two[0].index == two[1].index  # one row per class of the image
    assert {two[0].cls, two[1].cls} == {c for c, _ in items[two[0].index].objects}
    figure = methods_figure(result)
    pad, caption, tile = 4, draw.caption_height(4), METHODS_TILE_HEIGHT  # 112 px images scaled to 160
    row_height = tile + caption + 2 * pad
    assert figure.size == ((1 + len(columns)) * (tile + pad) + pad, len(result.figure) * row_height)
    for r, row in enumerate(result.figure):
        # the map is Grad-CAM's of that class, as the public API computes it for the image alone
        x, _ = preprocess(items[row.index].load(), loaded.preprocess)
        explanation = GradCAM(loaded.model, loaded.default_layer)(x[None], row.cls)
        alone = explanation.heatmap[0]
        # batched against alone through the synthetic CNN (7 conv blocks, longest sum 64 * 3 * 3 = 576, forward
        # and backward plus the head: depth 16), then alpha and the channel sum
        activations = layer_output(loaded.model, loaded.default_layer, x[None])
        raw_atol = sum_atol(576, cam_magnitude(explanation.weights, activations), depth=16)
        atol = heatmap_atol(explanation.raw, tuple(alone.shape[-2:]), raw_atol)
        torch.testing.assert_close(row.maps["gradcam"], alone, atol=atol, rtol=0)
        for j, (name, _) in enumerate([("original", ""), *columns]):
            left, top = pad + j * (tile + pad), r * row_height + pad + caption
            cell = figure.crop((left, top, left + tile, top + tile))
            shown = row.image if name == "original" else map_on_image(row.image, row.geometry, row.maps[name])
            expected = shown.resize((tile, tile), Image.Resampling.BILINEAR)
            assert cell.tobytes() == expected.tobytes(), (r, name)
    # what a partial result stores owns its memory: a pickled view would carry the batch's every map
    kept = [m for row in result.figure for m in row.maps.values()]
    kept += [e.heatmap for examples in result.examples.values() for e in examples.values()]
    assert all(m.untyped_storage().nbytes() == 112 * 112 * 4 for m in kept)
    # the two rows of the two-object image differ: Grad-CAM's map depends on the class
    assert not torch.equal(two[0].maps["gradcam"], two[1].maps["gradcam"])
    # a blank tile says that its map is zero (here: a counterfactual map made zero), the others do not
    titled = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(draw, "panel", lambda tiles, titles, **kw: titled.append(titles) or Image.new("RGB", (1, 1)))
        one[0].maps["counterfactual"] = torch.zeros_like(one[0].maps["counterfactual"])
        methods_figure(result)
    for row, titles in zip(result.figure, titled):
        for (name, title), shown in zip(columns, titles[1:]):
            zero = not bool(row.maps[name].ne(0).any())
            assert shown == title + (ZERO_MAP_NOTE if zero else ""), (row.index, name)
    assert titled[result.figure.index(one[0])][2].endswith(ZERO_MAP_NOTE)


def test_the_random_baseline_depends_on_the_batch_not_on_what_ran_before():
    x, classes = torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, dtype=torch.long)
    source = BaselineSource("random", seed=3)
    at_four = source.maps(x, classes, first=4)
    source.maps(x, classes, first=0)
    assert torch.equal(BaselineSource("random", seed=3).maps(x, classes, first=4), at_four)  # a fresh process
    assert torch.equal(source.maps(x, classes, first=4), at_four)
    assert not torch.equal(source.maps(x, classes, first=0), at_four)
