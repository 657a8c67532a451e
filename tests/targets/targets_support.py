"""Hand-weighted task models and an independent autograd reference for the task-target tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import HandNet
from tolerances import assert_close


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests on one intra-op thread, restored afterwards.

    On the shared 2-core machine, two torch threads competing with other processes spin-wait: the
    torchvision detection tests took 4 s of CPU per explanation with 2 threads against 0.07 s with 1.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hand_features() -> nn.Conv2d:
    """HandNet's conv: x (B,1,4,4) -> A0 = 2x2 block means of x, A1 = -A0."""
    return HandNet().features


class HandSegmenter(nn.Module):
    """A = hand_features(x) (2x2 grid); logits_c = sum_k W[c, k] A_k, nearest-upsampled to 4x4.

    W = [[1, 0.5], [-1, 2]].
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = hand_features()
        self.head = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, 2.0]]).reshape(2, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": F.interpolate(self.head(self.features(x)), scale_factor=2, mode="nearest")}


class HandDetector(nn.Module):
    """Two detections per image from A = hand_features(x), in torchvision's eval output format.

    det 0: score A0[0,0], box (0, 0, 2 + 0.5 A0[0,1], 2), label 1;
    det 1: score A1[1,1], box (2, 2, 4, 4), label 2.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = hand_features()

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        a = self.features(x)
        results = []
        for b in range(x.shape[0]):
            zero = a[b, 0, 0, 0] * 0
            box0 = torch.stack([zero, zero, 2 + 0.5 * a[b, 0, 0, 1], zero + 2])
            box1 = torch.tensor([2.0, 2.0, 4.0, 4.0], device=a.device) + zero
            results.append(
                {
                    "boxes": torch.stack([box0, box1]),
                    "scores": torch.stack([a[b, 0, 0, 0], a[b, 1, 1, 1]]),
                    "labels": torch.tensor([1, 2], device=a.device),
                }
            )
        return results


class TinyCaptioner(nn.Module):
    """An image-conditioned causal language model: logits (B, T, V) from image features + token prefix sums."""

    def __init__(self, vocab: int = 7, hidden: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
        self.embed = nn.Embedding(vocab, hidden)
        self.image_proj = nn.Linear(4, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        image = self.image_proj(torch.tanh(self.body(x)).mean((2, 3)))
        hidden = torch.cumsum(self.embed(input_ids), 1) + image[:, None]  # position t sees tokens <= t
        return {"logits": self.head(torch.tanh(hidden))}


class AutogradReference(NamedTuple):
    """Plain autograd's Grad-CAM weights (B, [k,] K), scores y, and what bounds their rounding: ``magnitude``
    (the largest cell mean of ``|dy/dA|``: alpha's summed terms) and ``cells`` (how many terms alpha sums)."""

    weights: torch.Tensor
    scores: torch.Tensor
    magnitude: float
    cells: int


def autograd_reference(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    scalar: Callable[[Any], torch.Tensor],
    forward_kwargs: dict | None = None,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> AutogradReference:
    """Plain autograd: full forward with grad on, y = scalar(output) (B,) or (B, k), dy/dA of the
    layer's output, Grad-CAM weights = spatial mean."""
    store: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            y = scalar(model(x, **(forward_kwargs or {})))
            columns = y if y.dim() == 2 else y[:, None]
            weights, magnitudes = [], []
            for j in range(columns.shape[1]):
                (grad,) = torch.autograd.grad(columns[:, j].sum(), store["a"], retain_graph=True)
                grid = grad if reshape is None else reshape(grad)
                weights.append(grid.mean((-2, -1)))
                magnitudes.append(float(grid.abs().mean((-2, -1)).max()))
    finally:
        handle.remove()
    stacked = torch.stack(weights, 1)
    cells = grid.shape[-2] * grid.shape[-1]
    return AutogradReference(stacked if y.dim() == 2 else stacked[:, 0], y.detach(), max(magnitudes), cells)


def autograd_weights(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    scalar: Callable[[Any], torch.Tensor],
    forward_kwargs: dict | None = None,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`autograd_reference`'s (weights, y)."""
    reference = autograd_reference(model, layer, x, scalar, forward_kwargs, reshape)
    return reference.weights, reference.scores


def assert_weights_close(
    actual: torch.Tensor, reference: AutogradReference, *, depth: int = 4, terms: int | None = None
) -> None:
    """Grad-CAM's weights against plain autograd's: the library runs the same forward, a backward of the same
    ops (vmapped for k targets, its own formula for the target) and averages ``reference.cells`` cells.

    The bound is :func:`tolerances.sum_atol` of ``terms`` (default: the cells; pass the longest sum of the
    backward when it is longer) over ``depth`` accumulations (target, head backward, ..., alpha's mean) of
    ``reference.magnitude``.
    """
    n = reference.cells if terms is None else max(terms, reference.cells)
    assert_close(actual, reference.weights, terms=n, magnitude=reference.magnitude, depth=depth)


def tiny_clip(train: bool = False):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.CLIPModel(config).train(train)
