"""SS-CAM and IS-CAM: Score-CAM variants by hand on a linear net, and equal to TorchCAM (same seed / no noise)."""

from __future__ import annotations

import pytest
import torch

import gradcam
from methods.cam_nets import GridNet, grid_input
from methods.test_scorecam import full_resolution_model
from tolerances import cam_magnitude, layer_output, sum_atol


def softmax(values: list[float]) -> torch.Tensor:
    return torch.softmax(torch.tensor(values, dtype=torch.float64), 0).float()


@pytest.mark.parametrize(("path", "mean_scale"), [("cumulative", 10 / 9), ("linear", 2 / 3)])
def test_iscam_weights_by_hand(path, mean_scale):
    # GridNet is linear without bias: f(c x ⊙ M) = c f(x ⊙ M), and Score-CAM's logits are (25/3, 1)
    # (test_scorecam.py). N = 3: cumulative scales 1/3, 1, 2 (mean 10/9); linear 1/3, 2/3, 1 (mean 2/3).
    e = gradcam.ISCAM(GridNet(), "features", samples=3, path=path, score="logit")(grid_input(), 0)
    torch.testing.assert_close(e.weights[0], softmax([25 / 3 * mean_scale, mean_scale]))
    assert gradcam.ISCAM(GridNet(), samples=3, path=path).scales()[-1] == (2.0 if path == "cumulative" else 1.0)


def test_sscam_without_noise_is_score_cam_and_noise_is_seeded():
    ss = gradcam.SSCAM(GridNet(), "features", samples=2, std=0.0)(grid_input(), 0)
    torch.testing.assert_close(ss.weights, gradcam.ScoreCAM(GridNet(), "features")(grid_input(), 0).weights)
    # GridNet is linear: the noisy score is f(x ⊙ M) + f(x ⊙ delta); check one draw by hand
    e = gradcam.SSCAM(GridNet(), "features", samples=1, std=0.5, seed=3, score="logit")(grid_input(), 0)
    generator = torch.Generator().manual_seed(3)
    delta = 0.5 * torch.randn((2, 1, 2, 2), generator=generator)  # one chunk of both channels
    with torch.no_grad():
        noise_scores = GridNet()(grid_input() * delta)[:, 0]
    torch.testing.assert_close(e.weights[0], softmax([25 / 3 + float(noise_scores[0]), 1 + float(noise_scores[1])]))
    again = gradcam.SSCAM(GridNet(), "features", samples=1, std=0.5, seed=3, score="logit")(grid_input(), 0)
    assert torch.equal(again.weights, e.weights)


@pytest.mark.parametrize("name", ["SSCAM", "ISCAM"])
def test_agree_with_torchcam(name):
    torchcam = pytest.importorskip("torchcam.methods")
    # A layer at the input resolution (TorchCAM normalises before upsampling, we after: equal without upsampling);
    # one image and one chunk of all 16 channels, so the noise is drawn in TorchCAM's order from the same seed.
    model = full_resolution_model()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 32)
    options = {"samples": 3, "std": 0.3, "seed": 11} if name == "SSCAM" else {"samples": 4}
    ours = getattr(gradcam, name)(model, "1", score="logit", batch_size=16, **options)
    e = ours(x, [3])
    extra = {"num_samples": options["samples"]} | ({"std": options["std"]} if name == "SSCAM" else {})
    # TorchCAM draws from the global RNG (torch.distributions.Normal): seeded with our seed just before
    with getattr(torchcam, name)(model, "1", batch_size=16, input_shape=(3, 32, 32), **extra) as extractor:
        with torch.no_grad():
            model(x)
        torch.manual_seed(11)
        raw = extractor(class_idx=[3], normalized=False)[0]
    # as for Score-CAM (test_scorecam.py): each logit of a masked (noisy / scaled) image within the bound of
    # resnet18's longest sum over its ~20 layers, for logits up to those of x scaled by 2 (IS-CAM's largest
    # scale); an average of the samples' scores keeps that bound, the softmax over 16 channels moves each weight
    # by at most w * 2 max |d logit|, and the map sums 16 channels
    with torch.no_grad():
        logits = max(1.0, float(model(x).abs().max()), float(model(2 * x).abs().max()))
    logit_atol = sum_atol(512 * 9, logits, depth=20)
    weights_atol = 2 * logit_atol * float(e.weights.max()) + sum_atol(options["samples"] * 16, 1.0)
    activations = layer_output(model, "1", x)
    raw_atol = weights_atol * float(activations.sum(1).max()) + sum_atol(16, cam_magnitude(e.weights, activations))
    torch.testing.assert_close(e.raw, raw, rtol=0, atol=raw_atol)
    assert e.raw.abs().max() > 0
