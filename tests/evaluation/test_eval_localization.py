"""ILSVRC localization error, box accuracy, pointing game and box energy on hand-built maps."""

from __future__ import annotations

import math

import pytest
import torch

from gradcam.evaluation.localization import BoxAccuracy, BoxEnergy, LocalizationError, PointingGame
from gradcam.imaging.geometry import Geometry

# The input frame is 10 x 10; HALF maps it to an original image twice as large (x_original = 2 x_input).
HALF = Geometry(original_size=(20, 20), resized_size=(10, 10), crop_box=(0, 0, 10, 10), input_size=(10, 10))
# A crop: the 10 x 10 input is the centre of a 16 x 12 resized image equal to the original.
CROP = Geometry(original_size=(16, 12), resized_size=(16, 12), crop_box=(3, 1, 13, 11), input_size=(10, 10))


def blob(top: int, left: int, bottom: int, right: int, size: int = 10) -> torch.Tensor:
    heat = torch.zeros(size, size)
    heat[top:bottom, left:right] = 1.0
    return heat


def test_ilsvrc_error_by_hand():
    # image 0: truth class 3 at original (4, 4, 12, 12) = input (2, 2, 6, 6).
    #   top-1 = class 3 with a map on input (2, 2, 6, 7): IoU = 16 / 20 = 0.8 -> correct.
    # image 1: truth class 5 at original (0, 0, 8, 8) = input (0, 0, 4, 4).
    #   top-1 = class 2 (wrong label), top-2 = class 5 with a map on input (0, 0, 4, 8): IoU 0.5 -> correct at top-2.
    # image 2: truth class 1 at (10, 10, 20, 20); top-1 = class 1 but the map is elsewhere; top-2 wrong label.
    maps = torch.stack(
        [
            torch.stack([blob(2, 2, 6, 7), blob(0, 0, 10, 10)]),
            torch.stack([blob(5, 5, 9, 9), blob(0, 0, 4, 8)]),
            torch.stack([blob(0, 0, 2, 2), blob(5, 5, 10, 10)]),
        ]
    )
    classes = torch.tensor([[3, 4], [2, 5], [1, 7]])
    truths = [[(3, (4, 4, 12, 12))], [(5, (0, 0, 8, 8))], [(1, (10, 10, 20, 20))]]
    metric = LocalizationError()
    records = metric.update(maps, classes, truths, [HALF] * 3)
    assert [r["top1_loc_error"] for r in records] == [0.0, 1.0, 1.0]
    assert [r["topk_loc_error"] for r in records] == [0.0, 0.0, 1.0]
    assert [r["top1_cls_error"] for r in records] == [0.0, 1.0, 0.0]
    assert [r["topk_cls_error"] for r in records] == [0.0, 0.0, 0.0]
    assert records[0]["top1_box"] == [4.0, 4.0, 14.0, 12.0] and records[0]["top1_iou"] == pytest.approx(0.8)
    summary = metric.summary()
    assert summary["top1_loc_error"] == pytest.approx(200 / 3)
    assert summary["top2_loc_error"] == pytest.approx(100 / 3)
    assert summary["top1_cls_error"] == pytest.approx(100 / 3) and summary["top2_cls_error"] == 0.0
    metric.reset()
    assert metric.summary()["images"] == 0


def test_ilsvrc_error_averages_over_ground_truth_classes():
    # Two classes present: the top-1 box finds class 0 (several boxes: the second matches), class 6 is missed.
    maps = blob(0, 0, 5, 5).view(1, 1, 10, 10)
    truths = [[(0, (7, 7, 9, 9)), (0, (0, 0, 5, 5)), (6, (5, 5, 10, 10))]]
    record = LocalizationError().update(maps, torch.tensor([[0]]), truths)[0]
    assert record["top1_loc_error"] == 0.5 and record["top1_cls_error"] == 0.5


def test_threshold_iou_and_geometry_are_applied():
    heat = torch.zeros(10, 10)
    heat[1:9, 1:9] = 0.1
    heat[3:7, 3:7] = 1.0
    truths = [[(0, (6.0, 4.0, 10.0, 8.0))]]  # original frame of CROP: input (3, 3, 7, 7)
    tight = LocalizationError(threshold=0.5).update(heat[None, None], torch.tensor([[0]]), truths, [CROP])[0]
    loose = LocalizationError(threshold=0.05).update(heat[None, None], torch.tensor([[0]]), truths, [CROP])[0]
    assert tight["top1_box"] == [6.0, 4.0, 10.0, 8.0] and tight["top1_loc_error"] == 0.0
    assert loose["top1_box"] == [4.0, 2.0, 12.0, 10.0] and loose["top1_iou"] == pytest.approx(16 / 64)
    strict = LocalizationError(threshold=0.05, iou=0.25).update(heat[None, None], torch.tensor([[0]]), truths, [CROP])
    assert strict[0]["top1_loc_error"] == 0.0


def test_box_accuracy_per_map_and_on_two_object_images():
    maps = torch.stack(
        [torch.stack([blob(0, 0, 4, 4), blob(0, 0, 4, 4)]), torch.stack([blob(5, 5, 9, 9), blob(0, 0, 1, 1)])]
    )
    classes = torch.tensor([[1, 2], [1, -1]])  # -1 is padding
    truths = [[(1, (0, 0, 4, 4)), (2, (6, 6, 10, 10))], [(1, (5, 5, 9, 10))]]
    metric = BoxAccuracy()
    records = metric.update(maps, classes, truths)
    assert [(r["class"], r["correct"], round(r["iou"], 4)) for r in records] == [
        (1, True, 1.0),
        (2, False, 0.0),
        (1, True, 0.8),
    ]
    summary = metric.summary()
    assert summary["accuracy"] == pytest.approx(200 / 3) and summary["multi_class_accuracy"] == 50.0
    with pytest.raises(ValueError, match="class 4 has no ground-truth box"):
        metric.update(maps[:1, :1], torch.tensor([[4]]), truths[:1])


