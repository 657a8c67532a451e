"""ROAD (Rong et al. 2022): the noisy linear imputation against hand cases, a dense solve and Quantus, and
MoRF / LeRF curves on a hand-weighted model whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradcam.evaluation.road import ROAD, noisy_linear_imputation, road_curves, road_masks
from tolerances import assert_close, sum_atol, unit_roundoff

OFFSETS = {(dy, dx): (1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
OFFSETS.pop((0, 0))


def dense_system(image: torch.Tensor, removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The imputation's linear system written out pixel by pixel (float64): A v = b over removed pixels."""
    height, width = removed.shape
    unknowns = [(i, j) for i in range(height) for j in range(width) if removed[i, j]]
    index = {p: n for n, p in enumerate(unknowns)}
    a = torch.zeros(len(unknowns), len(unknowns), dtype=torch.float64)
    b = torch.zeros(len(unknowns), dtype=torch.float64)
    for n, (i, j) in enumerate(unknowns):
        for (dy, dx), w in OFFSETS.items():
            y, x = i + dy, j + dx
            if not (0 <= y < height and 0 <= x < width):
                continue
            a[n, n] += w
            if removed[y, x]:
                a[n, index[(y, x)]] -= w
            else:
                b[n] += w * float(image[y, x])
    return a, b, unknowns


def solve_bound(a: torch.Tensor, solution: torch.Tensor, rtol: float) -> float:
    """Conjugate gradients stop at ||r|| <= rtol ||b||: the error is at most cond(A) rtol ||v||, plus the
    float64 rounding of the last update (cond(A) u ||v|| per step, a few steps' worth)."""
    condition = float(torch.linalg.cond(a))
    return condition * (rtol + 8 * unit_roundoff(torch.float64)) * float(solution.norm())


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours():
    image = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0], [64.0, 128.0, 256.0]], dtype=torch.float64)
    centre = torch.zeros(3, 3, dtype=torch.bool)
    centre[1, 1] = True
    out = noisy_linear_imputation(image[None, None], centre, noise=0.0)[0, 0]
    expected = (2 + 8 + 32 + 128) / 6 + (1 + 4 + 64 + 256) / 12  # weights 1/6 direct, 1/12 diagonal, sum 1
    assert_close(out[1, 1], torch.tensor(expected, dtype=torch.float64), terms=8, depth=2)
    assert torch.equal(out[~centre], image[~centre])  # kept pixels untouched
    corner = torch.zeros(3, 3, dtype=torch.bool)
    corner[0, 0] = True  # three neighbours inside the image: weights renormalised by 1/6 + 1/6 + 1/12
    out = noisy_linear_imputation(image[None, None], corner, noise=0.0)[0, 0]
    expected = (2 / 6 + 8 / 6 + 16 / 12) / (5 / 12)
    assert_close(out[0, 0], torch.tensor(expected, dtype=torch.float64), terms=8, depth=3)


def test_a_linear_image_is_a_fixed_point_and_random_holes_match_a_dense_solve():
    rows, cols = torch.meshgrid(torch.arange(9.0), torch.arange(10.0), indexing="ij")
    ramp = (2 * rows - 3 * cols + 1).double()
    removed = torch.zeros(9, 10, dtype=torch.bool)
    removed[2:7, 3:8] = True  # an interior block (all 8 neighbours of each pixel inside the image)
    removed[1, 1] = removed[7, 8] = True
    out = noisy_linear_imputation(ramp[None, None], removed, noise=0.0, rtol=1e-13)[0, 0]
    a, _, _ = dense_system(ramp, removed)
    torch.testing.assert_close(out, ramp, rtol=0, atol=solve_bound(a, ramp[removed], 1e-13))
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 9, generator=generator, dtype=torch.float64)
    holes = torch.rand(8, 9, generator=generator) < 0.6  # border pixels too
    out = noisy_linear_imputation(image[None], holes, noise=0.0, rtol=1e-13)[0]
    for c in range(3):
        a, b, _ = dense_system(image[c], holes)
        exact = torch.linalg.solve(a, b)
        torch.testing.assert_close(out[c][holes], exact, rtol=0, atol=solve_bound(a, exact, 1e-13))


def test_systems_solved_together_stop_each_at_its_own_goal():
    # a 3 x 3 hole converges in a few steps, a large one takes hundreds: solved in one call, the first must
    # stop at its goal (iterated on, its residual went into underflow: inf, then NaN on real maps; here it
    # moved by 2.5e-5), so that each system comes out exactly as it does alone
    torch.manual_seed(3)
    x = torch.rand(2, 3, 40, 40)
    removed = torch.zeros(2, 40, 40, dtype=torch.bool)
    removed[0, 20:23, 20:23] = True
    removed[1, 2:38, 2:38] = True
    together = noisy_linear_imputation(x, removed, noise=0.0)
    alone = torch.cat([noisy_linear_imputation(x[i : i + 1], removed[i], noise=0.0) for i in range(2)])
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together, alone, rtol=0, atol=8 * unit_roundoff())  # same steps, values <= 1


def test_grad_cam_lerf_masks_on_the_synthetic_cnn_impute_finite_values():
    # the case that gave NaN: image 1's Grad-CAM map is half exact zeros, LeRF at 30 % removes random ones
    from gradcam import GradCAM
    from gradcam.evaluation import load_synthetic_model, synthetic_items
    from gradcam.imaging.geometry import preprocess_batch

    loaded = load_synthetic_model()
    x, _ = preprocess_batch([item.load() for item in synthetic_items(2, seed=1)], loaded.preprocess)
    saliency = GradCAM(loaded.model, loaded.default_layer)(x).heatmap
    masks = road_masks(saliency, (10, 30, 50, 70, 90), "lerf")
    images = noisy_linear_imputation(x[1:2].expand(5, -1, -1, -1), masks[1], noise=0.01)
    assert torch.isfinite(images).all()
    assert float(images.abs().max()) <= float(x[1].abs().max()) + 0.1  # a weighted mean stays in range (+ noise)


