"""Connected components, boxes, IoU, peaks: hand-built masks and maps with exact answers."""

from __future__ import annotations

import math

import pytest
import torch

from gradcam.evaluation.regions import (
    box_iou,
    box_mask,
    connected_components,
    largest_component,
    map_to_box,
    mask_to_box,
    peak_point,
    point_box_distance,
    saliency_2d,
    threshold_mask,
)

# (1, 4) touches (2, 3) only at a corner: one component with 8-connectivity, two with 4.
MASK = torch.tensor(
    [
        [1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 1, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [1, 0, 0, 0, 0, 1],
    ],
    dtype=torch.bool,
)


def partition(labels: torch.Tensor) -> set[frozenset[tuple[int, int]]]:
    groups: dict[int, set[tuple[int, int]]] = {}
    for (y, x), label in zip(
        torch.cartesian_prod(*(torch.arange(n) for n in labels.shape)).tolist(), labels.flatten().tolist()
    ):
        if label >= 0:
            groups.setdefault(label, set()).add((y, x))
    return {frozenset(g) for g in groups.values()}


def test_components_eight_and_four_connectivity_by_hand():
    eight = partition(connected_components(MASK, 8))
    assert eight == {
        frozenset({(0, 0), (0, 1), (1, 0)}),
        frozenset({(1, 4), (2, 3), (3, 3)}),  # (1,4)-(2,3) touch at a corner
        frozenset({(4, 0)}),
        frozenset({(4, 5)}),
    }
    four = partition(connected_components(MASK, 4))
    assert four == {
        frozenset({(0, 0), (0, 1), (1, 0)}),
        frozenset({(1, 4)}),
        frozenset({(2, 3), (3, 3)}),
        frozenset({(4, 0)}),
        frozenset({(4, 5)}),
    }
    labels = connected_components(MASK, 8)
    assert labels[0, 0] == labels[1, 0] == 1 * 6 + 0  # the label is the component's largest raster index
    assert labels[2, 3] == 3 * 6 + 3 and labels[0, 2] == -1


def test_components_of_a_spiral_and_batched_masks():
    spiral = torch.zeros(9, 9, dtype=torch.bool)
    spiral[0, :] = spiral[:, 8] = spiral[8, :] = spiral[2:, 0] = True
    spiral[2, :7] = spiral[2:7, 6] = spiral[6, 2:7] = spiral[4:7, 2] = spiral[4, 2:5] = True
    assert len(partition(connected_components(spiral, 4))) == 1
    both = torch.stack([spiral, ~spiral])
    labels = connected_components(both)
    assert partition(labels[0]) == partition(connected_components(spiral))
    assert partition(labels[1]) == partition(connected_components(~spiral))


def test_components_agree_with_scipy_on_random_masks():
    ndimage = pytest.importorskip("scipy.ndimage")
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 23, 31, generator=generator) < 0.5
    for connectivity, structure in ((4, None), (8, [[1, 1, 1]] * 3)):
        labels = connected_components(masks, connectivity)
        for mask, mine in zip(masks, labels):
            reference, count = ndimage.label(mask.numpy(), structure=structure)
            pairs = set(zip(mine[mask].tolist(), reference[mask.numpy()].tolist()))
            assert len(pairs) == count == len(set(mine[mask].tolist()))


def test_largest_component_and_its_box():
    keep = largest_component(MASK, 8)
    assert keep.sum() == 3 and keep[0, 0] and keep[0, 1] and keep[1, 0]  # the first of two size-3 components
    assert mask_to_box(keep).tolist() == [0.0, 0.0, 2.0, 2.0]
    assert torch.equal(largest_component(MASK, 4), keep)  # with 4-connectivity the right blob splits (1 + 2)
    assert largest_component(MASK, 4)[2:4, 3].sum() == 0
    empty = mask_to_box(torch.zeros(1, 4, 4, dtype=torch.bool))
    assert torch.isnan(empty).all()


def test_map_to_box_thresholds_at_a_fraction_of_the_max():
    heat = torch.zeros(10, 12)
    heat[2:5, 3:8] = 1.0  # the object, 3 x 5
    heat[7:9, 0:2] = 0.2  # a weak blob, kept by the threshold but smaller
    heat[0, 11] = 0.1  # below 15 % of the max
    assert map_to_box(heat).tolist() == [3.0, 2.0, 8.0, 5.0]
    heat[7:10, 0:12] = 0.2  # now the weak region is the largest segment
    assert map_to_box(heat).tolist() == [0.0, 7.0, 12.0, 10.0]
    assert map_to_box(heat, threshold=0.5).tolist() == [3.0, 2.0, 8.0, 5.0]
    assert map_to_box(torch.zeros(1, 2, 5, 6)).tolist() == [[[0.0, 0.0, 6.0, 5.0]] * 2]  # flat map: whole image
    assert threshold_mask(torch.tensor([[0.0, 0.15, 0.149, 1.0]])).tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="threshold"):
        map_to_box(heat, threshold=15)


def test_box_iou_exact_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 5.0]])
    iou = box_iou(a, b)
    expected = torch.tensor([[25 / 175, 1.0, 0.0, 0.5], [0.0, 0.04, 0.0, 4 / 50]])
    assert torch.allclose(iou, expected)
    nan_box = torch.tensor([[math.nan] * 4])
    assert box_iou(nan_box, b).tolist() == [[0.0] * 4]


def test_peak_point_unique_max_and_plateau():
    heat = torch.zeros(2, 6, 8)
    heat[0, 4, 1] = 1.0
    heat[1] = 0.5  # flat: every pixel is a maximum, the point is the centre
    assert peak_point(heat).tolist() == [[1.5, 4.5], [4.0, 3.0]]
    plateau = torch.zeros(5, 5)
    plateau[1:3, 1:4] = 2.0
    assert peak_point(plateau).tolist() == [2.5, 2.0]


def test_point_box_distance_and_box_mask():
    points = torch.tensor([[5.0, 5.0], [13.0, 5.0], [13.0, 14.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert point_box_distance(points, boxes)[:, 0].tolist() == [0.0, 3.0, 5.0]
    mask = box_mask(torch.tensor([[1.0, 0.5, 3.0, 2.6]]), 4, 5)[0]
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0:2, 1:3] = True  # centres 0.5 and 1.5 in y, 1.5 and 2.5 in x
    expected[2, 1:3] = True  # y centre 2.5 < 2.6
    assert torch.equal(mask, expected)


def test_saliency_2d_reduces_input_space_maps():
    grads = torch.tensor([[[[1.0, -4.0]], [[-2.0, 0.0]], [[0.5, 3.0]]]])  # (1, 3, 1, 2)
    assert saliency_2d(grads, channels=True).tolist() == [[[0.5, 1.0]]]
    cam = torch.tensor([[[0.2, 0.4]]])
    assert torch.equal(saliency_2d(cam), cam)
