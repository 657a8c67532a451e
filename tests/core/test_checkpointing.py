"""Models with activation checkpointing (torch.utils.checkpoint): use_reentrant=False gives the maps of the
same model without checkpointing; use_reentrant=True, which keeps no graph torch.autograd.grad can use, is
an error that says so and names the fix (never "the target does not depend on the layer")."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradcam
from gradcam.errors import LayerError, MethodError
from tolerances import assert_close

FIX = (
    r"use torch\.utils\.checkpoint\(\.\.\., use_reentrant=False\) \(torch's recommended mode\), "
    r"with which Grad-CAM works"
)


class Checkpointed(nn.Module):
    """conv a -> conv b -> GAP + linear; ``where`` is "none", "inside" (a and b in one checkpointed
    segment) or "after" (only b checkpointed, after the explained layer a)."""

    def __init__(self, where: str, reentrant: bool) -> None:
        super().__init__()
        self.where, self.reentrant = where, reentrant
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.where == "inside":
            h = checkpoint(lambda t: self.b(self.a(t)), x, use_reentrant=self.reentrant)
        elif self.where == "after":
            h = checkpoint(self.b, self.a(x), use_reentrant=self.reentrant)
        else:
            h = self.b(self.a(x))
        return self.fc(h.mean((2, 3)))


def model(where: str, reentrant: bool = False) -> Checkpointed:
    torch.manual_seed(0)
    return Checkpointed(where, reentrant).double().eval()


@pytest.mark.parametrize("where", ["inside", "after"])
def test_non_reentrant_checkpointing_gives_the_maps_of_the_plain_model(where: str) -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    plain = gradcam.GradCAM(model("none"), "a")(x, torch.tensor([0, 2]))
    got = gradcam.GradCAM(model(where), "a")(x, torch.tensor([0, 2]))
    assert float(plain.raw.abs().max()) > 0
    # float64, the same ops recomputed in the same order: equal up to the final roundings of 36-term convs
    assert_close(got.raw, plain.raw, terms=36 * 64, depth=3)


def test_layer_inside_a_reentrant_checkpoint_is_a_layer_error_naming_the_fix() -> None:
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "none of the inputs have requires_grad=True"
        with pytest.raises(LayerError, match=r"layer 'a' runs inside torch\.utils\.checkpoint\(\.\.\., "
                           r"use_reentrant=True\), which keeps no graph of its segment.*; " + FIX):
            gradcam.GradCAM(model("inside", reentrant=True), "a")(x, 0)


@pytest.mark.parametrize(
    ("method", "what"),
    [(lambda m: gradcam.GradCAM(m, "a"), "layer 'a'"), (gradcam.GuidedBackprop, "the input")],
    ids=["gradcam", "guided-backprop"],
)
def test_reentrant_checkpoint_after_the_captured_tensor_is_a_method_error(method, what: str) -> None:
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    net = model("after", reentrant=True)
    with pytest.raises(MethodError, match=rf"the model calls torch\.utils\.checkpoint\(\.\.\., use_reentrant=True\) "
                       rf"after {what}; reentrant checkpointing cannot be differentiated with torch\.autograd\.grad"):
        method(net)(x, 0)
    assert all(p.grad is None for p in net.parameters())
