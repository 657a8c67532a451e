"""The seed's identity (Grad-CAM = CAM / Z on GAP + linear heads) and agreement with Captum."""

from __future__ import annotations

import pytest
import torch
import torchvision

import gradcam
from tolerances import assert_close, cam_magnitude, heatmap_atol, layer_output, sum_atol


def test_gradcam_weights_are_cam_weights_over_z(gap_net):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 12, 10)
    grad = gradcam.GradCAM(gap_net, "act")(x, target=torch.tensor([[0, 3], [1, 4], [2, 2]]))
    cam = gradcam.CAM(gap_net, "act")(x, target=torch.tensor([[0, 3], [1, 4], [2, 2]]))
    z = 6 * 5  # the layer's u*v
    # both read the same A; Grad-CAM's alpha sums z equal cells of W / z, then both sum 6 channels
    assert_close(grad.weights * z, cam.weights, terms=z)
    activations = torch.relu(gap_net.body(x)).detach()
    raw_atol = sum_atol(z, cam_magnitude(cam.weights, activations), depth=2)
    torch.testing.assert_close(grad.raw * z, cam.raw, rtol=0, atol=raw_atol)
    torch.testing.assert_close(grad.heatmap, cam.heatmap, rtol=0, atol=heatmap_atol(cam.raw, (12, 10), raw_atol))
    assert cam.raw.abs().sum() > 0


def test_cam_uses_relu_of_features_when_the_head_rectifies_first(gap_net):
    # On 'body' (before the ReLU) the head reads ReLU(A): CAM must use it, and still equal Grad-CAM * Z.
    x = torch.randn(2, 3, 8, 8)
    cam = gradcam.CAM(gap_net, "body")(x, target=1)
    features = torch.relu(gap_net.body(x)).detach()
    ref = torch.relu(torch.einsum("c,bcuv->buv", gap_net.fc.weight[1], features))
    # the same A, summed over 6 channels in two orders
    magnitude = cam_magnitude(gap_net.fc.weight[1:2].expand(2, -1), features)
    assert_close(cam.raw, ref.detach(), terms=6, magnitude=magnitude)


def test_cam_rejects_a_head_that_is_not_gap_linear(hand_net, gap_net):
    with pytest.raises(gradcam.MethodError, match="'head' takes 8 features but the layer has 2 channels"):
        gradcam.CAM(hand_net, "features")(torch.randn(1, 1, 4, 4))
    gap_net.pool = torch.nn.AdaptiveMaxPool2d(1)  # max pooling: not CAM's head
    with pytest.raises(gradcam.MethodError, match="global-average-pooling \\+ linear head on the layer"):
        gradcam.CAM(gap_net, "act")(torch.randn(1, 3, 8, 8))


captum = pytest.importorskip("captum.attr")

ARCHITECTURES = [
    ("resnet18", "layer4", 64),
    ("resnet18", "layer3.1", 64),
    ("vgg11", "features.18", 64),  # conv followed by ReLU(inplace=True)
    ("mobilenet_v2", "features.17", 64),
    ("densenet121", "features.denseblock4", 64),
]