def test_noise_is_gaussian_on_removed_pixels_only_and_seeded():
    image = torch.zeros(1, 2, 40, 40)
    removed = torch.zeros(40, 40, dtype=torch.bool)
    removed[5:35, 5:35] = True  # zero boundary: the noiseless imputation is exactly 0
    noisy = noisy_linear_imputation(image, removed, noise=0.5, generator=torch.Generator().manual_seed(3))
    again = noisy_linear_imputation(image, removed, noise=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again) and bool((noisy[0, :, ~removed] == 0).all())
    draws = noisy[0, :, removed].flatten().double()  # 1800 N(0, 0.25) draws
    assert abs(float(draws.mean())) < 5 * 0.5 / math.sqrt(draws.numel())
    assert abs(float(draws.std()) - 0.5) < 5 * 0.5 / math.sqrt(2 * draws.numel())


class BlockSum(nn.Module):
    """logits = [sum of the centre 2 x 2 block, 0]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, :, 2:4, 2:4].flatten(1).sum(1)
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_morf_and_lerf_on_a_hand_weighted_model():
    image = torch.zeros(1, 1, 6, 6)
    image[0, 0, 2:4, 2:4] = 1.0  # the object the model reads
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    saliency = (-((rows - 2.5) ** 2 + (cols - 2.5) ** 2) - 0.01 * (6 * rows + cols))[None]  # distinct values
    # 12 % of 36 = 4 pixels: MoRF takes the object, whose kept neighbours are all 0, so it is imputed as 0;
    # 50 % = 18 pixels: the object and its nearest 14, same boundary. LeRF takes far background pixels, never
    # next to the object (its 12-pixel ring is among the 18 most salient), imputed as 0: the object stays.
    masks = road_masks(saliency, (12, 50), "lerf")
    assert not bool(masks[0, :, 1:5, 1:5].any()) and masks.sum((-2, -1)).tolist() == [[4, 18]]
    options = {"percentages": (12, 50), "noise": 0.0, "score": "logit"}
    assert road_curves(BlockSum(), image, saliency, [0], order="morf", **options).tolist() == [[0.0, 0.0]]
    assert road_curves(BlockSum(), image, saliency, [0], order="lerf", **options).tolist() == [[4.0, 4.0]]
    metric = ROAD((12, 50), noise=0.0, score="logit")
    metric.update(BlockSum(), image, saliency, [0])
    metric.update(BlockSum(), image, -saliency, [0])  # the reversed map: MoRF and LeRF swap
    assert metric.records[1]["road_gap"] == -4.0
    summary = metric.summary()
    assert summary["road_morf"] == 2.0 and summary["road_lerf"] == 2.0 and summary["road_gap"] == 0.0
    assert summary["morf_curve"] == [2.0, 2.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="percentages"):
        ROAD((10, 100))
    with pytest.raises(ValueError, match="order must be"):
        road_masks(torch.zeros(1, 2, 2), (10,), "random")
    with pytest.raises(ValueError, match="whole image"):
        noisy_linear_imputation(torch.zeros(1, 1, 2, 2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="removed must be"):
        noisy_linear_imputation(torch.zeros(1, 1, 2, 2), torch.ones(3, 2, dtype=torch.bool))


def test_imputation_and_morf_accuracy_match_quantus():
    quantus = pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation as theirs

    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, 7, 8, generator=generator, dtype=torch.float64)
    indices = torch.randperm(56, generator=generator)[:30].numpy()
    expected = torch.from_numpy(theirs(image.numpy(), indices, noise=0.0))
    removed = torch.zeros(56, dtype=torch.bool)
    removed[torch.from_numpy(indices)] = True
    mine = noisy_linear_imputation(image[None], removed.view(7, 8), noise=0.0, rtol=1e-13)[0]
    a, _, _ = dense_system(image[0], removed.view(7, 8))
    # theirs: a sparse LU solve (error ~ cond(A) u |v|); ours: conjugate gradients to rtol 1e-13
    atol = solve_bound(a, expected[0].flatten()[removed], 1e-13) + sum_atol(8, 1.0, torch.float64)
    torch.testing.assert_close(mine, expected, rtol=0, atol=atol)
    # ROAD's MoRF accuracy (Quantus reports whether the label is still predicted) on one-channel images
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()
    x = torch.rand(4, 1, 8, 8)
    saliency = torch.rand(4, 8, 8)  # distinct values: the same pixel order as Quantus's argsort
    with torch.no_grad():
        labels = model(x).argmax(1)
    percentages = [10, 30, 50, 70, 90]
    metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, disable_warnings=True)
    result = metric(model=model, x_batch=x.numpy(), y_batch=labels.numpy(), a_batch=saliency[:, None].numpy())
    masks = road_masks(saliency, percentages, "morf")
    hits = torch.zeros(len(percentages))
    for b in range(4):
        images = noisy_linear_imputation(x[b : b + 1].expand(len(percentages), -1, -1, -1), masks[b], noise=0.0)
        with torch.no_grad():
            hits += (model(images).argmax(1) == labels[b]).float()
    assert [result[p] for p in percentages] == (hits / 4).tolist()