def test_pointing_game_tolerance_per_class_average_and_confusion():
    def at(y: int, x: int) -> torch.Tensor:
        heat = torch.zeros(10, 10)
        heat[y, x] = 1.0
        return heat

    # original = 2 x input. Peak centres: input (x + 0.5, y + 0.5) -> original (2x + 1, 2y + 1).
    maps = torch.stack(
        [
            torch.stack([at(1, 1), at(1, 8)]),  # class 0 -> (3, 3) inside; class 1 -> (17, 3): 5 px from its box
            torch.stack([at(8, 8), at(8, 8)]),  # class 0 -> (17, 17): on the other object's box
            torch.stack([at(0, 0), at(0, 0)]),
        ]
    )
    classes = torch.tensor([[0, 1], [0, 1], [2, -1]])
    truths = [
        [(0, (0, 0, 6, 6)), (1, (10, 0, 12, 6))],
        [(0, (0, 0, 6, 6)), (1, (14, 14, 20, 20))],
        [(2, (0, 0, 1, 1))],
    ]
    strict = PointingGame(tolerance=4.9)
    hits = [(r["class"], r["hit"], r["hit_other"]) for r in strict.update(maps, classes, truths, [HALF] * 3)]
    assert hits == [(0, True, False), (1, False, False), (0, False, True), (1, True, False), (2, True, False)]
    summary = strict.summary()
    assert summary["overall"] == 60.0
    assert summary["accuracy"] == pytest.approx((50 + 50 + 100) / 3)  # per class 0, 1, 2, then averaged
    assert summary["per_class"] == {0: 50.0, 1: 50.0, 2: 100.0}
    assert summary["multi_class_maps"] == 4 and summary["confusion"] == 25.0
    lenient = PointingGame(tolerance=5.0)
    assert lenient.update(maps[:1], classes[:1], truths[:1], [HALF])[1]["hit"]  # exactly 5 px away


def test_box_energy_uniform_map_and_by_hand():
    metric = BoxEnergy()
    uniform = torch.ones(1, 1, 10, 10)
    record = metric.update(uniform, torch.tensor([[0]]), [[(0, (0, 0, 10, 5))]])[0]
    assert record["ratio"] == 1.0 and record["energy"] == 0.5
    heat = torch.zeros(10, 10)
    heat[0:2, 0:5] = 1.0  # 10 px inside the box at 1.0
    heat[9, 9] = 0.5  # 1 px outside at 0.5
    record = metric.update(heat[None, None], torch.tensor([[0]]), [[(0, (0, 0, 10, 5))]])[0]
    assert record["energy"] == pytest.approx(10 / 10.5)
    assert record["ratio"] == pytest.approx((10 / 50) / (0.5 / 50))
    assert metric.update(torch.zeros(1, 1, 10, 10), torch.tensor([[0]]), [[(0, (0, 0, 5, 5))]]) == []
    summary = metric.summary()
    assert summary["maps"] == 2 and summary["empty"] == 1 and summary["ratio"] == pytest.approx(10.5)
    whole = metric.update(uniform, torch.tensor([[0]]), [[(0, (0, 0, 10, 10))]])[0]
    assert whole["energy"] == 1.0 and math.isnan(whole["ratio"])  # nothing outside: undefined, not averaged
    assert metric.summary()["ratio"] == pytest.approx(10.5)
    inside_only = metric.update(blob(0, 0, 5, 10)[None, None], torch.tensor([[0]]), [[(0, (0, 0, 10, 5))]])[0]
    assert inside_only["ratio"] == pytest.approx(1.0 / 1e-3)  # zero outside: the floor eps keeps it finite


def test_bad_inputs_name_the_argument():
    metric = LocalizationError()
    with pytest.raises(ValueError, match="maps must be"):
        metric.update(torch.zeros(10, 10), torch.tensor([0]), [[(0, (0, 0, 1, 1))]])
    with pytest.raises(ValueError, match="classes must be"):
        metric.update(torch.zeros(1, 2, 4, 4), torch.tensor([[0]]), [[(0, (0, 0, 1, 1))]])
    with pytest.raises(ValueError, match="truths must hold one list"):
        metric.update(torch.zeros(1, 1, 4, 4), torch.tensor([[0]]), [])
    with pytest.raises(ValueError, match="iou"):
        LocalizationError(iou=0)
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(tolerance=-1)
    assert math.isnan(PointingGame().summary()["accuracy"])


def test_max_box_accuracy_sweeps_thresholds():
    heat = torch.zeros(10, 10)
    heat[2:8, 2:8] = 0.3  # a halo around the object
    heat[4:6, 4:6] = 1.0  # the object
    truths = [[(0, (4, 4, 6, 6))]]
    metric = BoxAccuracy(threshold=0.15, sweep=(0.2, 0.5, 0.9))
    record = metric.update(heat[None, None], torch.tensor([[0]]), truths)[0]
    assert record["iou"] == pytest.approx(4 / 36) and not record["correct"]
    assert record["sweep_iou"] == pytest.approx([4 / 36, 1.0, 1.0])
    summary = metric.summary()
    assert summary["accuracy"] == 0.0 and summary["max_accuracy"] == 100.0
    assert summary["best_threshold"] == 0.5  # the lowest threshold reaching the best accuracy
    assert summary["accuracy_by_threshold"] == {0.2: 0.0, 0.5: 100.0, 0.9: 100.0}
    assert "max_accuracy" not in BoxAccuracy().summary()