@pytest.mark.parametrize(("arch", "layer", "size"), ARCHITECTURES)
def test_gradcam_agrees_with_captum(arch, layer, size):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(2, 3, size, size)
    target = torch.tensor([3, 7])
    ours = gradcam.GradCAM(model, layer)(x, target)
    theirs = captum.LayerGradCam(model, model.get_submodule(layer)).attribute(
        x, target=target.tolist(), relu_attributions=True
    )
    assert theirs.abs().max() > 0
    # the same forward and backward; only alpha's GAP and the sum over K channels differ in order
    activations = layer_output(model, layer, x)
    raw_atol = sum_atol(activations.shape[1], cam_magnitude(ours.weights, activations), depth=2)
    torch.testing.assert_close(ours.raw, theirs[:, 0].detach(), rtol=0, atol=raw_atol)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_guided_backprop_agrees_with_captum(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(2, 3, 48, 48)
    ours = gradcam.GuidedBackprop(model)(x, target=[5, 9]).heatmap
    theirs = captum.GuidedBackprop(model).attribute(x, target=[5, 9])
    assert theirs.abs().max() > 0
    assert torch.equal(ours, theirs)  # the same backward with the same rectified ReLU gradients: the same floats


def test_all_classes_closed_form_equals_the_general_path(gap_net):
    torch.manual_seed(4)
    x = torch.randn(3, 3, 12, 12)
    fast = gradcam.GradCAM(gap_net, "act").all_classes(x, to_input_size=True)
    every = torch.arange(5).expand(3, -1)
    general = gradcam.GradCAM(gap_net, "act")(x, every)
    # the closed form reads W / 36; the general path averages 36 gradient cells, then both sum 6 channels
    activations = torch.relu(gap_net.body(x)).detach()
    raw_atol = sum_atol(36, cam_magnitude(general.weights, activations), depth=2)
    torch.testing.assert_close(fast.raw, general.raw, rtol=0, atol=raw_atol)
    heat_atol = heatmap_atol(general.raw, (12, 12), raw_atol)
    torch.testing.assert_close(fast.heatmap, general.heatmap, rtol=0, atol=heat_atol)
    assert_close(fast.weights, general.weights, terms=36)
    torch.testing.assert_close(fast.scores, gap_net(x).detach())
    cam = gradcam.CAM(gap_net, "act").all_classes(x)
    torch.testing.assert_close(cam.raw, fast.raw * 36, rtol=0, atol=36 * raw_atol)


def test_all_classes_closed_form_on_torchvision_resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    fast = gradcam.GradCAM(model, "layer4").all_classes(x)
    picked = torch.tensor([[1, 500, 999], [0, 7, 123]])
    general = gradcam.GradCAM(model, "layer4")(x, picked)
    raw_atol = sum_atol(512, cam_magnitude(general.weights, layer_output(model, "layer4", x)), depth=2)
    torch.testing.assert_close(fast.raw.gather(1, picked[..., None, None].expand(-1, -1, 2, 2)), general.raw,
                               rtol=0, atol=raw_atol)  # fmt: skip


def test_all_classes_refuses_a_head_that_rectifies_first(gap_net):
    # On 'body' the head reads ReLU(A): dy/dA is not W / Z there, so the closed form does not apply.
    with pytest.raises(gradcam.MethodError, match="global-average-pooling \\+ linear head"):
        gradcam.GradCAM(gap_net, "body").all_classes(torch.randn(1, 3, 8, 8))


def test_normalize_keeps_real_structure_and_flattens_rounding_noise():
    """A mathematically constant map computed in float32 carries ulp-level noise (FullGrad's bias channel under a
    GAP head: relative span 6e-8); stretched to [0, 1] it would be a full-contrast map of nothing."""
    from gradcam.methods.base import normalize

    constant = torch.full((1, 1, 4, 4), 0.3)
    noisy = constant.clone()
    noisy[0, 0, 0, 0] = torch.nextafter(torch.tensor(0.3), torch.tensor(1.0))  # one ulp above
    assert torch.equal(normalize(noisy), torch.zeros_like(noisy))
    assert torch.equal(normalize(constant), torch.zeros_like(constant))
    structured = constant.clone()
    structured[0, 0, 1, 2] = 0.3 * (1 + 1e-4)  # 1e-4 relative: ~800 ulps, real structure
    out = normalize(structured)
    # (m - min) * (1 / span): two roundings from exactly 1 at the maximum, exactly 0 elsewhere
    assert float(out[0, 0, 1, 2]) == pytest.approx(1.0, rel=0, abs=2 * torch.finfo(torch.float32).eps)
    assert int((out == 0).sum()) == 15
