"""torchvision's video classifiers (random weights): the automatic layer is the last stage, and the map equals an
independent float64 autograd computation of Grad-CAM at that layer over (t, u, v)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import gradcam
from tolerances import assert_close

VIDEO = [
    pytest.param("r3d_18", (1, 3, 8, 32, 32), id="r3d_18"),
    pytest.param("mc3_18", (1, 3, 8, 32, 32), id="mc3_18"),
    pytest.param("r2plus1d_18", (1, 3, 8, 32, 32), id="r2plus1d_18"),
]
# Not here: s3d (with random weights its last stage's activations vanish, max 2.6e-6 on a 16 x 224 x 224 clip, so
# a map check would compare rounding noise) and mvit (a token model: (B, 1 + t*u*v, C) needs a temporal TokenGrid).


def reference_map(
    model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, target: int
) -> tuple[torch.Tensor, float]:
    """Grad-CAM by hand in float64: alpha_k = mean_{t,u,v} dy/dA_k, L = ReLU(sum_k alpha_k A_k); and the largest
    sum_k |alpha_k A_k| (the size of the terms the map adds up)."""
    kept = {}

    def keep(module, inputs, output):
        kept["a"] = output
        output.retain_grad()

    model = model.double()
    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            y = model(x.double())[0, target]
            (grad,) = torch.autograd.grad(y, kept["a"])
    finally:
        handle.remove()
    a = kept["a"].detach()
    alpha = grad.mean(dim=(2, 3, 4), keepdim=True)
    return torch.relu((alpha * a).sum(1)), float((alpha.abs() * a.abs()).sum(1).max())


@pytest.mark.parametrize(("name", "shape"), VIDEO)
def test_video_models_explain_their_last_stage(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=7).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    e = gradcam.GradCAM(model)(x)  # the predicted class: random weights give some classes no evidence at all
    target = int(e.classes[0])
    last = "layer4"
    assert e.layer == last
    assert e.heatmap.shape == (1, *shape[2:])
    expected, magnitude = reference_map(model, model.get_submodule(last), x, target)
    ours = gradcam.GradCAM(model.double(), last)(x.double(), target)
    assert float(expected.abs().max()) > 0
    # both float64, the same forward and backward kernels; they differ only in the mean over the t*u*v positions
    # and the sum over K channels, whose absolute terms add to at most ``magnitude``
    terms = ours.weights.shape[-1] * ours.raw[0].numel()
    assert_close(ours.raw, expected, terms=terms, magnitude=magnitude, depth=2)
