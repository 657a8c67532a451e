"""torch.compile'd models: the same maps as eager, k targets per call, and a clear error when the hook
cannot run (a model compiled before the explainer existed)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import gradcam
from gradcam.errors import LayerError
from tolerances import cam_magnitude, heatmap_atol, sum_atol


def _inductor_has_a_vector_isa() -> bool:
    from torch._inductor import cpu_vec_isa

    return bool(cpu_vec_isa.pick_vec_isa())


pytestmark = [
    pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile (inductor) needs a C compiler"),
    # ATEN_CPU_CAPABILITY=default gives inductor no vector ISA, yet its C++ codegen still emits at::vec
    # transposes for this net's conv backward: the generated kernel does not compile (an inductor limit)
    pytest.mark.skipif(
        not _inductor_has_a_vector_isa(),
        reason="inductor's CPU codegen needs a vector ISA (ATEN_CPU_CAPABILITY=default leaves none)",
    ),
]


class Net(nn.Module):
    """A backbone block (the explained layer) and a GAP + linear head, the shape of a ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.features(x)), 1), 1))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def test_compiled_model_gives_eager_maps_for_k_targets_and_repeated_calls() -> None:
    """inductor's backward kernels cannot be vmapped, so k targets fall back to k backward passes over one
    graph (kept callable by compiling without donated buffers): maps equal eager ones, call after call."""
    torch._dynamo.reset()
    model = tiny_net()
    x = torch.randn(2, 3, 12, 12)
    targets = torch.tensor([[0, 3, 4], [2, 1, 0]])
    eager = gradcam.GradCAM(model, "features")(x, targets)
    with torch.no_grad():
        activations = model.features(x)
    # inductor fuses and reorders: the longest sums are alpha's GAP over 12 x 12 cells and conv2's 8 * 3 * 3
    # terms, chained conv1 -> conv2 -> alpha -> the channel sum (depth 4)
    raw_atol = sum_atol(12 * 12, cam_magnitude(eager.weights, torch.relu(activations)), depth=4)
    heat_atol = heatmap_atol(eager.raw, (12, 12), raw_atol)
    compiled = torch.compile(model)
    for _ in range(2):
        e = gradcam.GradCAM(compiled, "_orig_mod.features")(x, targets)
        torch.testing.assert_close(e.raw, eager.raw, rtol=0, atol=raw_atol)
        torch.testing.assert_close(e.heatmap, eager.heatmap, rtol=0, atol=heat_atol)
    single = gradcam.GradCAM(compiled, "_orig_mod.features")(x, targets[:, 1])
    torch.testing.assert_close(single.raw, eager.raw[:, 1], rtol=0, atol=raw_atol)
    assert all(p.grad is None for p in model.parameters())


def test_model_compiled_before_the_hook_gets_a_clear_error() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(tiny_net())
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        compiled(x)  # compiled without any hook: dynamo does not guard on hooks added later
    with pytest.raises(LayerError, match=r"was not called.*torch\.compile'd.*model\._orig_mod"):
        gradcam.GradCAM(compiled, "_orig_mod.features")(x, 0)
    torch._dynamo.reset()
