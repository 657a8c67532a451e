"""Tiny hand-weighted nets for the method tests (imported as ``methods.cam_nets``)."""

from __future__ import annotations

import torch
from torch import nn

# The layer output A of GridNet is its input: two channels on a 2x2 grid.
A0 = [[1.0, 2.0], [3.0, 4.0]]
A1 = [[0.0, 1.0], [1.0, 0.0]]
# Class 0 reads channel 0 with G0 and channel 1 with G1 (so dy0/dA = G); class 1 reads 0.5 * channel 0.
G0 = [[1.0, 0.0], [0.0, 2.0]]
G1 = [[-1.0, 1.0], [0.0, 0.0]]


class GridNet(nn.Module):
    """x (B, 2, 2, 2) -> features = Identity (the layer, A = x) -> flatten -> linear(8 -> 2), no bias.

    y0 = <G0, A0> + <G1, A1>,  y1 = 0.5 * sum(A0): the gradients are the weights, by hand.
    """

    def __init__(self, second: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(8, 2, bias=False)
        with torch.no_grad():
            second_row = torch.cat([torch.full((4,), second), torch.zeros(4)])
            self.head.weight.copy_(torch.stack([torch.tensor([G0, G1]).flatten(), second_row]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def grid_input() -> torch.Tensor:
    """The (1, 2, 2, 2) batch whose layer output is (A0, A1)."""
    return torch.tensor([[A0, A1]])


def scaled_resnet18(scale: float = 1.0, seed: int = 0) -> nn.Module:
    """A random-weight torchvision resnet18 (eval) whose classifier is multiplied by ``scale``."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    return model
