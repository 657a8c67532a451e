"""Score-CAM: scores and weights by hand, batched == a naive per-channel loop, agreement with two peers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcam
from methods.cam_nets import GridNet, grid_input, scaled_resnet18

A = grid_input()[0]


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def softmax(values: list[float]) -> torch.Tensor:
    return torch.softmax(torch.tensor(values, dtype=torch.float64), 0).float()


# The layer is at the input resolution, so M_k = minmax(A_k): M0 = (A0 - 1)/3, M1 = A1.
# Masked by M0: y0 = <G0, A0*M0> + <G1, A1*M0> = 8 + 1/3 = 25/3, y1 = 0.5 * sum(A0*M0) = 10/3.
# Masked by M1: y0 = 0 + 1 = 1, y1 = 0.5 * 5 = 2.5.
# Class-0 probability of two classes: sigmoid(y0 - y1) = sigmoid(5) and sigmoid(-1.5).
@pytest.mark.parametrize(
    ("options", "weights"),
    [
        ({}, softmax([sigmoid(5), sigmoid(-1.5)])),  # the paper: softmax over channels of probabilities
        ({"score": "logit"}, softmax([25 / 3, 1])),  # pytorch-grad-cam / TorchCAM
        ({"weighting": "raw"}, torch.tensor([sigmoid(5), sigmoid(-1.5)])),  # the authors' released code
    ],
)
def test_weights_and_map_by_hand(options, weights):
    e = gradcam.ScoreCAM(GridNet(), "features", **options)(grid_input(), 0)
    torch.testing.assert_close(e.weights[0], weights)
    torch.testing.assert_close(e.raw[0], torch.relu(weights[0] * A[0] + weights[1] * A[1]))


def test_counterfactual_prefers_channels_that_lower_the_score():
    e = gradcam.ScoreCAM(GridNet(), "features", score="logit")(grid_input(), 0, counterfactual=True)
    torch.testing.assert_close(e.weights[0], softmax([-25 / 3, -1]))


def naive_weights(model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """The paper's loop, one masked image per forward pass."""
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    activations = captured[0]
    weights = torch.zeros(activations.shape[:2])
    with torch.no_grad():
        for b, c in enumerate(classes):
            scores = []
            for k in range(activations.shape[1]):
                up = F.interpolate(activations[b : b + 1, k : k + 1], size=x.shape[-2:], mode="bilinear")
                span = up.max() - up.min()
                mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
                scores.append(torch.softmax(model(x[b : b + 1] * mask), dim=1)[0, c])
            weights[b] = torch.softmax(torch.stack(scores), dim=0)
    return weights


def test_batched_equals_the_naive_loop(gap_net):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 8, 8)  # 'body' is 4x4: the masks are upsampled
    expected = naive_weights(gap_net, "body", x, [1, 3])
    for batch_size in (1, 4, 32):
        e = gradcam.ScoreCAM(gap_net, "body", batch_size=batch_size)(x, [1, 3])
        torch.testing.assert_close(e.weights, expected, rtol=1e-5, atol=1e-7)


def full_resolution_model() -> nn.Module:
    """A random conv + ReLU at the input resolution (the layer '1', 16 channels) before a resnet18."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1), scaled_resnet18()).eval()


def test_agrees_with_pytorch_grad_cam_and_torchcam():
    # Both peers score logits (score="logit") and softmax over channels. pytorch-grad-cam upsamples
    # with align_corners=True and TorchCAM normalises before upsampling, so they are compared on a
    # layer at the input resolution, where no upsampling happens.
    model = full_resolution_model()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    classes = [3, 7]
    ours = gradcam.ScoreCAM(model, "1", score="logit", batch_size=7)(x, classes)
    compared = 0
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        pgc = None
    if pgc is not None:
        module = model.get_submodule("1")
        with pgc.ScoreCAM(model=model, target_layers=[module]) as cam:
            cam.activations_and_grads(x)
            activations = cam.activations_and_grads.activations[0].numpy()
            targets = [ClassifierOutputTarget(c) for c in classes]
            weights = torch.from_numpy(cam.get_cam_weights(x, module, targets, activations, None)).float()
        torch.testing.assert_close(ours.weights, weights, rtol=1e-5, atol=1e-6)
        compared += 1
    try:
        from torchcam.methods import ScoreCAM as TorchCAMScoreCAM
    except ImportError:
        TorchCAMScoreCAM = None
    if TorchCAMScoreCAM is not None:
        with TorchCAMScoreCAM(model, "1", batch_size=8, input_shape=(3, 32, 32)) as extractor:
            with torch.no_grad():
                model(x)
            raw = extractor(class_idx=classes, normalized=False)[0]
        torch.testing.assert_close(ours.raw, raw, rtol=1e-5, atol=1e-5 * float(raw.abs().max()))
        compared += 1
    if not compared:
        pytest.skip("neither pytorch-grad-cam nor torchcam is installed")
    assert ours.raw.abs().max() > 0


def test_bad_options_name_the_argument(gap_net):
    with pytest.raises(ValueError, match="score must be one of"):
        gradcam.ScoreCAM(gap_net, score="prob")
    with pytest.raises(ValueError, match="weighting must be one of"):
        gradcam.ScoreCAM(gap_net, weighting="mean")
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        gradcam.ScoreCAM(gap_net, batch_size=0)
