"""Deep Feature Factorization: a planted two-concept layer by hand (maps, embeddings, strengths, head scores),
the joint batch, the head's choice and errors, the model left as found, and the trained synthetic CNN's two
objects found as two concepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcam.errors import InputError, MethodError
from gradcam.methods.dff import DeepFeatureFactorization, deep_feature_factorization
from tolerances import assert_close

# Layer "features" = W0 @ x (a 1x1 convolution): x's channel 0 fills the left half, channel 1 the right half,
# so max(A, 0) = W0 H with H = x's channels, an exact rank-2 factorisation with disjoint supports.
W0 = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
LEFT = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 1.0], [2.0, 2.0]])  # channel 0 on columns 0-1
FC_WEIGHT = torch.tensor([[1.0, -1.0, 0.5], [0.0, 1.0, -1.0]])
FC_BIAS = torch.tensor([0.25, -1.0])


class Planted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 3, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.features.weight.copy_(W0[:, :, None, None])
            self.fc.weight.copy_(FC_WEIGHT)
            self.fc.bias.copy_(FC_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.features(x))).flatten(1))


def planted_input(swap: bool = False) -> torch.Tensor:
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, :, :2] = LEFT
    x[0, 1, :, 2:] = 1.0  # channel 1: ones on the right half
    return x.flip(-1) if swap else x


def fit(model: nn.Module, x: torch.Tensor, **options) -> object:
    return deep_feature_factorization(
        model, x, "features", n_components=2, dtype=torch.float64, iterations=500, tol=0.0, **options
    )


def test_planted_concepts_by_hand():
    concepts = fit(Planted(), planted_input(), top_k=1)
    # Concept maps scaled to peak 1: left = LEFT / 4 on the left half, right = ones on the right half; the
    # embeddings scale inversely: W0[:, 0] * 4 = (4, 8, 0) and W0[:, 1] * 1 = (0, 1, 3).
    left, right = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    left[:, :2], right[:, 2:] = LEFT / 4, 1.0
    embeddings = torch.tensor([[4.0, 0.0], [8.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    # Strengths: sum(W[:, c]) sum(H[c]) / sum(V) = 12 * 4 / 80 and 4 * 8 / 80: the left concept first.
    strength = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    # Head scores of the embeddings: fc((4, 8, 0)) = (-3.75, 7), fc((0, 1, 3)) = (0.75, -3).
    scores = torch.tensor([[[-3.75, 7.0], [0.75, -3.0]]])
    terms, depth = 3 * 16, 2  # the fit's sums run over K * u * v entries; two factors multiply
    assert_close(concepts.raw[0], torch.stack([left, right]), terms=terms, magnitude=1.0, depth=depth)
    assert_close(concepts.embeddings[0], embeddings, terms=terms, magnitude=8.0, depth=depth)
    assert_close(concepts.strength, strength, terms=terms, magnitude=1.0, depth=depth)
    assert_close(concepts.scores, scores, terms=3, magnitude=8.0, depth=depth + 1)  # then the head's 3-term sum
    assert concepts.classes.tolist() == [[[1], [0]]]
    assert float(concepts.error) < 1e-12 and concepts.layer == "features"
    # The layer is at the input's size: the heatmaps are the raw maps, min-max normalised (min 0, max 1).
    assert_close(concepts.heatmap[0], torch.stack([left, right]).float(), terms=terms, magnitude=1.0, depth=depth)


def test_joint_factorisation_shares_the_embeddings():
    x = torch.cat([planted_input(), planted_input(swap=True)])
    concepts = fit(Planted(), x, joint=True)
    assert torch.equal(concepts.embeddings[0], concepts.embeddings[1])
    # The same two concepts in both images: the left-half concept of image 0 is on image 1's right half.
    left = concepts.raw[:, 0]
    assert_close(left[1], left[0].flip(-1), terms=3 * 32, magnitude=1.0, depth=2)
    assert float(left[0, :, 2:].abs().max()) < 1e-12 and float(left[0, :, :2].min()) > 0.2


def test_head_choice_and_errors():
    model = Planted()
    plain = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5))  # no GAP: reads 48 values
    with pytest.raises(MethodError, match=r"no nn.Linear with in_features == 3; its linear layers: '3' \(48.*head="):
        deep_feature_factorization(plain, planted_input(), "0", n_components=2)
    maps_only = deep_feature_factorization(plain, planted_input(), "0", n_components=2, head=False)
    assert maps_only.scores is None and maps_only.classes is None and maps_only.heatmap.shape == (1, 2, 4, 4)
    outside = nn.Linear(3, 4)
    concepts = fit(model, planted_input(), head=outside, top_k=2)
    with torch.no_grad():
        expected = outside(concepts.embeddings[0].T.float())
    assert_close(concepts.scores[0], expected, terms=3, magnitude=float(expected.abs().max()) + 8.0)
    with pytest.raises(MethodError, match="cannot score"):
        fit(model, planted_input(), head=nn.Linear(5, 2))
    with pytest.raises(InputError, match="n_components"):
        DeepFeatureFactorization(model, n_components=0)


def test_model_is_left_as_found():
    model = Planted().train()
    model.fc.weight.requires_grad_(False)
    fit(model, planted_input())
    assert model.training and model.features.training
    assert not model.fc.weight.requires_grad and model.features.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_synthetic_objects_are_the_two_concepts():
    from gradcam.evaluation.synthetic import SyntheticShapes, load_synthetic_model, to_tensor

    model = load_synthetic_model().model
    shapes = SyntheticShapes(3, seed=1, two_objects=1.0, clutter=(0, 0))
    x = torch.stack([to_tensor(shapes[i].pixels) for i in range(3)])
    concepts = deep_feature_factorization(model, x, n_components=2, top_k=1)
    assert concepts.layer == "features"
    for b in range(3):
        objects = shapes[b].objects
        found = []
        for c in range(2):
            row, col = divmod(int(concepts.heatmap[b, c].argmax()), x.shape[-1])
            inside = [k for k, (_, (x0, y0, x1, y1)) in enumerate(objects) if x0 <= col < x1 and y0 <= row < y1]
            assert len(inside) == 1, f"image {b}: concept {c} peaks at ({col}, {row}), outside {objects}"
            found.append(inside[0])
            # ... and the classifier names that object's class.
            assert int(concepts.classes[b, c, 0]) == objects[inside[0]][0]
        assert sorted(found) == [0, 1], f"image {b}: both concepts on one object"
