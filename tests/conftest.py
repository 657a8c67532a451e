"""Shared tiny hand-weighted models for the tests."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

# Tests are small: one thread is fastest on a shared 2-core machine. GRADCAM_TEST_THREADS=2 runs the suite with
# two (the tolerances must hold for any thread count: see tests/tolerances.py).
torch.set_num_threads(int(os.environ.get("GRADCAM_TEST_THREADS", "1")))


class HandNet(nn.Module):
    """x (B,1,4,4) -> conv 2x2 stride 2: A0 = block means of x, A1 = -A0 -> flatten -> linear(8 -> 2).

    Class 0 reads A0 with [[1,0],[0,1]] and A1 with [[0,2],[2,0]] (alpha = 0.5, 1.0);
    class 1 reads A0 with all 2 and A1 with [[1,0],[0,0]] (alpha = 2.0, 0.25).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, kernel_size=2, stride=2, bias=False)
        self.head = nn.Linear(8, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.stack([torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), -0.25)]))
            self.head.weight.copy_(
                torch.tensor([[1.0, 0, 0, 1, 0, 2, 2, 0], [2.0, 2, 2, 2, 1, 0, 0, 0]])
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class GapNet(nn.Module):
    """A small conv net with a global-average-pooling + linear head (CAM's form)."""

    def __init__(self, classes: int = 5, inplace: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 6, 3, stride=2, padding=1),
        )  # fmt: skip
        self.act = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.body(x))).flatten(1))


def block_image(values: list[list[float]]) -> torch.Tensor:
    """A (1,1,4,4) image whose 2x2 block means are ``values``."""
    return torch.kron(torch.tensor(values), torch.ones(2, 2)).reshape(1, 1, 4, 4)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (end-to-end runs, large models) run only when asked for: ``pytest -m slow``."""
    if "slow" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def hand_net() -> HandNet:
    return HandNet().eval()


@pytest.fixture
def gap_net() -> GapNet:
    torch.manual_seed(0)
    net = GapNet()
    with torch.no_grad():
        net.body[1].running_mean.uniform_(-0.2, 0.2)
        net.body[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


class GapNetND(nn.Module):
    """``GapNet`` for signals (rank 1: (B, 3, L)) and volumes / videos (rank 3: (B, 3, T, H, W))."""

    def __init__(self, rank: int, classes: int = 5, inplace: bool = True) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[rank]
        self.body = nn.Sequential(
            conv(3, 8, 3, padding=1), norm(8), nn.ReLU(inplace=inplace), conv(8, 6, 3, stride=2, padding=1)
        )
        self.act = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(6, classes)
        nn.init.zeros_(self.fc.bias)  # the top class is the one with most evidence (never a bias with no map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.body(x)).flatten(2).mean(-1))


def gap_net_nd(rank: int) -> GapNetND:
    """A seeded ``GapNetND`` in eval mode with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    net = GapNetND(rank)
    with torch.no_grad():
        net.body[1].running_mean.uniform_(-0.2, 0.2)
        net.body[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


# Inputs of each rank for the N-D tests: a signal, an image, a short clip / small volume.
RANK_SHAPES = {1: (2, 3, 16), 2: (2, 3, 8, 8), 3: (2, 3, 4, 6, 6)}
