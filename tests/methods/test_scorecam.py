"""Score-CAM: scores and weights by hand, batched == a naive per-channel loop, agreement with two peers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcam
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from tolerances import cam_magnitude, gamma, layer_output, sum_atol, unit_roundoff

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
    # batches of masked images against one at a time: gap_net's 72-term sums, 4 steps to the logits (O(1)
    # here), a class softmax and a channel softmax; the weights are at most 1
    atol = sum_atol(72, max(1.0, float(gap_net(x).detach().abs().max())), depth=6)
    for batch_size in (1, 4, 32):
        e = gradcam.ScoreCAM(gap_net, "body", batch_size=batch_size)(x, [1, 3])
        torch.testing.assert_close(e.weights, expected, rtol=0, atol=atol)


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
    # the peers score the same masked images in other batches: each logit within the bound of resnet18's
    # longest sum (3x3 convs over 512 channels) over its ~20 layers; a softmax over the 16 channels moves
    # each weight by at most w * 2 max |d logit|; the map then sums 16 channels
    with torch.no_grad():
        logit_atol = sum_atol(512 * 9, max(1.0, float(model(x).abs().max())), depth=20)
    weights_atol = 2 * logit_atol * float(ours.weights.max()) + sum_atol(16, 1.0)
    activations = layer_output(model, "1", x)
    raw_atol = weights_atol * float(activations.sum(1).max()) + sum_atol(16, cam_magnitude(ours.weights, activations))
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
        torch.testing.assert_close(ours.weights, weights, rtol=0, atol=weights_atol)
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
        torch.testing.assert_close(ours.raw, raw, rtol=0, atol=raw_atol)
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


class TwoObjects(nn.Module):
    """x (B, 2, 4, 4) -> features = x (1x1 identity conv) -> GAP -> logits = 20 * channel means: channel 0
    is the evidence for class 0 (object A, left half), channel 1 for class 1 (object B, right half)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.head.weight.copy_(20 * torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_probability_weights_barely_depend_on_the_class():
    # The synthetic benchmark's 50 % / 50 % for Score-CAM on two-object images is the method, not a bug:
    # M_0 keeps object A only (logits 10, 0) and M_1 object B only (0, 10), the most class-specific case
    # there is; yet softmax over channels of probabilities in [0, 1] gives weights within a factor e.
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, :, :2] = 1.0
    x[0, 1, :, 2:] = 1.0
    p = sigmoid(10)  # probability of the kept object's class; 1 - p for the other
    probability = gradcam.ScoreCAM(TwoObjects(), "features")(x, torch.tensor([[0, 1]]))
    torch.testing.assert_close(probability.weights[0, 0], softmax([p, 1 - p]))  # [0.731, 0.269]
    torch.testing.assert_close(probability.weights[0, 1], softmax([1 - p, p]))
    assert probability.weights[0, 0, 0] / probability.weights[0, 0, 1] < math.e
    logit = gradcam.ScoreCAM(TwoObjects(), "features", score="logit")(x, torch.tensor([[0, 1]]))
    torch.testing.assert_close(logit.weights[0, 0], softmax([10.0, 0.0]))  # [0.99995, 0.00005]
    assert logit.weights[0, 0, 0] / logit.weights[0, 0, 1] > 2e4


def test_probability_weights_are_within_a_factor_e_of_each_other_on_any_model(gap_net):
    # alpha_k / alpha_j = exp(p_k - p_j) with p in [0, 1]: with K channels every weight lies in
    # [1 / (1 + (K - 1) e), e / (e + K - 1)], so with many channels the map is nearly their plain sum
    torch.manual_seed(2)
    x = torch.randn(3, 3, 8, 8)
    weights = gradcam.ScoreCAM(gap_net, "body")(x, [0, 1, 2]).weights
    channels = weights.shape[-1]
    assert float((weights.amax(-1) / weights.amin(-1)).max()) <= math.e
    rounding = 2 * gamma(channels) + 8 * unit_roundoff()  # a float32 softmax: K exps, their sum, a quotient
    assert float(weights.amax()) <= math.e / (math.e + channels - 1) * (1 + rounding)
    assert float(weights.amin()) >= 1 / (1 + (channels - 1) * math.e) * (1 - rounding)


def test_on_the_synthetic_cnn_probability_weights_are_nearly_uniform_and_logit_weights_are_not():
    # docs/evaluation.md, "which method when": on a two-object image the probability-scored maps of
    # the two classes are the same map (both peak on one object), the logit-scored ones are not
    from gradcam.evaluation import load_synthetic_model, synthetic_items
    from gradcam.imaging.geometry import preprocess

    loaded = load_synthetic_model()
    scene = next(item for item in synthetic_items(20, seed=1) if len({c for c, _ in item.objects}) == 2)
    x, _ = preprocess(scene.load(), loaded.preprocess)
    classes = torch.tensor([[scene.objects[0][0], scene.objects[1][0]]])

    def maps_and_weights(score: str) -> tuple[float, float]:
        e = gradcam.ScoreCAM(loaded.model, loaded.default_layer, score=score, batch_size=96)(x[None], classes)
        a, b = e.raw[0, 0].flatten(), e.raw[0, 1].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1]), float((e.weights.amax(-1) / e.weights.amin(-1)).max())

    correlation, spread = maps_and_weights("probability")
    assert correlation > 0.999 and spread < 1.1  # 96 channels, every weight within 10 % of 1/96
    correlation, spread = maps_and_weights("logit")
    assert correlation < 0.9 and spread > 10
